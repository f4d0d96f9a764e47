/**
 * Test helpers for the queue: a private redis-server on a free port of 127.0.0.1 (in a temp dir,
 * stopped by the test), and `uniter worker` child processes. Nothing is installed here: .ci/run
 * installs Debian's redis-server when it is missing.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const UNITER = path.join(ROOT, 'bin/uniter.js');

export const HAVE_REDIS = spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
export const NO_REDIS = 'redis-server is not installed (apt-get install -y redis-server; .ci/run does it)';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000, everyMs = 50): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export class RedisServer {
  proc: ChildProcess | null = null;
  readonly url: string;

  constructor(
    readonly port: number,
    readonly dir: string,
    readonly aof: boolean,
  ) {
    this.url = `redis://127.0.0.1:${port}`;
  }

  static async start(dir: string, opts: { aof?: boolean } = {}): Promise<RedisServer> {
    fs.mkdirSync(dir, { recursive: true });
    const s = new RedisServer(await freePort(), dir, opts.aof === true);
    await s.start();
    return s;
  }

  async start(): Promise<void> {
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--save', '', '--daemonize', 'no'];
    args.push(...(this.aof ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']));
    this.proc = spawn('redis-server', args, { stdio: 'ignore' });
    await waitFor(`redis-server on port ${this.port}`, () => this.ping(), 10_000);
  }

  async ping(): Promise<boolean> {
    const c = new Redis({ host: '127.0.0.1', port: this.port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false, connectTimeout: 500 });
    c.on('error', () => undefined);
    try {
      await c.connect();
      return (await c.ping()) === 'PONG';
    } catch {
      return false;
    } finally {
      c.disconnect();
    }
  }

  /** Stop the server (SIGKILL: no shutdown save; with AOF and appendfsync always nothing is lost). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    this.proc = null;
  }
}

export class WorkerProc {
  log = '';
  readonly proc: ChildProcess;

  constructor(redisUrl: string, extra: string[] = []) {
    this.proc = spawn(process.execPath, [UNITER, 'worker', '--redis', redisUrl, '--threads', '1', ...extra], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc.stderr!.on('data', (b: Buffer) => (this.log += b.toString()));
  }

  get pid(): number {
    return this.proc.pid!;
  }

  ready(): Promise<boolean> {
    return waitFor(`worker ${this.pid} to connect`, () => {
      if (this.proc.exitCode !== null) throw new Error(`worker exited with ${this.proc.exitCode}: ${this.log}`);
      return /serving queue/.test(this.log);
    });
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill(signal);
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
  }
}
