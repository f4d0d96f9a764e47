/**
 * `uniter serve` overhead: ITM requests per second and p50/p99 latency at concurrency 1, 4 and
 * 16, through the HTTP server (Fastify + a worker thread) and through the library called
 * directly in-process (the same pipeline, one call per request), on the same model and images.
 *
 *   node dist/bench/serve/run.js [--model DIR] [--seconds S] [--threads N] [--out FILE]
 *
 * Default model: the main job's (runs/pretrain-default/model); the images are the synthetic
 * world's held-out ones. Results: bench/results/serve.json and a table on stdout.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pipeline } from '../../src/api/pipeline.js';
import { generateWorld } from '../../src/data/world.js';
import { embeddedRecipe } from '../../src/pretrain/run.js';
import { worldGallery } from '../../src/serve/gallery.js';
import { startServer } from '../../src/serve/server.js';
import { writeFileAtomic } from '../../src/util/atomic.js';
import { parseArgs } from '../../src/cli/common.js';

interface Cell {
  mode: 'library' | 'server';
  concurrency: number;
  requests: number;
  rps: number;
  p50_ms: number;
  p99_ms: number;
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** `concurrency` loops issuing requests back to back for `seconds`. */
async function load(concurrency: number, seconds: number, one: (i: number) => Promise<void>): Promise<{ n: number; lat: number[]; wall: number }> {
  const lat: number[] = [];
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  let i = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        const s = performance.now();
        await one(i++);
        lat.push(performance.now() - s);
      }
    }),
  );
  return { n: lat.length, lat: lat.sort((a, b) => a - b), wall: (performance.now() - t0) / 1000 };
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2), { string: ['model', 'seconds', 'threads', 'out'] }, 'bench/serve [--model DIR] [--seconds S] [--threads N] [--out FILE]');
  const modelDir = a.string.model ?? path.join('runs', 'pretrain-default', 'model');
  if (!fs.existsSync(modelDir)) throw new Error(`no model at ${modelDir}: run \`node bin/uniter.js pretrain\` first or pass --model DIR`);
  const seconds = Number(a.string.seconds ?? 8);
  const threads = Number(a.string.threads ?? 2);
  const gallery = worldGallery(generateWorld(embeddedRecipe().world));
  const pairs = gallery.ids.map((id) => ({ text: gallery.describe(id).captions![0], image: id }));

  const cells: Cell[] = [];
  const record = (mode: Cell['mode'], c: number, r: { n: number; lat: number[]; wall: number }) => {
    const cell = { mode, concurrency: c, requests: r.n, rps: r.n / r.wall, p50_ms: pct(r.lat, 50), p99_ms: pct(r.lat, 99) };
    cells.push(cell);
    console.log(`${mode.padEnd(8)} c=${String(c).padStart(2)}  ${cell.rps.toFixed(1).padStart(7)} req/s  p50 ${cell.p50_ms.toFixed(2)} ms  p99 ${cell.p99_ms.toFixed(2)} ms  (${r.n} requests)`);
  };

  const itm = await pipeline('itm', modelDir, { threads, images: gallery.source });
  // Features are synthesised on first read: read them all before timing.
  for (const p of pairs) await itm(p);
  const server = await startServer({ modelDir, gallery, port: 0, threads, workers: 1, queueLimit: 1024 });
  const body = pairs.map((p) => JSON.stringify(p));
  const post = async (i: number) => {
    const res = await fetch(server.url + '/api/itm', { method: 'POST', headers: { 'content-type': 'application/json' }, body: body[i % body.length] });
    if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
    await res.json();
  };
  for (let i = 0; i < 50; i++) await post(i);

  for (const c of [1, 4, 16]) {
    record('library', c, await load(c, seconds, async (i) => void (await itm(pairs[i % pairs.length]))));
    record('server', c, await load(c, seconds, post));
  }
  await server.close();

  const summary = [1, 4, 16].map((c) => {
    const lib = cells.find((x) => x.mode === 'library' && x.concurrency === c)!;
    const srv = cells.find((x) => x.mode === 'server' && x.concurrency === c)!;
    return { concurrency: c, server_rps_over_library: srv.rps / lib.rps, overhead: 1 - srv.rps / lib.rps };
  });
  for (const s of summary) console.log(`c=${s.concurrency}: server/library throughput ${s.server_rps_over_library.toFixed(3)} (overhead ${(100 * s.overhead).toFixed(1)}%)`);
  const out = a.string.out ?? path.join('bench', 'results', 'serve.json');
  writeFileAtomic(out, JSON.stringify({ model: modelDir, threads, seconds, workers: 1, cells, summary, date: new Date().toISOString() }, null, 1) + '\n');
  console.log(`wrote ${out}`);
}

main().catch((e) => {
  console.error(`bench/serve: ${(e as Error).message}`);
  process.exit(1);
});
