/**
 * Atomic file output: data goes to a temporary file in the same directory, is flushed to disk,
 * and only then renamed over the target. A crash at any point leaves either the old file or the
 * new one, never a truncated mix.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IO_CHUNK } from './progress.js';

export function writeFileAtomic(file: string, data: string | Uint8Array, onProgress?: (written: number, total: number) => void): void {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  withAtomicStream(file, (s) => s.write(bytes), onProgress && ((written) => onProgress(written, bytes.length)));
}

/**
 * A file written piece by piece into a temporary file beside it, flushed and renamed into place
 * on commit (the directory entry flushed too); abort removes the temporary file.
 */
export class AtomicStream {
  private readonly tmp: string;
  private readonly dir: string;
  private readonly fd: number;
  written = 0;

  /** `onProgress` is called with the bytes written so far after every chunk of at most IO_CHUNK bytes. */
  constructor(
    readonly file: string,
    private readonly onProgress?: (written: number) => void,
  ) {
    this.dir = path.dirname(path.resolve(file));
    fs.mkdirSync(this.dir, { recursive: true });
    this.tmp = path.join(this.dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
    this.fd = fs.openSync(this.tmp, 'w');
  }

  write(b: Uint8Array): void {
    let off = 0;
    while (off < b.length) {
      const n = fs.writeSync(this.fd, b, off, Math.min(IO_CHUNK, b.length - off));
      off += n;
      this.written += n;
      this.onProgress?.(this.written);
    }
  }

  commit(): void {
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    fs.renameSync(this.tmp, this.file);
    syncDir(this.dir);
  }

  abort(): void {
    try {
      fs.closeSync(this.fd);
    } catch {
      // already closed
    }
    fs.rmSync(this.tmp, { force: true });
  }
}

/** Write `file` atomically through `body`; on any error nothing replaces it and no temporary file is left. */
export function withAtomicStream<T>(file: string, body: (s: AtomicStream) => T, onProgress?: (written: number) => void): T {
  const s = new AtomicStream(file, onProgress);
  try {
    const r = body(s);
    s.commit();
    return r;
  } catch (e) {
    s.abort();
    throw e;
  }
}

/** Atomically replace a whole directory: build it under a temporary name, then swap it in. */
export function replaceDirAtomic(target: string, build: (tmpDir: string) => void): void {
  const parent = path.dirname(target);
  fs.mkdirSync(parent, { recursive: true });
  const tmp = path.join(parent, `.${path.basename(target)}.${process.pid}.${Date.now()}.tmp`);
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp);
  try {
    build(tmp);
    syncDir(tmp);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const old = `${tmp}.old`;
  const hadOld = fs.existsSync(target);
  if (hadOld) fs.renameSync(target, old);
  fs.renameSync(tmp, target);
  syncDir(parent);
  if (hadOld) fs.rmSync(old, { recursive: true, force: true });
}

function syncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // Some file systems refuse fsync on directories; the rename is still atomic.
  }
}
