import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Uniter } from '../../src/api/uniter.js';
import { collateInputs } from '../../src/api/inputs.js';
import { collateRows } from '../../src/data/collate.js';
import { defaultTokenizer } from '../../src/data/tokenizer.js';
import { positionFeatures } from '../../src/data/types.js';
import type { HostTensor } from '../../src/engine/host.js';
import { toNumbers } from '../../src/engine/host.js';
import { writeSafetensors } from '../../src/engine/safetensors.js';
import { convertTorchCheckpoint, exportTorchCheckpoint } from '../../src/interop/convert.js';
import { UniterRunner } from '../../src/model/runner.js';
import { saveCheckpoint } from '../../src/pretrain/checkpoint.js';
import { sampleBatch } from '../../src/export/sample.js';
import { TINY, randomParams, removeTempDirs, tempDir, writeModelFolder, testRegions } from '../export/model-folders.js';

after(removeTempDirs);

const tok = defaultTokenizer();

const image = testRegions;

function sameValues(a: HostTensor, b: HostTensor, tol = 0): void {
  assert.deepEqual(a.shape, b.shape);
  const x = toNumbers(a);
  const y = toNumbers(b);
  x.forEach((v, i) => assert.ok(Math.abs(v - y[i]) <= tol, `element ${i}: ${v} vs ${y[i]}`));
}

test('a model folder round-trips through fromPretrained, also via a PyTorch checkpoint and uniter convert', async () => {
  const root = tempDir('api-roundtrip-');
  const params = randomParams(TINY, 'vqa', { numAnswers: 6 });
  const dir = writeModelFolder(path.join(root, 'vqa'), TINY, params);
  const model = Uniter.fromPretrained(dir, { threads: 1 });
  assert.equal(model.task, 'vqa');
  assert.equal(model.numAnswers, 6);
  assert.deepEqual(model.config, TINY);
  assert.deepEqual(model.loadReport.unexpected, []);

  const batch = sampleBatch('vqa', TINY, { examples: 3, words: [2, 9], regions: [1, 7] }, 11);
  const reference = await new UniterRunner(TINY, params, 1).run('vqa', batch, { training: false, grads: false, inference: true, numAnswers: 6 });
  const got = await model.forward(batch);
  sameValues(got.get('answer_scores')!, reference.get('answer_scores')!);
  const rows = await model.answer(batch);
  assert.equal(rows.length, 3);
  assert.equal(rows[0].length, 6);
  assert.deepEqual(await model.predict(batch), rows.map((r) => r.indexOf(Math.max(...r))));

  // Folder -> torch.save -> uniter convert -> folder: same numbers.
  const pt = path.join(root, 'vqa.pt');
  exportTorchCheckpoint(dir, pt);
  const converted = path.join(root, 'converted');
  convertTorchCheckpoint(pt, converted, { configFile: path.join(dir, 'config.json') });
  const again = Uniter.fromPretrained(converted, { threads: 1 });
  sameValues((await again.scores(batch)), reference.get('answer_scores')!);
});

test('a training checkpoint directory loads with the config its trainer.json records', async () => {
  const root = tempDir('api-ckpt-');
  const params = randomParams(TINY, 'pretrain');
  const out = path.join(root, 'run');
  const dir = saveCheckpoint(out, {
    step: 3,
    params: new Map([...params].map(([k, v]) => [k, v.data as Float32Array])),
    shapes: new Map([...params].map(([k, v]) => [k, v.shape])),
    config: { model: TINY, run: null },
  });
  const model = Uniter.fromPretrained(dir, { threads: 1 });
  assert.equal(model.task, 'itm');
  const batch = sampleBatch('itm', TINY, { examples: 2, words: [3, 6], regions: [2, 5] }, 3);
  const reference = await new UniterRunner(TINY, params, 1).run('itm', batch, { training: false, grads: false, inference: true });
  sameValues(await model.scores(batch), reference.get('itm_scores')!);
  assert.throws(() => Uniter.fromPretrained(out), /has no config\.json \(a training output directory: pass one of its checkpoints, .*ckpt\/step_N\)/);
});

test('the task comes from the weights unless asked for; families pick the variant the weights hold', () => {
  const root = tempDir('api-tasks-');
  const both = new Map([...randomParams(TINY, 'pretrain'), ...randomParams(TINY, 'retrieval')]);
  const ret = writeModelFolder(path.join(root, 'ret'), TINY, both);
  const r = Uniter.fromPretrained(ret);
  assert.equal(r.task, 'retrieval');
  assert.deepEqual(r.heads, ['retrieval', 'itm']);
  assert.equal(Uniter.fromPretrained(ret, { task: 'itm' }).task, 'itm');

  const cases: Array<[string, Parameters<typeof randomParams>[1], string | undefined, string]> = [
    ['attn', 'nlvr2_paired_attn', 'nlvr2', 'nlvr2_paired_attn'],
    ['paired', 'nlvr2_paired', 'nlvr2', 'nlvr2_paired'],
    ['triplet', 'nlvr2_triplet', undefined, 'nlvr2_triplet'],
    ['mlp1', 're_mlp1', 'refexp', 're_mlp1'],
    ['mlp2', 're_mlp2', 'refexp', 're_mlp2'],
    ['ve', 've', undefined, 've'],
  ];
  for (const [name, head, request, want] of cases) {
    const dir = writeModelFolder(path.join(root, name), TINY, randomParams(TINY, head));
    assert.equal(Uniter.fromPretrained(dir, { task: request as never }).task, want, name);
  }
  // paired and paired-attn share nlvr2_output's shape: asking for the other variant is refused.
  assert.throws(() => Uniter.fromPretrained(path.join(root, 'attn'), { task: 'nlvr2_paired' }), /holds no 'nlvr2_paired' head; heads found: nlvr2_paired_attn \(attn1\.in_proj_weight\)/);
  assert.throws(() => Uniter.fromPretrained(path.join(root, 'mlp1'), { task: 'vqa' }), /holds no VQA head \(vqa_output\.3\.weight\) for task 'vqa'; heads found: re_mlp1/);
  assert.throws(() => Uniter.fromPretrained(path.join(root, 'mlp1'), { task: 'mlm' as never }), /unknown task 'mlm'/);
});

test('plain inputs are collated as the official collates do', async () => {
  const a = image(3, 1);
  const b = image(5, 2);
  // Strings need the bundled vocabulary's ids to fit the model's table.
  const vqa = collateInputs('vqa', [{ text: [200, 201, 202], image: a }, { text: 'a cube', image: b }], tok, { ...TINY, vocab_size: tok.vocabSize });
  const ids = tok.encode('a cube');
  const manual = collateRows(
    [
      { inputIds: [tok.cls, 200, 201, 202, tok.sep], imgFeat: a.features, imgPosFeat: positionFeatures(a.normBb, 3), nbb: 3 },
      { inputIds: [tok.cls, ...ids, tok.sep], imgFeat: b.features, imgPosFeat: positionFeatures(b.normBb, 5), nbb: 5 },
    ],
    TINY.img_dim,
  ).batch;
  assert.deepEqual([...vqa.keys()], [...manual.keys()]);
  for (const [k, t] of manual) sameValues(vqa.get(k)!, t);

  const paired = collateInputs('nlvr2_paired_attn', [{ text: [300, 301], images: [a, b] }], tok, TINY);
  assert.deepEqual(paired.get('input_ids')!.shape, [2, 4]);
  assert.deepEqual(toNumbers(paired.get('img_type_ids')!), [1, 1, 1, 0, 0, 2, 2, 2, 2, 2]);
  const triplet = collateInputs('nlvr2_triplet', [{ text: [300, 301], images: [a, b] }], tok, TINY);
  assert.deepEqual(toNumbers(triplet.get('img_type_ids')!), [1, 1, 1, 2, 2, 2, 2, 2]);
  const re = collateInputs('re_mlp1', [{ text: [5, 6], image: a }, { text: [7], image: b }], tok, TINY);
  assert.deepEqual(toNumbers(re.get('obj_masks')!), [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]);
  assert.deepEqual(toNumbers(re.get('txt_lens')!), [4, 3]);

  // refexp() keeps one score per real region, and predict() is its arg-max.
  const root = tempDir('api-re-');
  const model = Uniter.fromPretrained(writeModelFolder(path.join(root, 're'), TINY, randomParams(TINY, 're_mlp2')), { threads: 1 });
  const inputs = [{ text: [5, 6], image: a }, { text: [7], image: b }];
  const scores = await model.refexp(inputs);
  assert.deepEqual(scores.map((s) => s.length), [3, 5]);
  const full = toNumbers(await model.scores(inputs));
  assert.deepEqual(scores[0], full.slice(0, 3));
  assert.ok(full.slice(3, 5).every((v) => v === -1e4), 'padded regions score -1e4');
  assert.deepEqual(await model.predict(inputs), scores.map((s) => s.indexOf(Math.max(...s))));
});

test('bad folders and bad inputs give errors that name the file, tensor or field', async () => {
  const root = tempDir('api-bad-');
  const params = randomParams(TINY, 'vqa', { numAnswers: 4 });
  const dir = writeModelFolder(path.join(root, 'ok'), TINY, params);
  assert.throws(() => Uniter.fromPretrained(path.join(root, 'missing')), /model folder '.*missing' does not exist/);
  assert.throws(() => Uniter.fromPretrained(path.join(dir, 'config.json')), /is a file; expected a model folder with config\.json and model\.safetensors.*uniter convert/);

  const noConfig = path.join(root, 'no-config');
  fs.mkdirSync(noConfig);
  fs.copyFileSync(path.join(dir, 'model.safetensors'), path.join(noConfig, 'model.safetensors'));
  assert.throws(() => Uniter.fromPretrained(noConfig), /has no config\.json/);
  const noWeights = path.join(root, 'no-weights');
  fs.mkdirSync(noWeights);
  fs.copyFileSync(path.join(dir, 'config.json'), path.join(noWeights, 'config.json'));
  assert.throws(() => Uniter.fromPretrained(noWeights), /has no model\.safetensors/);

  const withConfig = (name: string, cfg: object) => {
    const d = path.join(root, name);
    fs.mkdirSync(d);
    fs.copyFileSync(path.join(dir, 'model.safetensors'), path.join(d, 'model.safetensors'));
    fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
    return d;
  };
  assert.throws(
    () => Uniter.fromPretrained(withConfig('wide', { ...TINY, hidden_size: 64, num_attention_heads: 2 })),
    /model\.safetensors: tensor '.*' has shape \[(\d+,)?32\], the model needs \[(\d+,)?64\] \(the model's shapes come from .*wide\/config\.json/,
  );
  assert.throws(() => Uniter.fromPretrained(withConfig('deep', { ...TINY, num_hidden_layers: 2 })), /lacks \d+ tensor\(s\) that task 'vqa' needs: uniter\.encoder\.layer\.1\./);
  const twoLayers = writeModelFolder(path.join(root, 'two'), { ...TINY, num_hidden_layers: 2 }, randomParams({ ...TINY, num_hidden_layers: 2 }, 'vqa', { numAnswers: 4 }));
  fs.copyFileSync(path.join(dir, 'config.json'), path.join(twoLayers, 'config.json'));
  assert.throws(() => Uniter.fromPretrained(twoLayers), /holds \d+ model tensor\(s\) that .*config\.json does not describe \(e\.g\. 'uniter\.encoder\.layer\.1\..*num_hidden_layers is 1\)/);
  const badJson = withConfig('bad-json', {});
  fs.writeFileSync(path.join(badJson, 'config.json'), '{ not json');
  assert.throws(() => Uniter.fromPretrained(badJson), /config\.json: model config is not valid JSON/);
  const headless = path.join(root, 'headless');
  fs.mkdirSync(headless);
  fs.copyFileSync(path.join(dir, 'config.json'), path.join(headless, 'config.json'));
  writeSafetensors(path.join(headless, 'model.safetensors'), new Map([...params].filter(([k]) => k.startsWith('uniter.'))), {});
  assert.throws(() => Uniter.fromPretrained(headless), /holds no task head .*; pass a task/);

  const model = Uniter.fromPretrained(dir, { threads: 1 });
  const img = image(2, 0);
  await assert.rejects(model.scoreItm([{ text: [5], image: img }]), /scoreItm\(\) needs a model loaded for itm; this one runs 'vqa'/);
  await assert.rejects(model.refexp([{ text: [5], image: img }]), /refexp\(\) needs a model loaded for re_mlp1 \/ re_mlp2/);
  const bad: Array<[unknown, RegExp]> = [
    [[], /expected a non-empty array of inputs/],
    [[{ text: [5], image: { ...img, features: new Float32Array(3) } }], /input 0: image: field 'features' must be a Float32Array of 2 x 24 values \(img_dim 24\), got 3/],
    [[{ text: [5], image: img }, { text: [5], image: { ...img, normBb: new Float32Array(5) } }], /input 1: image: field 'normBb' must be a Float32Array of 2 x 6 box values/],
    [[{ text: [5], image: { ...img, nbb: -1 } }], /input 0: image: field 'nbb' must be a region count/],
    [[{ text: [600], image: img }], /input 0: token id 600 is outside the model's vocabulary \(vocab_size 512\)/],
    [[{ text: 'a cube', image: img }], /input 0: token id \d+ is outside the model's vocabulary/],
    [[{ text: new Array(70).fill(5), image: img }], /input 0: text has 72 tokens with \[CLS\]\/\[SEP\], more than the model's max_position_embeddings 64/],
    [[{ text: 5, image: img }], /input 0: field 'text' must be a string or an array of token ids/],
    [[{ text: [5] }], /input 0: image: missing/],
  ];
  for (const [inputs, pattern] of bad) assert.throws(() => model.collate(inputs as never), pattern);
  assert.throws(() => collateInputs('nlvr2_paired', [{ text: [5], image: img }], tok, TINY), /input 0: task nlvr2_paired needs field 'images' with 2 images/);
  assert.throws(() => collateInputs('vcr', [{ text: [5], image: img }], tok, TINY), /vcr: build VCR batches with vcrCollate/);
});
