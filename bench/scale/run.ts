/**
 * bench/scale: retrieval scoring throughput in-process, and on 1 and 2 `uniter worker`s through a
 * private redis-server (127.0.0.1, free port), each worker with 1 thread; and the queue's
 * overhead per shard (enqueue, fetch, return value, harvest, atomic write), measured as the run's
 * wall time minus the shards' compute time, on a run of small shards with one worker.
 *
 *   npm run build && node dist/bench/scale/run.js [--images N] [--captions-per-image N] [--out FILE]
 *
 * Model: the `tiny` preset (hidden 128, 2 layers, 2048-d regions) with random weights; data: a
 * synthetic world. Not part of the test suite.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateWorld, writeWorld } from '../../src/data/world.js';
import { PRESETS } from '../../src/model/config.js';
import { allSpecs, initParams } from '../../src/model/params.js';
import { saveModelFolder } from '../../src/pretrain/checkpoint.js';
import { writeFileAtomic } from '../../src/util/atomic.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const UNITER = path.join(ROOT, 'bin/uniter.js');

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function startWorker(url: string): Promise<ChildProcess> {
  const p = spawn(process.execPath, [UNITER, 'worker', '--redis', url, '--threads', '1', '--quiet'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`worker did not start: ${log}`)), 30_000);
    p.stderr!.on('data', (b: Buffer) => {
      log += b.toString();
      if (/serving queue/.test(log)) {
        clearTimeout(t);
        resolve(p);
      }
    });
  });
}

function score(args: string[]): { seconds: number; pairs: number; shards: number; computeSeconds: number } {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [UNITER, 'retrieval-score', ...args, '--json', '--quiet'], { encoding: 'utf8' });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`retrieval-score failed (${r.status}): ${r.stderr}`);
  const j = JSON.parse(r.stdout.trim().split('\n').pop()!) as { pairs: number; shards: number; seconds: number };
  const out = args[args.indexOf('--out') + 1];
  const computeSeconds = fs
    .readFileSync(path.join(out, 'shards.log'), 'utf8')
    .trim()
    .split('\n')
    .reduce((s, l) => s + (JSON.parse(l) as { seconds: number }).seconds, 0);
  return { seconds: j.seconds, pairs: j.pairs, shards: j.shards, computeSeconds, ...{ wall: seconds } };
}

async function main(): Promise<void> {
  const images = arg('images', 96);
  const cpi = arg('captions-per-image', 3);
  const outFile = process.argv.includes('--out') ? process.argv[process.argv.indexOf('--out') + 1] : path.join(ROOT, 'bench/scale/results.json');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-bench-scale-'));
  const redisDir = path.join(tmp, 'redis');
  fs.mkdirSync(redisDir);
  const port = await freePort();
  const url = `redis://127.0.0.1:${port}`;
  const redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', redisDir, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const workers: ChildProcess[] = [];
  try {
    await sleep(500);
    const worldDir = path.join(tmp, 'world');
    writeWorld(generateWorld({ preset: 'tiny', numImages: images, captionsPerImage: cpi }), worldDir);
    const cfg = { ...PRESETS.tiny };
    const params = initParams(allSpecs(cfg, 'retrieval'), cfg.initializer_range, 1);
    const model = path.join(tmp, 'model');
    saveModelFolder(model, { ...cfg }, new Map([...params].map(([k, v]) => [k, v.data as Float32Array])), new Map([...params].map(([k, v]) => [k, v.shape])));
    const base = ['--model', model, '--txt-db', path.join(worldDir, 'txt_db/itm_world_train.db'), '--img-db', path.join(worldDir, 'img_db/world')];
    const shardArgs = ['--shard-images', '32', '--shard-captions', '48'];
    const results: Record<string, unknown> = { machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? '?'}`, loadavg_at_start: os.loadavg(), model: 'tiny preset (hidden 128, 2 layers), random weights', date: new Date().toISOString() };

    const local = score([...base, ...shardArgs, '--out', path.join(tmp, 'local'), '--threads', '1']);
    results.in_process_1_thread = { ...local, pairs_per_s: local.pairs / local.seconds };
    console.log(`in-process, 1 thread: ${local.pairs} pairs in ${local.shards} shards, ${local.seconds.toFixed(2)} s, ${(local.pairs / local.seconds).toFixed(0)} pairs/s`);

    workers.push(await startWorker(url));
    const one = score([...base, ...shardArgs, '--out', path.join(tmp, 'w1'), '--redis', url]);
    results.workers_1 = { ...one, pairs_per_s: one.pairs / one.seconds };
    console.log(`1 worker:  ${one.seconds.toFixed(2)} s, ${(one.pairs / one.seconds).toFixed(0)} pairs/s`);

    // Queue overhead per shard: many small shards on one worker; wall time minus compute time.
    const small = score([...base, '--shard-images', '8', '--shard-captions', '8', '--out', path.join(tmp, 'w1-small'), '--redis', url]);
    const overhead = (small.seconds - small.computeSeconds) / small.shards;
    results.queue_overhead = { shards: small.shards, pairs: small.pairs, seconds: small.seconds, compute_seconds: small.computeSeconds, overhead_ms_per_shard: overhead * 1000 };
    console.log(`queue overhead: ${small.shards} shards of 8 x 8 in ${small.seconds.toFixed(2)} s, compute ${small.computeSeconds.toFixed(2)} s: ${(overhead * 1000).toFixed(1)} ms per shard`);

    workers.push(await startWorker(url));
    const two = score([...base, ...shardArgs, '--out', path.join(tmp, 'w2'), '--redis', url]);
    results.workers_2 = { ...two, pairs_per_s: two.pairs / two.seconds };
    results.speedup_2_over_1 = one.seconds / two.seconds;
    console.log(`2 workers: ${two.seconds.toFixed(2)} s, ${(two.pairs / two.seconds).toFixed(0)} pairs/s (${(one.seconds / two.seconds).toFixed(2)}x one worker)`);
    results.loadavg_at_end = os.loadavg();
    writeFileAtomic(outFile, JSON.stringify(results, null, 1) + '\n');
    console.log(`results: ${outFile}`);
  } finally {
    for (const w of workers) w.kill('SIGTERM');
    redis.kill('SIGTERM');
    await sleep(500);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
