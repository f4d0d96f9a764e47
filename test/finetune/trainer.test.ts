/**
 * The shared fine-tuning trainer: exact resume, the head learning-rate multiplier, initial
 * weights with the official task-time surgery, checkpoint discovery, and clear errors on bad input.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runEvaluate } from '../../src/cli/evaluate.js';
import { runFinetune } from '../../src/cli/finetune.js';
import type { HostTensor } from '../../src/engine/host.js';
import { WorldTextDb } from '../../src/data/world.js';
import type { TextRecord } from '../../src/data/types.js';
import { allSpecs, initParams, TIES } from '../../src/model/params.js';
import { UniterRunner } from '../../src/model/runner.js';
import { saveCheckpoint, saveModelFolder } from '../../src/pretrain/checkpoint.js';
import { defaultSettings, parseFinetuneConfig } from '../../src/finetune/defaults.js';
import { checkAns2Label, getTask, taskDataFromWorld, worldStores, type TaskData } from '../../src/finetune/task-registry.js';
import { configNextToWeights, finetune, initialFinetuneParams, resolveWeightsPath } from '../../src/finetune/trainer.js';
import { VCR_EXTRA_TOKENS } from '../../src/finetune/vcr.js';
import { makeSandbox, readJsonl, silent, TINY_MODEL, type Sandbox } from './fixtures.js';

let box: Sandbox;
/** A "pre-trained" tiny model folder (pre-training heads, 2 token types). */
let pretrained: string;
let pretrainedParams: Map<string, HostTensor>;

before(() => {
  box = makeSandbox('uniter-ft-trainer-');
  pretrainedParams = initParams(allSpecs(TINY_MODEL, 'pretrain').filter((s) => !TIES[s.name]), 0.02, 7);
  pretrained = path.join(box.dir, 'pretrained');
  saveModelFolder(pretrained, { ...TINY_MODEL }, asArrays(pretrainedParams), shapesOf(pretrainedParams), { ties: TIES });
});
after(() => box.cleanup());

function asArrays(p: Map<string, HostTensor>): Map<string, Float32Array> {
  return new Map([...p].map(([k, v]) => [k, v.data as Float32Array]));
}
function shapesOf(p: Map<string, HostTensor>): Map<string, number[]> {
  return new Map([...p].map(([k, v]) => [k, v.shape]));
}
function row(t: HostTensor, r: number): number[] {
  const h = t.shape[1];
  return Array.from((t.data as Float32Array).subarray(r * h, (r + 1) * h));
}

test('resume after an interruption continues with identical losses and weights', async () => {
  const cfg = box.config('resume', { num_train_steps: 6, valid_steps: 3, warmup_steps: 2, train_batch_size: 768, val_batch_size: 2048, dropout: 0.1 });
  const whole = path.join(box.dir, 'resume-whole');
  const split = path.join(box.dir, 'resume-split');
  const args = (out: string, ...more: string[]) => ['nlvr2', '--config', cfg, '--data', box.worldDir, '--out', out, '--quiet', ...more];
  const a = await runFinetune(args(whole), silent);
  const first = await runFinetune(args(split, '--stop-after', '4'), silent);
  assert.equal(first.result.steps, 4);
  await assert.rejects(runFinetune(args(split), silent), /already holds a fine-tuning run.*--resume/);
  const b = await runFinetune(args(split, '--resume'), silent);
  assert.equal(b.result.resumedFrom, 4);
  assert.deepEqual(b.result.losses.map((l) => l.step), [5, 6]);
  assert.deepEqual(b.result.losses, a.result.losses.slice(4));
  const losses = (dir: string) => readJsonl(path.join(dir, 'log.jsonl')).filter((r) => r.type === 'train').map((r) => [r.step, r.loss]);
  assert.deepEqual(losses(split), losses(whole));
  assert.deepEqual(b.result.validation, a.result.validation);
  const weights = (dir: string) => fs.readFileSync(path.join(dir, 'ckpt', 'step_6', 'model.safetensors'));
  assert.ok(weights(split).equals(weights(whole)), 'final weights are byte-identical');
  const bestOf = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'best.json'), 'utf8')) as unknown;
  assert.deepEqual(bestOf(split), bestOf(whole));
});

test('the head trains at lr x lr_mul (VQA x10), the body at lr; loss goes down', async () => {
  const task = getTask('vqa');
  const data = taskDataFromWorld(worldStores(box.world), 'vqa');
  const lr = 1e-3;
  const settings = { ...defaultSettings(task, 12), learningRate: lr, warmupSteps: 0, validEvery: 12, saveEvery: 0, dropout: 0, weightDecay: 0, gradNorm: -1, trainBatchTokens: 1024, valBatchSize: 4096 };
  const plan = task.plan(TINY_MODEL, {}, data, 1);
  const { params } = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, 1, null);
  const before = new Map([...params].map(([k, v]) => [k, Float32Array.from(v.data as Float32Array)]));
  const deltas: Record<string, number> = {};
  let stepRate = 0;
  const r = await finetune({
    job: task.job({ data, settings, options: {}, plan }),
    modelConfig: plan.cfg,
    params,
    settings,
    outDir: path.join(box.dir, 'lrmul'),
    quiet: true,
    onStep: ({ step, lr: stepLr }) => {
      if (step !== 1) return;
      stepRate = stepLr;
      // Adam's first update moves every element with a gradient by about lr x multiplier.
      for (const name of ['vqa_output.3.weight', 'uniter.pooler.dense.weight']) {
        const now = params.get(name)!.data as Float32Array;
        const was = before.get(name)!;
        let max = 0;
        for (let i = 0; i < now.length; i++) max = Math.max(max, Math.abs(now[i] - was[i]));
        deltas[name] = max;
      }
    },
  });
  assert.ok(stepRate > 0 && stepRate <= lr);
  assert.ok(Math.abs(deltas['vqa_output.3.weight'] / (10 * stepRate) - 1) < 0.05, `head moved ${deltas['vqa_output.3.weight']} at lr ${stepRate}`);
  assert.ok(Math.abs(deltas['uniter.pooler.dense.weight'] / stepRate - 1) < 0.05, `body moved ${deltas['uniter.pooler.dense.weight']} at lr ${stepRate}`);
  const first = r.losses[0].loss;
  const last = r.losses.slice(-3).reduce((s, l) => s + l.loss, 0) / 3;
  assert.ok(last < first * 0.8, `loss ${first} -> ${last}`);
  // grad_norm -1: no clipping, so no global norm is computed or logged; every step logs where its time went.
  const logged = readJsonl(path.join(box.dir, 'lrmul', 'log.jsonl')).filter((l) => l.type === 'train');
  assert.ok(logged.length > 0);
  for (const l of logged) {
    assert.equal('grad_norm' in l, false);
    const time = l.time as Record<string, number>;
    assert.deepEqual(Object.keys(time).sort(), ['data', 'feeds', 'grads', 'optimizer', 'outputs', 'session', 'step']);
    assert.ok(Object.values(time).every((x) => Number.isFinite(x) && x >= 0), JSON.stringify(time));
    assert.ok(time.session > 0 && time.step >= time.data + time.feeds + time.session + time.outputs + time.grads + time.optimizer - 0.01, JSON.stringify(time));
  }
});

test('NLVR2 surgery: the pre-trained 2-row token types grow to 3 (row 2 = row 1); load report names what is missing', () => {
  const task = getTask('nlvr2');
  const data = taskDataFromWorld(worldStores(box.world), 'nlvr2');
  const plan = task.plan(TINY_MODEL, task.optionDefaults, data, 1);
  assert.equal(plan.head, 'nlvr2_paired_attn');
  const { params, report } = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, 1, pretrained, plan.hooks);
  const types = params.get('uniter.embeddings.token_type_embeddings.weight')!;
  const src = pretrainedParams.get('uniter.embeddings.token_type_embeddings.weight')!;
  assert.deepEqual(types.shape, [3, TINY_MODEL.hidden_size]);
  assert.deepEqual(row(types, 0), row(src, 0));
  assert.deepEqual(row(types, 1), row(src, 1));
  assert.deepEqual(row(types, 2), row(src, 1));
  assert.ok(report);
  assert.ok(report.missing.includes('attn1.in_proj_weight') && report.missing.includes('nlvr2_output.weight'));
  assert.ok(report.unexpected.includes('itm_output.weight'));
  assert.ok(report.loaded.includes('uniter.encoder.layer.0.attention.self.query.weight'));
});

test('VCR surgery: 4 token types (rows 2, 3 = row 0) and 81 new word rows; a grown checkpoint loads as it is', () => {
  const task = getTask('vcr');
  const data = taskDataFromWorld(worldStores(box.world), 'vcr');
  const plan = task.plan(TINY_MODEL, {}, data, 3);
  assert.equal(plan.cfg.vocab_size, TINY_MODEL.vocab_size + VCR_EXTRA_TOKENS);
  const { params } = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, 3, pretrained, plan.hooks);
  const types = params.get('uniter.embeddings.token_type_embeddings.weight')!;
  const srcTypes = pretrainedParams.get('uniter.embeddings.token_type_embeddings.weight')!;
  assert.deepEqual(types.shape, [4, TINY_MODEL.hidden_size]);
  for (const [r, from] of [[0, 0], [1, 1], [2, 0], [3, 0]]) assert.deepEqual(row(types, r), row(srcTypes, from));
  const words = params.get('uniter.embeddings.word_embeddings.weight')!;
  const srcWords = pretrainedParams.get('uniter.embeddings.word_embeddings.weight')!;
  const H = TINY_MODEL.hidden_size;
  assert.deepEqual(words.shape, [TINY_MODEL.vocab_size + VCR_EXTRA_TOKENS, H]);
  assert.deepEqual(Array.from((words.data as Float32Array).subarray(0, srcWords.data.length)), Array.from(srcWords.data as Float32Array));
  const extra = (words.data as Float32Array).subarray(srcWords.data.length);
  const std = Math.sqrt(extra.reduce((s, v) => s + v * v, 0) / extra.length);
  assert.ok(std > 0.015 && std < 0.025, `new rows ~ N(0, 0.02), std ${std}`);

  // A VCR model folder (grown tables, config says so) is loaded without another growth.
  const vcrDir = path.join(box.dir, 'vcr-model');
  saveModelFolder(vcrDir, { ...plan.cfg }, asArrays(params), shapesOf(params), { ties: TIES });
  const stored = configNextToWeights(vcrDir)!;
  const again = task.plan({ ...TINY_MODEL, ...(stored as object) }, {}, data, 9);
  assert.equal(again.cfg.vocab_size, plan.cfg.vocab_size);
  const reloaded = initialFinetuneParams(again.cfg, again.head, again.headOptions, 9, vcrDir, again.hooks);
  assert.deepEqual(reloaded.report!.missing, []);
  assert.deepEqual(Array.from(reloaded.params.get('uniter.embeddings.word_embeddings.weight')!.data as Float32Array), Array.from(words.data as Float32Array));
});

test('checkpoints are found in model folders, pre-training runs (ckpt/latest) and fine-tuning runs (best/)', async () => {
  assert.equal(resolveWeightsPath(pretrained), pretrained);
  const run = path.join(box.dir, 'runs', 'pretrain-default');
  const dir = saveCheckpoint(run, { step: 5, params: asArrays(pretrainedParams), shapes: shapesOf(pretrainedParams), ties: TIES, config: { model: TINY_MODEL } });
  assert.equal(resolveWeightsPath(run), dir);
  assert.equal((configNextToWeights(dir) as { hidden_size: number }).hidden_size, TINY_MODEL.hidden_size);
  assert.throws(() => resolveWeightsPath(path.join(box.dir, 'nowhere')), /does not exist/);
  fs.mkdirSync(path.join(box.dir, 'empty'));
  assert.throws(() => resolveWeightsPath(path.join(box.dir, 'empty')), /without model\.safetensors/);

  // With no --checkpoint, `uniter finetune` starts from runs/pretrain-default of the working directory.
  const cwd = process.cwd();
  process.chdir(box.dir);
  try {
    const cfg = box.config('default-ckpt', { num_train_steps: 1, valid_steps: 1, train_batch_size: 768, val_batch_size: 2048 });
    const raw = JSON.parse(fs.readFileSync(cfg, 'utf8')) as Record<string, unknown>;
    delete raw.checkpoint;
    delete raw.model_config;
    fs.writeFileSync(cfg, JSON.stringify(raw));
    const r = await runFinetune(['ve', '--config', cfg, '--data', box.worldDir, '--out', path.join(box.dir, 've-from-default'), '--quiet'], silent);
    assert.ok(r.load, 'weights were loaded');
    assert.equal(r.load.source, dir);
    assert.ok(r.load.loaded.includes('uniter.embeddings.word_embeddings.weight'));
  } finally {
    process.chdir(cwd);
  }
});

/** The task's world data with `records` as its train and val splits. */
function dataWith(task: string, records: TextRecord[]): TaskData {
  const base = taskDataFromWorld(worldStores(box.world), task);
  const db = new WorldTextDb(`${task}_bad`, ['world']);
  for (const r of records) db.add(r);
  const split = { ...base.train[0], name: db.name, txt: db };
  return { ...base, train: [split], val: split };
}

test('bad records fail with an error naming the record and field', async () => {
  const vqa = getTask('vqa');
  const img = box.world.imageName('main', box.world.splits.train[0].imageId);
  const settings = { ...defaultSettings(vqa, 2), trainBatchTokens: 4096 };
  const bad = (k: number, target: unknown): TextRecord => ({ id: `q${k}`, input_ids: [1184, 1110, 136], img_fname: img, target });
  const records = Array.from({ length: 8 }, (_, k) => bad(k, { labels: [0], scores: [1] }));
  records[5] = bad(5, { labels: [9999], scores: [1] });
  let data = dataWith('vqa', records);
  let plan = vqa.plan(TINY_MODEL, {}, data, 1);
  const { params } = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, 1, null);
  const runner = new UniterRunner(plan.cfg, params);
  const last = Object.keys(box.world.ans2label).length - 1;
  await assert.rejects(vqa.evaluate(runner, { data, split: 'val', batchSize: 4096, seed: 1, tag: 't' }), new RegExp(`vqa record 'q5': field 'target\\.labels': unknown answer label 9999 \\(expected 0\\.\\.${last}\\)`));

  const nlvr2 = getTask('nlvr2');
  const pair = (k: number, images: string[]): TextRecord => ({ id: `dev-${k}-0-0`, input_ids: [1175, 1132], img_fname: images, target: 1 });
  const pairs = Array.from({ length: 8 }, (_, k) => pair(k, [img, img]));
  pairs[3] = pair(3, [img, 'missing_000000000001.npz']);
  data = dataWith('nlvr2', pairs);
  plan = nlvr2.plan(TINY_MODEL, nlvr2.optionDefaults, data, 1);
  assert.throws(() => nlvr2.job({ data, settings, options: nlvr2.optionDefaults, plan }).train.next(), /nlvr2 record 'dev-3-0-0': field 'img_fname\[1\]': image 'missing_000000000001\.npz' is not in the image source/);
  pairs[3] = pair(3, [img]);
  data = dataWith('nlvr2', pairs);
  assert.throws(() => nlvr2.job({ data, settings, options: nlvr2.optionDefaults, plan }).train.next(), /nlvr2 record 'dev-3-0-0': field 'img_fname\[1\]': missing image name/);
});

test('bad configs, vocabularies and checkpoints are reported clearly', async () => {
  const where = { source: 'cfg.json', baseDir: box.dir };
  assert.throws(() => parseFinetuneConfig({ learning_rat: 1 }, getTask('vqa'), where), /cfg\.json: invalid fine-tuning config for 'vqa':\n {2}- unknown field 'learning_rat'/);
  assert.throws(() => parseFinetuneConfig({ model: 'pairs' }, getTask('nlvr2'), where), /field 'model' must be one of paired, paired-attn, triplet/);
  assert.throws(() => parseFinetuneConfig({ num_train_steps: 2.5, optim: 'sgd' }, getTask('ve'), where), (e: Error) => /'num_train_steps' must be an integer/.test(e.message) && /'optim' must be 'adamw'/.test(e.message));
  assert.throws(() => parseFinetuneConfig({ train_txt_db: 'x.db' }, getTask('ve'), where), /needs both 'train_txt_db\(s\)' and 'train_img_db\(s\)'/);
  assert.throws(() => parseFinetuneConfig({ checkpoint_activations: 'yes' }, getTask('vqa'), where), /field 'checkpoint_activations' must be true or false, got "yes"/);
  assert.equal(parseFinetuneConfig({ checkpoint_activations: true }, getTask('vqa'), where).settings.checkpointActivations, true);
  const ok = parseFinetuneConfig({ num_train_steps: 50 }, getTask('vqa'), where);
  assert.equal(ok.settings.steps, 50);
  assert.equal(ok.settings.warmupSteps, 5);
  assert.equal(ok.settings.lrMultiplier, 10);
  assert.equal(ok.settings.saveEvery, ok.settings.validEvery);
  assert.equal(ok.checkpoint, undefined);
  assert.throws(() => checkAns2Label({ yes: 0, no: 0 }, 'ans2label.json'), /answers 'yes' and 'no' share label 0/);
  assert.throws(() => checkAns2Label({ yes: 0, no: 5 }, 'ans2label.json'), /answer 'no' has label 5, expected an integer in 0\.\.1/);

  // A checkpoint of another hidden size: the tensor and both shapes are named.
  const other = path.join(box.dir, 'other-size');
  const p = initParams(allSpecs({ ...TINY_MODEL, hidden_size: 16, num_attention_heads: 2 }, 'pretrain').filter((s) => !TIES[s.name]), 0.02, 1);
  saveModelFolder(other, { ...TINY_MODEL, hidden_size: 16 }, asArrays(p), shapesOf(p), { ties: TIES });
  assert.throws(() => initialFinetuneParams(TINY_MODEL, 'vqa', { numAnswers: 4 }, 1, other), /other-size: tensor 'uniter\.[^']+' has shape \[(\d+,)?16\], the model needs \[(\d+,)?32\]/);

  // Evaluating a model of another task.
  await assert.rejects(runEvaluate(['nlvr2', '--checkpoint', pretrained, '--data', box.worldDir, '--quiet'], silent), /not an NLVR2 model/);
  await assert.rejects(runEvaluate(['vqa', '--checkpoint', pretrained, '--data', box.worldDir, '--split', 'dev', '--quiet'], silent), /--split must be 'val' or 'test'/);
});
