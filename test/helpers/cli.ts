/** Running a `uniter` command in-process with console output captured. */
import type { Command } from '../../src/cli/main.js';

export async function runCommand(command: Command, args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const { log, error } = console;
  console.log = (...a: unknown[]) => void out.push(a.join(' '));
  console.error = (...a: unknown[]) => void err.push(a.join(' '));
  try {
    const code = await command.run(args);
    return { code: code ?? 0, out: out.join('\n'), err: err.join('\n') };
  } finally {
    console.log = log;
    console.error = error;
  }
}

/** A writable stand-in that collects what a command prints (not a TTY: progress prints lines). */
export function textSink(): { write(s: string): boolean; text: string; isTTY: boolean } {
  return {
    text: '',
    isTTY: false,
    write(s: string) {
      this.text += s;
      return true;
    },
  };
}
