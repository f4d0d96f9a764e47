/**
 * Calibration of the pre-training memory estimate (src/pretrain/memory.ts, issue 15 case 5):
 * runs `uniter pretrain` on the synthetic world for a few steps at several model and batch sizes,
 * each in a fresh process, and compares its peak RSS (getrusage maxrss) with the estimate.
 *
 *   npm run build && node dist/bench/memory-calibration.js [--quick | --runs NAME,NAME]
 *
 * Prints one row per run and the largest relative error.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ImgDb } from '../src/data/imgdb.js';
import { generateWorld, writeWorld } from '../src/data/world.js';
import { PRESETS, type UniterConfig } from '../src/model/config.js';
import { estimatePretrainMemory, fmtBytes, longestSequence } from '../src/pretrain/memory.js';
import type { PretrainTask } from '../src/model/task-graphs.js';

const BIN = fileURLToPath(new URL('../../bin/uniter.js', import.meta.url));
/** Prints the process's peak RSS (bytes) on exit. */
export const MAXRSS_HOOK = `data:text/javascript,process.on('exit',()=>process.stderr.write('MAXRSS '+process.resourceUsage().maxRSS*1024+'\\n'))`;

export interface CalibrationRun {
  name: string;
  model: Partial<UniterConfig>;
  trainBatchTokens: number;
  valBatchTokens: number;
  steps: number;
  tasks: PretrainTask[];
  /** Train with activation checkpointing (config checkpoint_activations). */
  checkpointActivations?: boolean;
}

export interface CalibrationResult {
  run: CalibrationRun;
  estimate: number;
  measured: number;
  /** measured / estimate - 1 */
  error: number;
}

/** Write a world once and return the config writer for runs on it. */
export function calibrationWorld(dir: string): string {
  const world = path.join(dir, 'world');
  if (!fs.existsSync(world)) writeWorld(generateWorld({ preset: 'tiny', numImages: 64 }), world);
  return world;
}

export function measureRun(dir: string, world: string, run: CalibrationRun): CalibrationResult {
  const train = { name: 'w', db: [path.join(world, 'txt_db/pretrain_world_train.db')], img: [path.join(world, 'img_db/world')], tasks: run.tasks, mix_ratio: run.tasks.map(() => 1) };
  const val = { name: 'w', db: [path.join(world, 'txt_db/pretrain_world_val.db')], img: [path.join(world, 'img_db/world')], tasks: run.tasks };
  const cfg = {
    model: Object.keys(run.model).length ? { config: run.model } : { preset: 'tiny' },
    train_datasets: [train],
    val_datasets: [val],
    train_batch_size: run.trainBatchTokens,
    val_batch_size: run.valBatchTokens,
    gradient_accumulation_steps: 1,
    learning_rate: 1e-4,
    warmup_steps: 1,
    num_train_steps: run.steps,
    valid_steps: run.steps,
    seed: 1,
    checkpoint_activations: run.checkpointActivations ?? false,
  };
  const cfgFile = path.join(dir, `${run.name}.json`);
  fs.writeFileSync(cfgFile, JSON.stringify(cfg));
  const out = path.join(dir, `out-${run.name}`);
  fs.rmSync(out, { recursive: true, force: true });
  const r = spawnSync(process.execPath, ['--import', MAXRSS_HOOK, BIN, 'pretrain', '--config', cfgFile, '--out', out, '--quiet'], { encoding: 'utf8', env: { ...process.env, UNITER_MEMORY_LIMIT: 'off' } });
  if (r.status !== 0) throw new Error(`${run.name}: pretrain failed: ${r.stderr}`);
  const measured = Number(/MAXRSS (\d+)/.exec(r.stderr)![1]);
  fs.rmSync(out, { recursive: true, force: true });
  const img = ImgDb.open(path.join(world, 'img_db/world'), { confTh: 0.2, maxBb: 100, minBb: 10, numBb: 36 });
  const maxSeqLen = longestSequence([{ img }], 60);
  img.close();
  const model: UniterConfig = { ...PRESETS.tiny, vocab_size: 28996, ...run.model };
  const e = estimatePretrainMemory({ model, tasks: run.tasks, trainBatchTokens: run.trainBatchTokens, valBatchTokens: run.valBatchTokens, accumulation: 1, maxSeqLen, checkpointActivations: run.checkpointActivations });
  if (process.env.MEMCAL_VERBOSE) console.error(run.name, JSON.stringify({ ...e.bytes, P: e.parameters, T: e.tokens, L: e.seqLen, measured }));
  return { run, estimate: e.bytes.total, measured, error: measured / e.bytes.total - 1 };
}

const ALL: PretrainTask[] = ['itm', 'mlm', 'mrfr', 'mrckl'];
export const CALIBRATION_RUNS: CalibrationRun[] = [
  { name: 'tiny-h16', model: { hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32 }, trainBatchTokens: 400, valBatchTokens: 4000, steps: 4, tasks: ALL },
  { name: 'tiny-preset', model: {}, trainBatchTokens: 1024, valBatchTokens: 4096, steps: 4, tasks: ALL },
  { name: 'small-h256-l4', model: { hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 1024 }, trainBatchTokens: 2048, valBatchTokens: 4096, steps: 4, tasks: ALL },
  { name: 'small-h512-l4-4k', model: { hidden_size: 512, num_hidden_layers: 4, num_attention_heads: 8, intermediate_size: 2048 }, trainBatchTokens: 4096, valBatchTokens: 4096, steps: 4, tasks: ALL },
  { name: 'h768-l6-4k', model: { hidden_size: 768, num_hidden_layers: 6, num_attention_heads: 12, intermediate_size: 3072 }, trainBatchTokens: 4096, valBatchTokens: 4096, steps: 4, tasks: ALL },
  { name: 'small-h256-l4-ckpt', model: { hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 1024 }, trainBatchTokens: 2048, valBatchTokens: 4096, steps: 4, tasks: ALL, checkpointActivations: true },
  { name: 'small-h512-l4-4k-ckpt', model: { hidden_size: 512, num_hidden_layers: 4, num_attention_heads: 8, intermediate_size: 2048 }, trainBatchTokens: 4096, valBatchTokens: 4096, steps: 4, tasks: ALL, checkpointActivations: true },
  { name: 'h768-l6-4k-ckpt', model: { hidden_size: 768, num_hidden_layers: 6, num_attention_heads: 12, intermediate_size: 3072 }, trainBatchTokens: 4096, valBatchTokens: 4096, steps: 4, tasks: ALL, checkpointActivations: true },
];

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-memcal-'));
  try {
    const world = calibrationWorld(dir);
    const only = process.argv.indexOf('--runs');
    const names = only > 0 ? (process.argv[only + 1] ?? '').split(',') : null;
    const runs = names ? CALIBRATION_RUNS.filter((r) => names.includes(r.name)) : process.argv.includes('--quick') ? CALIBRATION_RUNS.slice(0, 2) : CALIBRATION_RUNS;
    if (names && runs.length !== names.length) throw new Error(`--runs: unknown run name in '${names.join(',')}' (known: ${CALIBRATION_RUNS.map((r) => r.name).join(', ')})`);
    let worst = 0;
    console.log('| run | estimate | measured peak RSS | measured / estimate - 1 |\n|---|---|---|---|');
    for (const run of runs) {
      const r = measureRun(dir, world, run);
      worst = Math.max(worst, Math.abs(r.error));
      console.log(`| ${run.name} (${run.trainBatchTokens} tokens) | ${fmtBytes(r.estimate)} | ${fmtBytes(r.measured)} | ${(r.error * 100).toFixed(1)}% |`);
    }
    console.log(`largest |error|: ${(worst * 100).toFixed(1)}%`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
