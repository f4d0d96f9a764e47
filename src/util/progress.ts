/**
 * Progress reporting of long library jobs (conversions, exports, store builds): the job calls a
 * PhaseProgress as it works, and a caller (the CLI's PhasedProgress) shows it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * Called as a job works: `phase` names the stage (a change of name starts a new stage), `done`
 * counts what is finished of the stage's `total`, in `unit` ('bytes', or items such as 'images';
 * default: whatever the caller set up). A call with `done` 0 announces a stage.
 */
export type PhaseProgress = (phase: string, done: number, total: number, unit?: string) => void;

/** Reads and writes of big files go in chunks of this size, with a progress call after each. */
export const IO_CHUNK = 8 << 20;

/**
 * fs.readFileSync, reporting the bytes read so far to `onProgress` (phase `reading <name>`) after
 * each chunk; the errors are those of readFileSync.
 */
export function readFileReporting(file: string, onProgress?: PhaseProgress): Buffer {
  if (!onProgress) return fs.readFileSync(file);
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const phase = `reading ${path.basename(file)}`;
    const buf = Buffer.allocUnsafe(size);
    onProgress(phase, 0, size, 'bytes');
    let pos = 0;
    while (pos < size) {
      const n = fs.readSync(fd, buf, pos, Math.min(IO_CHUNK, size - pos), pos);
      if (n === 0) break; // the file shrank while being read: what is there is what the parser sees
      pos += n;
      onProgress(phase, pos, size, 'bytes');
    }
    return pos === size ? buf : buf.subarray(0, pos);
  } finally {
    fs.closeSync(fd);
  }
}
