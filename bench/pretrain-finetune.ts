/**
 * Issue 18's end-to-end check: `uniter pretrain` (a finished run), then `uniter finetune TASK`
 * with the defaults for each of the six tasks, against the same fine-tuning from a fresh
 * initialization (`--checkpoint none`) and against chance, all scored with `uniter evaluate TASK
 * --split test` on the held-out test split of the world the pre-training run recorded.
 *
 * The commands run as the README shows them (child processes of bin/uniter.js), in two lanes at
 * once (pre-trained and fresh), one ONNX Runtime thread each. Finished cells are reused, so the
 * script can be stopped and run again.
 *
 *   node dist/bench/pretrain-finetune.js --pretrained runs/pretrain-default --out runs/pretrain-finetune \
 *     [--tasks vqa,ve,...] [--seeds default,1,2] [--results bench/results/pretrain-finetune] [--only fresh]
 *
 * `--seeds`: fine-tuning seeds per cell ('default' = the task's default seed); the table gives
 * mean ± sample standard deviation over them.
 *
 * `--only fresh` runs the fresh lane alone (it needs no pre-trained model, so it can run while
 * pre-training does); a later run without it reuses those cells.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { promisify } from 'node:util';
import { WORLD_IMG_DBS, generateWorld, type World } from '../src/data/world.js';
import { defaultWorldChoice, taskRegistry } from '../src/finetune/task-registry.js';
import { resolveWeightsPath } from '../src/finetune/trainer.js';
import { writeFileAtomic } from '../src/util/atomic.js';
import { repoRoot } from './harness.js';

/** The test-split metrics compared per task (the first is the headline). */
const METRICS: Record<string, string[]> = {
  vqa: ['score'],
  ve: ['acc'],
  nlvr2: ['acc'],
  retrieval: ['img_r1', 'txt_r1', 'r_mean'],
  re: ['acc_det', 'acc_gt'],
  vcr: ['acc', 'qa_acc', 'qar_acc'],
};

interface Cell {
  task: string;
  start: 'pretrained' | 'fresh';
  seed: number | null;
  steps: number;
  seconds: number;
  test: Record<string, number>;
}

const run = promisify(execFile);

async function uniter(args: string[]): Promise<Record<string, unknown>> {
  const bin = path.join(repoRoot(), 'bin', 'uniter.js');
  const { stdout } = await run(process.execPath, [bin, ...args, '--json', '--quiet', '--threads', '1'], { maxBuffer: 64 << 20 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

async function cell(task: string, start: Cell['start'], seed: number | null, pretrained: string, outRoot: string): Promise<Cell> {
  const dir = path.join(outRoot, `${task}-${start}${seed === null ? '' : `-s${seed}`}`);
  const record = `${dir}.json`;
  if (fs.existsSync(record)) {
    const c = JSON.parse(fs.readFileSync(record, 'utf8')) as Cell;
    return { ...c, seed: c.seed ?? null };
  }
  const t0 = Date.now();
  const ft = await uniter(['finetune', task, '--checkpoint', start === 'fresh' ? 'none' : pretrained, '--out', dir, ...(seed === null ? [] : ['--seed', String(seed)])]);
  const seconds = (Date.now() - t0) / 1000;
  const ev = await uniter(['evaluate', task, '--checkpoint', dir, '--split', 'test', '--out', path.join(dir, 'eval-test')]);
  const metrics = (ev.metrics as Record<string, Record<string, number>>).test ?? {};
  const c: Cell = { task, start, seed, steps: ft.steps as number, seconds, test: metrics };
  writeFileAtomic(record, JSON.stringify(c, null, 1) + '\n');
  return c;
}

/** What guessing without looking scores on the test split (the best constant answer, or 1/candidates). */
export function chanceOf(task: string, world: World): Record<string, number> {
  const db = world.textDb(`${taskRegistry().get(task)!.worldPrefix}_world_test`);
  const recs = db.ids().map((id) => db.get(id) as unknown as Record<string, unknown>);
  const bestConstant = (labelsOf: (r: Record<string, unknown>) => Map<number, number>): number => {
    const total = new Map<number, number>();
    for (const r of recs) for (const [l, s] of labelsOf(r)) total.set(l, (total.get(l) ?? 0) + s);
    return Math.max(...total.values()) / recs.length;
  };
  const softTarget = (r: Record<string, unknown>) => {
    const t = r.target as { labels: number[]; scores: number[] };
    return new Map(t.labels.map((l, i) => [l, t.scores[i]]));
  };
  switch (task) {
    case 'vqa':
      return { score: bestConstant(softTarget) };
    case 've':
      return { acc: bestConstant(softTarget) };
    case 'nlvr2':
      return { acc: bestConstant((r) => new Map([[r.target as number, 1]])) };
    case 'retrieval': {
      // Random ranking: R@1 is 1 / images for an image query over its captions' gallery, and the same for text.
      const images = new Set(recs.map((r) => String(r.img_fname))).size;
      return { img_r1: 1 / images, txt_r1: 1 / images };
    }
    case 're': {
      // A uniformly random box of the image.
      const mean = (store: 'det' | 'gt') => recs.reduce((a, r) => a + 1 / world.imageStore(WORLD_IMG_DBS[store]).nbb(world.imageName(store, r.image_id as number)), 0) / recs.length;
      return { acc_det: mean('det'), acc_gt: mean('gt') };
    }
    case 'vcr':
      // acc is Q->AR (both right: 1 in 16 by chance).
      return { acc: 1 / 16, qa_acc: 0.25, qar_acc: 0.25 };
    default:
      throw new Error(`no chance level for task '${task}'`);
  }
}

/**
 * 'yes' when the pre-trained mean is above chance and above the fresh mean beyond both seeds'
 * spread (mean - std > mean + std); 'within spread' when higher only on the mean; else 'no'.
 */
function beatsBoth(p: { mean: number; std: number }, f: { mean: number; std: number }, chance: number | undefined): string {
  if (chance !== undefined && p.mean <= chance) return 'no';
  if (p.mean - p.std > f.mean + f.std) return 'yes';
  return p.mean > f.mean ? 'within spread' : 'no';
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { pretrained: { type: 'string' }, out: { type: 'string' }, tasks: { type: 'string' }, results: { type: 'string' }, only: { type: 'string' }, seeds: { type: 'string' } } });
  if (values.only !== undefined && values.only !== 'fresh') throw new Error(`--only: expected 'fresh', got '${values.only}'`);
  if (!values.pretrained || !values.out) throw new Error('usage: pretrain-finetune --pretrained RUN_DIR --out DIR [--tasks a,b] [--results DIR]');
  const pretrained = path.resolve(values.pretrained);
  const outRoot = path.resolve(values.out);
  fs.mkdirSync(outRoot, { recursive: true });
  const tasks = values.tasks ? values.tasks.split(',') : [...taskRegistry().keys()];
  for (const t of tasks) if (!METRICS[t]) throw new Error(`--tasks: unknown task '${t}' (expected ${Object.keys(METRICS).join(', ')})`);
  const seeds = (values.seeds ?? 'default').split(',').map((x) => {
    if (x === 'default') return null;
    if (!/^\d+$/.test(x)) throw new Error(`--seeds: expected 'default' or integers, got '${x}'`);
    return Number(x);
  });
  const say = (m: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${m}\n`);
  const lane = async (start: Cell['start']): Promise<Cell[]> => {
    const out: Cell[] = [];
    for (const t of tasks) {
      for (const seed of seeds) {
        const c = await cell(t, start, seed, pretrained, outRoot);
        say(`${t} ${start} seed ${seed ?? 'default'}: ${JSON.stringify(c.test)} (${c.steps} steps, ${c.seconds.toFixed(0)} s)`);
        out.push(c);
      }
    }
    return out;
  };
  if (values.only === 'fresh') {
    await lane('fresh');
    return;
  }
  const { choice, why } = defaultWorldChoice(resolveWeightsPath(pretrained));
  const world = generateWorld({ ...choice.world, cacheSize: 0 });
  say(`data: ${why}`);
  const [pre, fresh] = await Promise.all([lane('pretrained'), lane('fresh')]);
  say(`seeds: ${seeds.map((x) => x ?? 'default').join(', ')} (mean ± sample std where more than one)`);
  const pct = (x: number | undefined) => (x === undefined ? 'n/a' : (100 * x).toFixed(1));
  const stats = (cells: Cell[], task: string, m: string): { mean: number; std: number; n: number } | undefined => {
    const xs = cells.filter((c) => c.task === task && c.test[m] !== undefined).map((c) => c.test[m]);
    if (xs.length === 0) return undefined;
    const mean = xs.reduce((a, x) => a + x, 0) / xs.length;
    const std = xs.length > 1 ? Math.sqrt(xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (xs.length - 1)) : 0;
    return { mean, std, n: xs.length };
  };
  const show = (x: ReturnType<typeof stats>) => (x === undefined ? 'n/a' : x.n > 1 ? `${pct(x.mean)} ± ${pct(x.std)}` : pct(x.mean));
  const lines = [
    `| task | metric (test split) | chance | fresh init | pre-trained | pre-trained beats chance and fresh init |`,
    '|---|---|---:|---:|---:|---|',
  ];
  const rows: Array<Record<string, unknown>> = [];
  for (const t of tasks) {
    const chance = chanceOf(t, world);
    for (const m of METRICS[t]) {
      const p = stats(pre, t, m);
      const f = stats(fresh, t, m);
      const c = chance[m];
      const verdict = p === undefined || f === undefined ? 'n/a' : beatsBoth(p, f, c);
      lines.push(`| ${t} | ${m} | ${pct(c)} | ${show(f)} | ${show(p)} | ${verdict === 'no' ? '**no**' : verdict} |`);
      rows.push({ task: t, metric: m, chance: c ?? null, fresh: f ?? null, pretrained: p ?? null, verdict });
    }
  }
  const table = lines.join('\n');
  process.stdout.write(table + '\n');
  if (values.results) {
    fs.mkdirSync(values.results, { recursive: true });
    writeFileAtomic(path.join(values.results, 'results.json'), JSON.stringify({ pretrained, data: why, rows, cells: [...pre, ...fresh] }, null, 1) + '\n');
    writeFileAtomic(path.join(values.results, 'table.md'), table + '\n');
  }
}

if (process.argv[1] && import.meta.url.endsWith(path.basename(process.argv[1]))) {
  main().catch((e) => {
    process.stderr.write(`pretrain-finetune: ${(e as Error).message}\n`);
    process.exit(1);
  });
}
