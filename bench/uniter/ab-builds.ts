/**
 * One engine build against another on the same requests (e.g. the commit before a change and the
 * change): a `bench/uniter/worker.js serve` process from each build's dist folder, UNITER-base
 * random weights (same seed, so the same model), the same batch alternating between the two
 * (A first in even rounds), 1 warm-up request each. Reports medians of wall and CPU seconds per
 * side, the median of per-round A/B ratios (> 1: B faster) and the load average.
 *
 *   node dist/bench/uniter/ab-builds.js --a DIST_A --b DIST_B [--precision int8] [--batch 64]
 *        [--rounds 8] [--layers 12] [--threads 2] [--out FILE]
 *
 * Each DIST is a compiled tree (`npx tsc -p .` output, e.g. a copy of dist/ from the older commit).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Server, loadAverage, median, summarize } from '../harness.js';
import { makeBatch, writeBatch } from './workload.js';

function flag(name: string, def?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

async function main(): Promise<void> {
  const a = flag('a');
  const b = flag('b');
  if (!a || !b) throw new Error('ab-builds: --a DIST_A and --b DIST_B are required');
  const precision = flag('precision', 'int8')!;
  const batchSize = Number(flag('batch', '64'));
  const rounds = Number(flag('rounds', '8'));
  const layers = flag('layers', '12')!;
  const threads = flag('threads', '2')!;
  const out = flag('out');
  for (const [n, v] of [['batch', batchSize], ['rounds', rounds]] as const) if (!(Number.isInteger(v) && v >= 1)) throw new Error(`ab-builds: --${n} must be an integer >= 1, got ${v}`);
  const workers = [a, b].map((d) => path.resolve(d, 'bench/uniter/worker.js'));
  for (const w of workers) if (!fs.existsSync(w)) throw new Error(`ab-builds: ${w} not found (build that tree first)`);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ab-builds-'));
  try {
    const batchFile = path.join(dir, 'itm.safetensors');
    writeBatch(batchFile, makeBatch('pairs', { examples: batchSize, wordpieces: 40, regions: 36 }));
    const servers: Server[] = [];
    for (const [i, w] of workers.entries()) servers.push((await Server.start(i ? 'B' : 'A', process.execPath, [w, 'serve', '--layers', layers, '--threads', threads])).server);
    const req = { op: 'infer', batch: batchFile, precision };
    const loadBefore = loadAverage();
    for (const s of servers) await s.time(req); // warm-up: session creation
    const wall: number[][] = [[], []];
    const cpu: number[][] = [[], []];
    const ratios: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? [0, 1] : [1, 0];
      for (const i of order) {
        const t = await servers[i].time(req);
        wall[i].push(t.wall);
        cpu[i].push(t.cpu);
      }
      ratios.push(wall[0][r] / wall[1][r]);
    }
    const loadAfter = loadAverage();
    for (const s of servers) await s.quit();
    const result = {
      bench: 'ab-builds',
      date: new Date().toISOString(),
      a: path.resolve(a),
      b: path.resolve(b),
      request: { op: 'infer', precision, batch: batchSize, wordpieces: 40, regions: 36, layers: Number(layers), threads: Number(threads) },
      rounds,
      wall_s: { a: summarize(wall[0]), b: summarize(wall[1]) },
      cpu_s: { a: summarize(cpu[0]), b: summarize(cpu[1]) },
      b_speedup_paired_median: median(ratios),
      b_speedup_per_round: ratios,
      b_cpu_ratio_of_medians: median(cpu[0]) / median(cpu[1]),
      load_average: { before: loadBefore, after: loadAfter },
    };
    console.log(JSON.stringify(result, null, 2));
    if (out) {
      fs.mkdirSync(path.dirname(out), { recursive: true });
      const tmp = `${out}.tmp-${process.pid}`;
      fs.writeFileSync(tmp, JSON.stringify(result, null, 2) + '\n');
      fs.renameSync(tmp, out);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
