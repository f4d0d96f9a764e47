/**
 * Issue 15, case 5: a pre-training run that cannot fit in memory is refused before it starts,
 * naming the config's numbers and the estimate; the estimate is within its stated margin of a
 * measured run; an allocation failure during training becomes a clear error.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CALIBRATION_RUNS, calibrationWorld, measureRun } from '../../bench/memory-calibration.js';
import { generateWorld } from '../../src/data/world.js';
import { PRESETS, type UniterConfig } from '../../src/model/config.js';
import { MEMORY_ESTIMATE_MARGIN, MemoryLimitError, availableMemory, estimatePretrainMemory, parseMemorySize } from '../../src/pretrain/memory.js';
import { pretrain, type PretrainSource, type TrainSettings } from '../../src/pretrain/trainer.js';

const BIN = fileURLToPath(new URL('../../../bin/uniter.js', import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-memory-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function sources(): { train: PretrainSource[]; val: PretrainSource[] } {
  const world = generateWorld({ preset: 'tiny', numImages: 16 });
  const tasks: PretrainSource['tasks'] = ['itm', 'mlm', 'mrfr', 'mrckl'];
  return {
    train: [{ name: 'w', txt: world.textDb('pretrain_world_train'), img: world.images, tasks, mix_ratio: [1, 1, 1, 1] }],
    val: [{ name: 'w', txt: world.textDb('pretrain_world_val'), img: world.images, tasks }],
  };
}

const SETTINGS: TrainSettings = {
  trainBatchTokens: 400, valBatchTokens: 2000, accumulation: 1, learningRate: 1e-3, schedule: 'linear', warmupSteps: 1, steps: 3,
  validEvery: 100, saveEvery: 1, keepCheckpoints: 2, logEvery: 1, gradNorm: 5, weightDecay: 0.01, betas: [0.9, 0.98], seed: 3,
  maxTxtLen: 60, mrmProb: 0.15, itmNegProb: 0.5, otLambda: 0, jointMasking: false, valBatches: 1,
};

test('case 5: UNITER-large pre-training (official batch 6144 tokens) under a 6 GiB cap is refused at once, naming the numbers; nothing is written', async () => {
  const out = path.join(tmp, 'large');
  const t0 = Date.now();
  const large: UniterConfig = { ...PRESETS.large };
  await assert.rejects(pretrain({ modelConfig: large, settings: { ...SETTINGS, trainBatchTokens: 6144, valBatchTokens: 6144 }, ...sources(), outDir: out, quiet: true, memoryLimit: 6 * 2 ** 30 }), (e: Error) => {
    assert.ok(e instanceof MemoryLimitError, String(e));
    assert.match(e.message, /^this pre-training run does not fit in memory: hidden 1024, 24 layers, intermediate 4096, 16 heads: 3\d\d\.\dM parameters; largest micro-batch 6144 joint tokens \(train_batch_size 6144, sequences up to \d+\), val_batch_size 6144, gradient_accumulation_steps 1\. Estimated peak \d+\.\d\d GiB = weights 1\.\d\d GiB \+ Adam moments 2\.\d\d GiB \+ gradients 1\.\d\d GiB \+ activations \d+\.\d\d GiB \+ runtime 200 MiB \(within ±20% of measured runs\); this process can get 6\.00 GiB \(the memoryLimit option, 6\.00 GiB\)\. Lower train_batch_size/);
    return true;
  });
  assert.ok(Date.now() - t0 < 3000, 'refused before allocating anything');
  assert.ok(!fs.existsSync(out), 'no run folder');
  // The same run with room for it passes the check (stopped before its first step).
  const e = estimatePretrainMemory({ model: large, tasks: ['mlm'], trainBatchTokens: 6144, valBatchTokens: 6144, accumulation: 1, maxSeqLen: 162 });
  assert.ok(e.bytes.total > 6 * 2 ** 30 && e.parameters > 300e6);
});

test('case 5: `uniter pretrain` refuses a config above UNITER_MEMORY_LIMIT before training (exit 1, no run folder)', () => {
  const world = calibrationWorld(tmp);
  const run = CALIBRATION_RUNS[0];
  const cfg = {
    model: { config: run.model },
    train_datasets: [{ name: 'w', db: [path.join(world, 'txt_db/pretrain_world_train.db')], img: [path.join(world, 'img_db/world')], tasks: run.tasks, mix_ratio: run.tasks.map(() => 1) }],
    val_datasets: [{ name: 'w', db: [path.join(world, 'txt_db/pretrain_world_val.db')], img: [path.join(world, 'img_db/world')], tasks: run.tasks }],
    train_batch_size: run.trainBatchTokens, val_batch_size: run.valBatchTokens, num_train_steps: 3, warmup_steps: 1,
  };
  const file = path.join(tmp, 'cli.json');
  fs.writeFileSync(file, JSON.stringify(cfg));
  const out = path.join(tmp, 'cli-out');
  const r = spawnSync(process.execPath, [BIN, 'pretrain', '--config', file, '--out', out, '--quiet'], { encoding: 'utf8', env: { ...process.env, UNITER_MEMORY_LIMIT: '100M' } });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /this pre-training run does not fit in memory: hidden 16, 1 layers, .*train_batch_size 400.*val_batch_size 4000.*Estimated peak \d+ MiB.*this process can get 100 MiB \(UNITER_MEMORY_LIMIT\)/);
  assert.ok(!fs.existsSync(out));
});

test(`case 5: the estimate is within ±${MEMORY_ESTIMATE_MARGIN * 100}% of a measured tiny run's peak RSS`, () => {
  const r = measureRun(tmp, calibrationWorld(tmp), CALIBRATION_RUNS[0]);
  assert.ok(Math.abs(r.error) <= MEMORY_ESTIMATE_MARGIN, `estimate ${r.estimate} bytes, measured peak RSS ${r.measured} bytes (${(r.error * 100).toFixed(1)}%)`);
});

test('case 5: an allocation failure during training ("Array buffer allocation failed") becomes a clear error naming the step and the checkpoint', async () => {
  const out = path.join(tmp, 'oom');
  const model: UniterConfig = { ...PRESETS.tiny, hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32 };
  const onStep = ({ step }: { step: number }) => {
    if (step === 2) throw new RangeError('Array buffer allocation failed');
  };
  await assert.rejects(pretrain({ modelConfig: model, settings: SETTINGS, ...sources(), outDir: out, quiet: true, onStep }), (e: Error) => {
    assert.ok(e instanceof MemoryLimitError, String(e));
    assert.match(e.message, /^pre-training ran out of memory at step 2 \(RangeError: Array buffer allocation failed\)\. hidden 16, 1 layers.*Estimated peak \d+ MiB.*the process could get .* when it started\. Lower train_batch_size or the model size; the checkpoints in .*oom\/ckpt can be resumed with --resume$/);
    assert.ok(e.cause instanceof RangeError);
    return true;
  });
  // Other errors pass through unchanged.
  await assert.rejects(pretrain({ modelConfig: model, settings: SETTINGS, ...sources(), outDir: path.join(tmp, 'other'), quiet: true, onStep: () => { throw new Error('boom'); } }), /^Error: boom$/);
});

test('case 5: memory sizes and limits', () => {
  assert.equal(parseMemorySize('6G', 'x'), 6 * 2 ** 30);
  assert.equal(parseMemorySize('512MiB', 'x'), 512 * 2 ** 20);
  assert.equal(parseMemorySize('1.5g', 'x'), 1.5 * 2 ** 30);
  assert.equal(parseMemorySize('4096', 'x'), 4096);
  assert.throws(() => parseMemorySize('lots', 'UNITER_MEMORY_LIMIT'), /UNITER_MEMORY_LIMIT: expected a size like 6G/);
  assert.equal(availableMemory({ UNITER_MEMORY_LIMIT: 'off' }), null);
  assert.equal(availableMemory({ UNITER_MEMORY_LIMIT: '6G' })!.bytes, 6 * 2 ** 30);
  const sys = availableMemory({})!;
  assert.ok(sys.bytes > 0 && sys.bytes <= os.totalmem() && sys.limits.length >= 2, JSON.stringify(sys));
});
