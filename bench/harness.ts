/**
 * Shared pieces of the side-by-side benchmarks (bench/engine, bench/uniter, bench/run-all):
 * long-lived child processes that answer one JSON line per request line, one-shot children,
 * medians and spreads, a plain-text table, and a description of the machine.
 *
 * Both sides of a comparison run as child processes, so each one's peak resident memory
 * belongs to it alone, and requests alternate between them so that load from other processes
 * on a shared machine falls on both alike.
 */
import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';

export const GiB = 1024 ** 3;

/** The repository root: the nearest directory above the working directory holding the package. */
export function repoRoot(): string {
  for (let dir = process.cwd(); ; dir = path.dirname(dir)) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg) && (JSON.parse(fs.readFileSync(pkg, 'utf8')) as { name?: string }).name === 'uniter-ts') return dir;
    if (path.dirname(dir) === dir) throw new Error(`bench: run from inside the uniter-ts repository (no package.json named uniter-ts above ${process.cwd()})`);
  }
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error('median of no values');
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median, minimum and maximum of a sample (the spread a reader needs to judge a median). */
export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function summarize(xs: readonly number[]): Summary {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
}

export const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A child process that prints one JSON line when ready, then one JSON line per request line. */
export class Server {
  private readonly lines: AsyncIterableIterator<string>;
  private stderr = '';
  private exited = false;

  private constructor(
    readonly label: string,
    private readonly child: ChildProcessWithoutNullStreams,
  ) {
    this.lines = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    child.stderr.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    child.once('exit', () => (this.exited = true));
  }

  /** Spawn `cmd args` and wait for its `{"ready": true, ...}` line (returned as `ready`). */
  static async start(label: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ server: Server; ready: Record<string, unknown> }> {
    const child = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const server = new Server(label, child);
    const ready = await server.next();
    if (ready.ready !== true) throw new Error(`${label}: unexpected first line ${JSON.stringify(ready)}`);
    return { server, ready };
  }

  private async next(): Promise<Record<string, unknown>> {
    const r = await this.lines.next();
    if (r.done) throw new Error(`${this.label} exited unexpectedly; stderr:\n${this.stderr}`);
    try {
      return JSON.parse(r.value) as Record<string, unknown>;
    } catch {
      throw new Error(`${this.label}: not JSON: ${r.value}\nstderr:\n${this.stderr}`);
    }
  }

  /** Send one request line (a plain word or a JSON object) and wait for its reply. */
  async request(cmd: string | Record<string, unknown>): Promise<Record<string, unknown>> {
    this.child.stdin.write(`${typeof cmd === 'string' ? cmd : JSON.stringify(cmd)}\n`);
    const reply = await this.next();
    if (reply.error) throw new Error(`${this.label}: ${String(reply.error)}`);
    return reply;
  }

  /** One timed request: the reply's wall-clock `seconds` and the CPU seconds the process used meanwhile. */
  async time(cmd: string | Record<string, unknown>): Promise<{ wall: number; cpu: number; reply: Record<string, unknown> }> {
    const reply = await this.request(cmd);
    return { wall: reply.seconds as number, cpu: reply.cpu_seconds as number, reply };
  }

  async quit(): Promise<void> {
    if (this.exited) return;
    const done = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.stdin.write('quit\n');
    this.child.stdin.end();
    await done;
  }

  /** Stop the child without waiting for it to finish its current request. */
  kill(): void {
    if (!this.exited) this.child.kill('SIGTERM');
  }
}

/** Run a child to completion; resolves to its stdout, rejects with the tail of its stderr. */
export function runChild(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}:\n${err.slice(-4000)}`))));
  });
}

/** The last non-empty line of a child's stdout parsed as JSON (workers print their result last). */
export function lastJsonLine(stdout: string, what: string): Record<string, unknown> {
  const line = stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    throw new Error(`${what}: expected a JSON line at the end of its output, got '${line.slice(0, 200)}'`);
  }
}

/** Left-aligned columns separated by two spaces. */
export function formatTable(rows: readonly (readonly string[])[]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => (cell ?? '').padEnd(widths[c])).join('  ').trimEnd()).join('\n');
}

export interface MachineInfo {
  cpu: string | undefined;
  cores: number;
  memory_gib: number;
  load_before: number[];
  node: string;
  onnxruntime_node: string;
  platform: string;
}

export const loadAverage = (): number[] => os.loadavg().map((x) => Number(x.toFixed(2)));

export function machineInfo(root: string): MachineInfo {
  return {
    cpu: os.cpus()[0]?.model,
    cores: os.cpus().length,
    memory_gib: Number((os.totalmem() / GiB).toFixed(1)),
    load_before: loadAverage(),
    node: process.version,
    onnxruntime_node: (JSON.parse(fs.readFileSync(path.join(root, 'node_modules/onnxruntime-node/package.json'), 'utf8')) as { version: string }).version,
    platform: `${os.type()} ${os.release()} ${os.arch()}`,
  };
}
