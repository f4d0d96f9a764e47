/**
 * Issue 15, cases 1 (pre-training part) and 3: a run folder belongs to one run, and checkpoints
 * are verified. A new run refuses a folder that holds a run unless told to overwrite it; a resume
 * verifies every checkpoint file's SHA-256 and the sealed trainer.json, falls back to the newest
 * intact checkpoint (and says so), and refuses a changed identity (lr, seed, steps ...) unless the
 * fields are named.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateWorld } from '../../src/data/world.js';
import { PRESETS, type UniterConfig } from '../../src/model/config.js';
import { loadCheckpoint } from '../../src/pretrain/checkpoint.js';
import { pretrain, type PretrainSource, type TrainSettings } from '../../src/pretrain/trainer.js';

const MODEL: UniterConfig = { ...PRESETS.tiny, hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, vocab_size: 28996 };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-runfolder-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

function setup(over: Partial<TrainSettings> = {}): { train: PretrainSource[]; val: PretrainSource[]; settings: TrainSettings } {
  const world = generateWorld({ preset: 'tiny', numImages: 16 });
  const tasks: PretrainSource['tasks'] = ['itm', 'mlm'];
  const settings: TrainSettings = {
    trainBatchTokens: 400, valBatchTokens: 2000, accumulation: 1, learningRate: 1e-3, schedule: 'linear', warmupSteps: 1, steps: 4,
    validEvery: 100, saveEvery: 1, keepCheckpoints: 2, logEvery: 1, gradNorm: 5, weightDecay: 0.01, betas: [0.9, 0.98], seed: 3,
    maxTxtLen: 40, mrmProb: 0.15, itmNegProb: 0.5, otLambda: 0, jointMasking: false, valBatches: 1, ...over,
  };
  return {
    train: [{ name: 'w', txt: world.textDb('pretrain_world_train'), img: world.images, tasks, mix_ratio: [1, 1] }],
    val: [{ name: 'w', txt: world.textDb('pretrain_world_val'), img: world.images, tasks }],
    settings,
  };
}

async function run(outDir: string, extra: Partial<Parameters<typeof pretrain>[0]> = {}, over: Partial<TrainSettings> = {}) {
  const s = setup(over);
  const messages: string[] = [];
  const r = await pretrain({ modelConfig: MODEL, settings: s.settings, train: s.train, val: s.val, outDir, quiet: true, say: (m) => messages.push(m), ...extra });
  return { ...r, messages };
}

const snapshot = (dir: string): Record<string, string> =>
  Object.fromEntries(
    (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(dir, f)).isFile()).map((f) => [f, fs.readFileSync(path.join(dir, f)).toString('base64')]),
  );

let full: Awaited<ReturnType<typeof run>>;
test('reference: an uninterrupted run', async () => {
  full = await run(path.join(tmp, 'full'));
  assert.equal(full.losses.length, 4);
});

test('case 1: a new run refuses a folder that holds a run, leaving it untouched; --overwrite replaces it whole', async () => {
  const dir = path.join(tmp, 'owned');
  await run(dir, { stopAtStep: 2 });
  const before = snapshot(dir);
  assert.ok(Object.keys(before).some((f) => f.startsWith('ckpt')) && 'log.jsonl' in before);
  await assert.rejects(run(dir), /owned already holds a run \(log\.jsonl, ckpt, run\.json\); pass --resume to continue it, --overwrite to replace it/);
  assert.deepEqual(snapshot(dir), before, 'log, checkpoints and run.json unchanged');

  const r = await run(dir, { overwrite: true }, { seed: 9 });
  assert.equal(r.steps, 4);
  assert.ok(r.messages.some((m) => /--overwrite: replaced the previous run/.test(m)));
  // Only the new run's checkpoints (steps 3 and 4 kept of 1..4, all written by the new run) and log.
  const ckpts = fs.readdirSync(path.join(dir, 'ckpt')).filter((n) => n.startsWith('step_')).sort();
  assert.deepEqual(ckpts, ['step_3', 'step_4']);
  for (const c of ckpts) assert.equal((loadCheckpoint(path.join(dir, 'ckpt', c)).trainer.identity as { seed: number }).seed, 9);
  const steps = fs.readFileSync(path.join(dir, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; step: number }).filter((x) => x.type === 'train').map((x) => x.step);
  assert.deepEqual(steps, [1, 2, 3, 4]);
  assert.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith('.')), [], 'nothing left aside');
});

test('case 10: an output folder that is a file is a clear error', async () => {
  const file = path.join(tmp, 'a-file');
  fs.writeFileSync(file, 'x');
  await assert.rejects(run(file), /a-file is a file, not a folder/);
});

test('case 3: a checkpoint with one value changed (same size) is detected; resume falls back to the previous one and is exact', async () => {
  const dir = path.join(tmp, 'flip');
  await run(dir, { stopAtStep: 2 });
  const model = path.join(dir, 'ckpt', 'step_2', 'model.safetensors');
  const bytes = fs.readFileSync(model);
  bytes[bytes.length - 3] ^= 0x40; // one float's exponent bit: the same size, a huge weight
  fs.writeFileSync(model, bytes);
  assert.throws(() => loadCheckpoint(path.join(dir, 'ckpt', 'step_2')), /model\.safetensors: SHA-256 \w+\.\.\. differs from \w+\.\.\. recorded in trainer\.json/);
  const r = await run(dir, { resume: true });
  assert.ok(r.messages.some((m) => /checkpoint fallback: .*step_2 is damaged .*SHA-256.*resuming from .*step_1 \(step 1\)/.test(m)), r.messages.join('\n'));
  // Resumed from step 1: steps 2..4 again, identical to the uninterrupted run.
  assert.deepEqual(r.losses.map((l) => l.loss), full.losses.slice(1).map((l) => l.loss));
  for (const [k, v] of full.params) assert.deepEqual(r.params.get(k)!.data, v.data, k);
});

test('case 3: an edited step in trainer.json is detected', async () => {
  const dir = path.join(tmp, 'edit');
  await run(dir, { stopAtStep: 2 });
  const file = path.join(dir, 'ckpt', 'step_2', 'trainer.json');
  fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('"step": 2,', '"step": 3,'));
  assert.throws(() => loadCheckpoint(path.join(dir, 'ckpt', 'step_2')), /trainer\.json: content does not match its checksum/);
  // Both damaged: no intact checkpoint, the error names each.
  const other = path.join(dir, 'ckpt', 'step_1', 'trainer.json');
  fs.writeFileSync(other, fs.readFileSync(other, 'utf8').replace('"step": 1,', '"step": 0,'));
  await assert.rejects(run(dir, { resume: true }), /no intact checkpoint in .*step_2 is damaged .*step_1 is damaged/);
});

test('case 3: resuming with another lr, seed or step count is refused unless allowed', async () => {
  const dir = path.join(tmp, 'identity');
  await run(dir, { stopAtStep: 2 });
  await assert.rejects(run(dir, { resume: true }, { learningRate: 2e-3 }), /cannot resume .*identity: the run was started with different settings \(lr: 0\.001 -> 0\.002, recorded in .*trainer\.json\); pass --allow-changed lr/);
  await assert.rejects(run(dir, { resume: true }, { seed: 4, steps: 5 }), /seed: 3 -> 4; steps: 4 -> 5.*--allow-changed seed,steps/);
  await assert.rejects(run(dir, { resume: true, allowChanged: ['steps'] }, { seed: 4, steps: 5 }), /--allow-changed seed to resume/);
  const r = await run(dir, { resume: true, allowChanged: ['steps'] }, { steps: 5 });
  assert.equal(r.steps, 5);
  assert.ok(r.messages.some((m) => /resuming with changed settings \(allowed\): steps: 4 -> 5/.test(m)));
});
