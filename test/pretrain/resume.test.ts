import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateWorld } from '../../src/data/world.js';
import { PRESETS, type UniterConfig } from '../../src/model/config.js';
import { pretrain, type PretrainSource, type TrainSettings } from '../../src/pretrain/trainer.js';

const MODEL: UniterConfig = { ...PRESETS.tiny, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, vocab_size: 28996 };

function setup(): { train: PretrainSource[]; val: PretrainSource[]; settings: TrainSettings } {
  const world = generateWorld({ preset: 'tiny', numImages: 24 });
  const tasks: PretrainSource['tasks'] = ['itm', 'mlm', 'mrfr', 'mrckl'];
  const settings: TrainSettings = {
    trainBatchTokens: 400, valBatchTokens: 2000, accumulation: 2, learningRate: 1e-3, schedule: 'linear', warmupSteps: 2, steps: 8,
    validEvery: 100, saveEvery: 100, keepCheckpoints: 2, logEvery: 1, gradNorm: 5, weightDecay: 0.01, betas: [0.9, 0.98], seed: 3,
    maxTxtLen: 60, mrmProb: 0.15, itmNegProb: 0.5, otLambda: 0.1, jointMasking: false, valBatches: 1,
  };
  return {
    train: [{ name: 'w', txt: world.textDb('pretrain_world_train'), img: world.images, tasks, mix_ratio: [2, 2, 1, 1] }],
    val: [{ name: 'w', txt: world.textDb('pretrain_world_val'), img: world.images, tasks }],
    settings,
  };
}

test('a run stopped and resumed produces the same losses as an uninterrupted run', async () => {
  const a = setup();
  const dirA = fs.mkdtempSync(path.join(os.tmpdir(), 'pt-a-'));
  const full = await pretrain({ modelConfig: MODEL, settings: a.settings, train: a.train, val: a.val, outDir: dirA, quiet: true });
  assert.equal(full.losses.length, 8);

  const b = setup();
  const dirB = fs.mkdtempSync(path.join(os.tmpdir(), 'pt-b-'));
  const first = await pretrain({ modelConfig: MODEL, settings: b.settings, train: b.train, val: b.val, outDir: dirB, quiet: true, stopAtStep: 3 });
  assert.equal(first.steps, 3);
  const c = setup(); // a fresh process would rebuild everything from scratch, so do the same here
  const second = await pretrain({ modelConfig: MODEL, settings: c.settings, train: c.train, val: c.val, outDir: dirB, quiet: true, resume: true });
  assert.equal(second.steps, 8);
  const resumed = [...first.losses, ...second.losses];
  assert.deepEqual(resumed.map((l) => l.task), full.losses.map((l) => l.task));
  assert.deepEqual(resumed.map((l) => l.loss), full.losses.map((l) => l.loss));
  // Final parameters identical too.
  for (const [k, v] of full.params) assert.deepEqual(second.params.get(k)!.data, v.data, k);
  // The log of the resumed run has each step once.
  const train = fs.readFileSync(path.join(dirB, 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((r) => r.type === 'train');
  assert.deepEqual(train.map((r) => r.step), [1, 2, 3, 4, 5, 6, 7, 8]);
  // Clipping on (grad_norm 5): the norm is logged, with where the step's time went.
  for (const r of train) {
    assert.ok(Number.isFinite(r.grad_norm) && r.grad_norm > 0, `step ${r.step} grad_norm ${r.grad_norm}`);
    assert.ok(r.time.session > 0 && r.time.optimizer >= 0 && r.time.step >= r.time.session, JSON.stringify(r.time));
  }
});

test('learning-rate multipliers by name: a x0 group keeps its weights while the rest trains', async () => {
  const s = setup();
  const settings: TrainSettings = { ...s.settings, steps: 2, lrMultipliers: { img_linear: 0 } };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pt-lrm-'));
  const fresh = await pretrain({ modelConfig: MODEL, settings: { ...settings, steps: 1 }, train: s.train, val: s.val, outDir: fs.mkdtempSync(path.join(os.tmpdir(), 'pt-lrm0-')), quiet: true, stopAtStep: 0 });
  const run = await pretrain({ modelConfig: MODEL, settings, train: s.train, val: s.val, outDir: dir, quiet: true });
  for (const name of ['uniter.img_embeddings.img_linear.weight', 'uniter.img_embeddings.img_linear.bias']) {
    assert.deepEqual(run.params.get(name)!.data, fresh.params.get(name)!.data, `${name} must not move at x0`);
  }
  assert.notDeepEqual(run.params.get('uniter.img_embeddings.pos_linear.weight')!.data, fresh.params.get('uniter.img_embeddings.pos_linear.weight')!.data);
});
