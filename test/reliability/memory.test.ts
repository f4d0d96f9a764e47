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
import { MEMORY_ESTIMATE_MARGIN, MemoryLimitError, availableMemory, checkTrainingMemory, estimatePretrainMemory, parameterCount, parseMemorySize } from '../../src/pretrain/memory.js';
import { defaultSettings } from '../../src/finetune/defaults.js';
import { finetuneMemoryInput, getTask } from '../../src/finetune/task-registry.js';
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
    assert.match(e.message, /^this pre-training run does not fit in memory: hidden 1024, 24 layers, intermediate 4096, 16 heads: 3\d\d\.\dM parameters; largest micro-batch 6144 joint tokens \(train_batch_size 6144, val_batch_size 6144, sequences up to \d+\), gradient_accumulation_steps 1, checkpoint_activations false\. Estimated peak \d+\.\d\d GiB = weights 1\.\d\d GiB \+ Adam moments 2\.\d\d GiB \+ gradients 1\.\d\d GiB \+ activations \d+\.\d\d GiB \+ runtime 200 MiB \(within ±20% of measured runs\); this process can get 6\.00 GiB \(the memoryLimit option, 6\.00 GiB\)\. Lower train_batch_size \/ val_batch_size, set checkpoint_activations, or use a smaller model/);
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

test('case 5: activation checkpointing lowers the estimate by the layers it no longer keeps; UNITER-large at 6144 tokens then fits 16 GiB', () => {
  const large: UniterConfig = { ...PRESETS.large };
  const input = { model: large, tasks: ['mlm', 'itm'] as const, trainBatchTokens: 6144, valBatchTokens: 6144, accumulation: 1, maxSeqLen: 162 };
  const plain = estimatePretrainMemory({ ...input, tasks: [...input.tasks] });
  const ckpt = estimatePretrainMemory({ ...input, tasks: [...input.tasks], checkpointActivations: true });
  assert.equal(ckpt.bytes.weights + ckpt.bytes.adam + ckpt.bytes.gradients, plain.bytes.weights + plain.bytes.adam + plain.bytes.gradients);
  // 24 layers' intermediates become 24 layer inputs and one layer's intermediates.
  assert.ok(ckpt.bytes.activations < plain.bytes.activations / 5, `${ckpt.bytes.activations} vs ${plain.bytes.activations}`);
  assert.ok(plain.bytes.total > 16 * 2 ** 30 && ckpt.bytes.total < 16 * 2 ** 30, `${plain.bytes.total} / ${ckpt.bytes.total}`);
});

test('case 5 (fine-tuning): `uniter finetune` refuses a run that cannot fit before training (UNITER-large VQA, 6144 tokens, 6 GiB): exit 1, the numbers named, no run folder', () => {
  const world = calibrationWorld(tmp);
  const file = path.join(tmp, 'ft-large.json');
  fs.writeFileSync(file, JSON.stringify({ model_config: 'large', checkpoint: null, train_batch_size: 6144, val_batch_size: 6144, num_train_steps: 3, warmup_steps: 1 }));
  const out = path.join(tmp, 'ft-large-out');
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [BIN, 'finetune', 'vqa', '--config', file, '--data', world, '--out', out, '--quiet'], { encoding: 'utf8', env: { ...process.env, UNITER_MEMORY_LIMIT: '6G' } });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /this fine-tuning run does not fit in memory: hidden 1024, 24 layers, intermediate 4096, 16 heads: 3\d\d\.\dM parameters; largest micro-batch 6144 joint tokens \(train_batch_size 6144, val_batch_size 6144, sequences up to \d+\), gradient_accumulation_steps \d+, checkpoint_activations false\. Estimated peak \d+\.\d\d GiB .*this process can get 6\.00 GiB \(UNITER_MEMORY_LIMIT\)/);
  assert.ok(!fs.existsSync(out), 'no run folder');
  assert.ok(Date.now() - t0 < 30000);
  // The same task on the tiny model passes the check and trains (stopped after one step).
  const tiny = path.join(tmp, 'ft-tiny.json');
  fs.writeFileSync(tiny, JSON.stringify({ model_config: 'tiny', checkpoint: null, train_batch_size: 512, val_batch_size: 1024, num_train_steps: 3, warmup_steps: 1, checkpoint_activations: true }));
  const ok = spawnSync(process.execPath, [BIN, 'finetune', 'vqa', '--config', tiny, '--data', world, '--out', path.join(tmp, 'ft-tiny-out'), '--stop-after', '1', '--quiet'], { encoding: 'utf8', env: { ...process.env, UNITER_MEMORY_LIMIT: '6G' } });
  assert.equal(ok.status, 0, ok.stderr);
});

test('case 5 (fine-tuning): the estimate counts rows x the longest sequence where batch sizes count rows (retrieval)', () => {
  const world = generateWorld({ preset: 'tiny', numImages: 16 });
  const settings = defaultSettings(getTask('vqa'));
  const data = { describe: 'world', train: [{ name: 'w', txt: world.textDb('itm_world_train'), img: world.images, sideFile: () => undefined }], val: null, test: null, ans2label: null, close: () => undefined };
  const plan = { cfg: { ...PRESETS.tiny }, head: 'retrieval' as const, headOptions: {}, hooks: {} };
  const retrieval = getTask('retrieval');
  const input = finetuneMemoryInput(retrieval, plan, { ...settings, trainBatchTokens: 8 }, { ...retrieval.optionDefaults }, data);
  const rows = 8 * (retrieval.optionDefaults.hard_negatives ? (retrieval.optionDefaults.hard_neg_size as number) + 1 : 3);
  assert.equal(input.trainTokens, rows * input.seqLen);
  assert.ok(input.seqLen > settings.maxTxtLen, 'text and regions');
  assert.equal(input.run, 'fine-tuning');
  const vqa = finetuneMemoryInput(getTask('vqa'), { ...plan, head: 'vqa', headOptions: { numAnswers: 10 } }, settings, {}, data);
  assert.equal(vqa.trainTokens, Math.max(settings.trainBatchTokens, vqa.seqLen));
  assert.ok(vqa.parameters > parameterCount(PRESETS.tiny, 'vqa', { numAnswers: 1 }) - 1);
  assert.throws(() => checkTrainingMemory(vqa, { bytes: 2 ** 20, source: 'a test limit', limits: [] }), (e: Error) => e instanceof MemoryLimitError && /this fine-tuning run does not fit in memory/.test(e.message));
});
