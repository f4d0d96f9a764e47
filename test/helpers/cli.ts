/** Running `uniter` commands in tests: in-process with console output captured, or as the binary. */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Command } from '../../src/cli/main.js';

const BIN = fileURLToPath(new URL('../../../bin/uniter.js', import.meta.url));

/** `node bin/uniter.js ARGS` as a child process: its exit code and both streams (never throws). */
export async function uniterProcess(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return uniterProcessEnv({}, ...args);
}

/** uniterProcess with these variables added to the environment. */
export async function uniterProcessEnv(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

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
