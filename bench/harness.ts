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
  /** Why this harness killed the child (e.g. the machine ran out of memory), if it did. */
  killedBecause: string | null = null;

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
    if (r.done) {
      if (this.killedBecause) throw new ChildKilledError(`${this.label} was stopped: ${this.killedBecause}`, this.killedBecause);
      throw new Error(`${this.label} exited unexpectedly; stderr:\n${this.stderr}`);
    }
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
  kill(reason: string): void {
    if (this.exited) return;
    this.killedBecause = reason;
    this.child.kill('SIGKILL');
  }

  get pid(): number | undefined {
    return this.exited ? undefined : this.child.pid;
  }

  get running(): boolean {
    return !this.exited;
  }
}

export class ChildKilledError extends Error {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
  }
}

/** Resident memory of a process now (Linux /proc), or null when it cannot be read. */
export function processRssBytes(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Memory the kernel could still hand out (Linux MemAvailable), or null when unknown. */
export function availableMemoryBytes(): number | null {
  try {
    const m = /MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * Protects a shared machine from a benchmark child that outgrows it: polls the available memory
 * and the children's RSS; when a child passes its own limit, or the machine's available memory
 * falls below `minAvailableBytes`, the largest watched child is killed (and the request it was
 * serving fails with ChildKilledError naming the reason), before the kernel's OOM killer picks
 * some other engineer's process.
 */
export class MemoryGuard {
  private readonly watched = new Map<Server, number>();
  private readonly timer: NodeJS.Timeout;
  readonly events: Array<{ child: string; rss_bytes: number; available_bytes: number | null; reason: string; at: string }> = [];

  constructor(
    readonly minAvailableBytes: number,
    intervalMs = 500,
  ) {
    this.timer = setInterval(() => this.check(), intervalMs);
    this.timer.unref();
  }

  watch(server: Server, limitBytes = Infinity): void {
    this.watched.set(server, limitBytes);
  }

  private check(): void {
    const sizes = [...this.watched].filter(([s]) => s.running && s.pid !== undefined).map(([s, limit]) => ({ s, limit, rss: processRssBytes(s.pid!) ?? 0 }));
    if (sizes.length === 0) return;
    const available = availableMemoryBytes();
    const over = sizes.find((x) => x.rss > x.limit);
    let victim: (typeof sizes)[number] | undefined;
    let reason = '';
    if (over) {
      victim = over;
      reason = `its resident memory ${(over.rss / GiB).toFixed(2)} GiB passed the limit of ${(over.limit / GiB).toFixed(2)} GiB`;
    } else if (available !== null && available < this.minAvailableBytes) {
      victim = sizes.reduce((a, b) => (b.rss > a.rss ? b : a));
      reason = `the machine had only ${(available / GiB).toFixed(2)} GiB available (child at ${(victim.rss / GiB).toFixed(2)} GiB resident)`;
    }
    if (!victim) return;
    this.events.push({ child: victim.s.label, rss_bytes: victim.rss, available_bytes: available, reason, at: new Date().toISOString() });
    victim.s.kill(reason);
  }

  stop(): void {
    clearInterval(this.timer);
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
