import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError, pipeline } from '../../src/api/pipeline.js';
import { Uniter } from '../../src/api/uniter.js';
import { convertTorchCheckpoint, exportTorchCheckpoint } from '../../src/interop/convert.js';
import type { ImageRecord, ImageSource } from '../../src/data/types.js';
import { readSafetensors } from '../../src/engine/safetensors.js';
import type { UniterConfig } from '../../src/model/config.js';
import { TINY, randomParams, removeTempDirs, tempDir, writeModelFolder, testRegions } from '../export/model-folders.js';

after(removeTempDirs);

const image = testRegions;

/** An in-memory image store with soft labels (class 2 wins for region 0, class 3 for the others). */
function store(): ImageSource {
  const recs = new Map<string, ImageRecord>();
  for (let s = 0; s < 4; s++) {
    const r = image(3, s);
    const soft = new Float32Array(3 * TINY.img_label_dim);
    for (let k = 0; k < 3; k++) soft[k * TINY.img_label_dim + (k === 0 ? 2 : 3)] = 0.9;
    recs.set(`img${s}.npz`, { ...r, softLabels: soft });
  }
  return { imgDim: TINY.img_dim, labelDim: TINY.img_label_dim, has: (k) => recs.has(k), get: (k) => recs.get(k)!, nbb: (k) => recs.get(k)!.nbb, keys: () => [...recs.keys()] };
}

function folder(head: Parameters<typeof randomParams>[1], extra: Record<string, unknown> = {}, opts: { numAnswers?: number } = {}, cfg: UniterConfig = TINY): string {
  const dir = writeModelFolder(path.join(tempDir(`pipe-${head}-`), 'm'), cfg, randomParams(cfg, head, opts));
  if (Object.keys(extra).length) {
    const file = path.join(dir, 'config.json');
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), ...extra }));
  }
  return dir;
}

test('itm: a probability per pair, the same as Uniter.scoreItm; ids, {features, boxes} and stored regions all work', async () => {
  const dir = folder('pretrain');
  const itm = await pipeline('itm', dir, { threads: 1, images: store(), classNames: ['bg', 'a', 'red cube', 'blue ring'] });
  const ref = Uniter.fromPretrained(dir, { task: 'itm', threads: 1 });
  const im = image(3, 0);
  const [want] = await ref.scoreItm([{ text: [300, 301], image: im }]);
  const one = await itm({ text: [300, 301], image: 'img0.npz' });
  assert.ok(Math.abs(one.probability - want) < 1e-6);
  assert.equal(one.match, one.probability >= 0.5);
  // The same regions as pixel boxes of a 200 x 100 image.
  const boxes = [0, 1, 2].map((k) => [200 * 0.1 * k, 100 * 0.05, 200 * (0.1 * k + 0.2), 100 * 0.5]);
  const viaBoxes = await itm({ text: [300, 301], image: { features: Array.from(im.features), boxes, width: 200, height: 100 } });
  assert.ok(Math.abs(viaBoxes.probability - want) < 1e-5);
  const many = await itm([
    { text: [300, 301], image: im },
    { text: [300, 301], image: 'img1.npz' },
  ]);
  assert.equal(many.length, 2);
  assert.ok(Math.abs(many[0].probability - want) < 1e-6);
  const resolved = await itm.resolveImage('img2.npz');
  assert.deepEqual(resolved.labels, ['red cube', 'blue ring', 'blue ring']);
  assert.equal(resolved.id, 'img2.npz');
});

test('bad inputs are InputErrors naming the field', async () => {
  const itm = await pipeline('itm', folder('pretrain'), { threads: 1, images: store() });
  const err = async (p: Promise<unknown>, field: string, re: RegExp) => {
    await assert.rejects(p, (e: unknown) => e instanceof InputError && e.field === field && re.test(e.message));
  };
  await err(itm({ text: 5 as never, image: 'img0.npz' }), 'text', /expected a string/);
  await err(itm({ text: '  ', image: 'img0.npz' }), 'text', /empty/);
  await err(itm({ text: [300], image: 'nope.jpg' }), 'image', /not a key of the image store.*no detector/);
  await err(itm({ text: [300], image: { features: [1, 2], boxes: [[0, 0, 1, 1]] } }), 'image.features', /1 x 24/);
  await err(itm({ text: [300], image: { features: new Array(24).fill(0), boxes: [[0, 0, 2, 1]] } }), 'image.boxes[0]', /normalised/);
  await err(itm({ text: [300], image: { features: new Array(24).fill(0), boxes: [[5, 0, 1, 1]], width: 10, height: 10 } }), 'image.boxes[0]', /x2 > x1/);
  await err(itm([{ text: [300], image: 'img0.npz' }, { text: [300], image: 42 as never }]), 'inputs[1].image', /expected a path/);
  await err(itm({ text: new Array(80).fill(300), image: 'img0.npz' }), 'input 0', /max_position_embeddings/);
});

test('vqa: top-k answers named by config.json id2label; ve: the named class', async () => {
  const answers = ['yes', 'no', 'red', 'blue', 'two', 'cube'];
  const vqa = await pipeline('vqa', folder('vqa', { id2label: Object.fromEntries(answers.map((a, i) => [String(i), a])) }, { numAnswers: 6 }), { threads: 1, topK: 3 });
  assert.deepEqual(vqa.labels, answers);
  const r = await vqa({ text: [300, 301, 302], image: image(4, 1) });
  assert.equal(r.answers.length, 3);
  const logits = (await vqa.model.answer([{ text: [300, 301, 302], image: image(4, 1) }]))[0];
  const best = logits.indexOf(Math.max(...logits));
  assert.equal(r.answers[0].label, answers[best]);
  assert.ok(Math.abs(r.answers[0].score - 1 / (1 + Math.exp(-logits[best]))) < 1e-6);
  assert.ok(r.answers[0].score >= r.answers[1].score && r.answers[1].score >= r.answers[2].score);
  assert.equal((await vqa({ text: [300], image: image(2, 1), topK: 6 })).answers.length, 6);

  const ve = await pipeline('ve', folder('ve', {}, { numAnswers: 3 }), { threads: 1 });
  const v = await ve({ text: [300, 301], image: image(3, 2) });
  assert.ok(['contradiction', 'entailment', 'neutral'].includes(v.label));
  assert.equal(v.scores.length, 3);
  assert.ok(Math.abs(v.scores.reduce((a, s) => a + s.score, 0) - 1) < 1e-6);
  assert.equal(v.label, v.scores.reduce((a, b) => (b.score > a.score ? b : a)).label);

  await assert.rejects(pipeline('vqa', folder('vqa', { id2label: ['a', 'b'] }, { numAnswers: 6 }), { threads: 1 }), /names 2 answers, the head has 6/);
});

test('nlvr2: true/false for a pair of images; refexp: the referred box; retrieval: a ranked gallery both ways', async () => {
  const nlvr2 = await pipeline('nlvr2', folder('nlvr2_paired'), { threads: 1 });
  const n = await nlvr2({ text: [300, 301], images: [image(3, 1), image(2, 5)] });
  assert.equal(typeof n.label, 'boolean');
  assert.equal(n.label, n.probability >= 0.5);
  const logits = (await nlvr2.model.answer([{ text: [300, 301], images: [image(3, 1), image(2, 5)] }]))[0];
  assert.ok(Math.abs(n.probability - Math.exp(logits[1]) / (Math.exp(logits[0]) + Math.exp(logits[1]))) < 1e-6);

  const re = await pipeline('refexp', folder('re_mlp1'), { threads: 1 });
  const r = await re({ text: [300], image: image(4, 3) });
  const scores = (await re.model.refexp([{ text: [300], image: image(4, 3) }]))[0];
  assert.equal(r.index, scores.indexOf(Math.max(...scores)));
  assert.equal(r.scores.length, 4);
  assert.deepEqual(r.box, Array.from(image(4, 3).normBb.subarray(r.index * 6, r.index * 6 + 4)));

  // A pre-trained model ranks with its ITM head; a retrieval model with rank_output.
  const byItm = await pipeline('retrieval', folder('pretrain'), { threads: 1, images: store() });
  const gallery = ['img0.npz', 'img1.npz', 'img2.npz', 'img3.npz'];
  const g = await byItm({ text: [300, 301], images: gallery });
  assert.equal(g.scoredBy, 'itm_output');
  assert.deepEqual([...g.ranking.map((x) => x.index)].sort(), [0, 1, 2, 3]);
  for (const x of g.ranking) {
    assert.equal(x.id, gallery[x.index]);
    const single = await byItm.model.scoreItm([{ text: [300, 301], image: store().get(gallery[x.index]) }]);
    assert.ok(Math.abs(single[0] - x.score) < 1e-5);
  }
  assert.ok(g.ranking[0].score >= g.ranking[3].score);
  const byRank = await pipeline('retrieval', folder('retrieval'), { threads: 1, images: store() });
  const t = await byRank({ image: 'img1.npz', texts: [[302, 303], [300, 301], [310]] });
  assert.equal(t.scoredBy, 'rank_output');
  assert.equal(t.ranking.length, 3);
  const want = await byRank.model.rank([{ text: [302, 303], image: store().get('img1.npz') }]);
  assert.ok(Math.abs(t.ranking.find((x) => x.index === 0)!.score - want[0]) < 1e-5);
});

test('align() returns the plan and attention with the regions\' boxes and names', async () => {
  const itm = await pipeline('itm', folder('pretrain'), { threads: 1, images: store(), classNames: ['bg', 'a', 'red cube', 'blue ring'] });
  const a = await itm.align({ text: [300, 301], image: 'img0.npz' });
  assert.equal(a.tokens.length, 4);
  assert.equal(a.plan.length, 4);
  assert.equal(a.plan[0].length, 3);
  assert.deepEqual(a.boxLabels, ['red cube', 'blue ring', 'blue ring']);
  assert.equal(a.boxes.length, 3);
  await assert.rejects(itm.align({ text: [300], image: 'missing' }), InputError);
});

test('photos go through the detector (frcnn-tiny, 256-wide features, decoded pixels)', async () => {
  const root = tempDir('pipe-det-');
  const det = path.join(root, 'det');
  fs.mkdirSync(det);
  const fixture = 'test/fixtures/detector/frcnn-tiny';
  fs.copyFileSync(path.join(fixture, 'config.json'), path.join(det, 'config.json'));
  fs.copyFileSync(path.join(fixture, 'weights.safetensors'), path.join(det, 'model.safetensors'));
  const cfg = { ...TINY, img_dim: 256 };
  const itm = await pipeline('itm', folder('pretrain', {}, {}, cfg), { threads: 1, detector: det });
  const rgb = readSafetensors(path.join(fixture, 'inputs.safetensors')).tensors.get('img0/rgb')!;
  const px = { height: rgb.shape[0], width: rgb.shape[1], data: rgb.data as Uint8Array };
  const resolved = await itm.resolveImage(px);
  assert.ok(resolved.regions.nbb >= 1);
  assert.equal(resolved.width, px.width);
  assert.equal(resolved.labels.length, resolved.regions.nbb);
  const r = await itm({ text: [300, 301], image: px });
  const [want] = await itm.model.scoreItm([{ text: [300, 301], image: resolved.regions }]);
  assert.ok(Math.abs(r.probability - want) < 1e-6);
  // The same picture as a file path and as encoded bytes (decoded by sharp) gives the same score.
  const png = path.join(fixture, 'images/img0.png');
  assert.equal((await itm({ text: [300, 301], image: png })).probability, r.probability);
  assert.equal((await itm({ text: [300, 301], image: fs.readFileSync(png) })).probability, r.probability);
  await assert.rejects(itm({ text: [300], image: { width: 2, height: 2, data: new Uint8Array(5) } }), (e: unknown) => e instanceof InputError && e.field === 'image.data');
  // A detector whose features do not fit the model's img_dim is refused with both widths.
  const narrow = await pipeline('itm', folder('pretrain'), { threads: 1, detector: det });
  await assert.rejects(narrow({ text: [300], image: px }), /detector's features are 256 wide, the model's img_dim is 24/);
});

test('convert --ans2label: an official checkpoint and its answer vocabulary become a folder whose pipeline answers in words', async () => {
  const dir = folder('vqa', {}, { numAnswers: 4 });
  const root = tempDir('pipe-convert-');
  const pt = path.join(root, 'vqa.pt');
  exportTorchCheckpoint(dir, pt);
  const a2l = path.join(root, 'ans2label.json');
  fs.writeFileSync(a2l, JSON.stringify({ no: 1, yes: 0, two: 3, red: 2 }));
  const out = path.join(root, 'converted');
  convertTorchCheckpoint(pt, out, { configFile: path.join(dir, 'config.json'), ans2label: a2l });
  const vqa = await pipeline('vqa', out, { threads: 1 });
  assert.deepEqual(vqa.labels, ['yes', 'no', 'red', 'two']);
  fs.writeFileSync(a2l, JSON.stringify({ no: 1, yes: 0 }));
  assert.throws(() => convertTorchCheckpoint(pt, path.join(root, 'bad'), { configFile: path.join(dir, 'config.json'), ans2label: a2l }), /names 2 answers, the VQA head .* has 4/);
});
