import { test } from 'node:test';
import assert from 'node:assert/strict';
import { toNumbers } from '../../src/engine/host.js';
import { Rng } from '../../src/util/rng.js';
import { type ImageRecord, type TextRecord, positionFeatures } from '../../src/data/types.js';
import { MemoryImageSource, MemoryTextSource } from '../../src/data/golden-batches.js';
import {
  ItmDataset,
  ItmRankDataset,
  MlmDataset,
  MrcDataset,
  MrfrDataset,
  Nlvr2PairedDataset,
  Nlvr2TripletDataset,
  ReDataset,
  VcrDataset,
  VcrEvalDataset,
  VeDataset,
  VqaDataset,
  sampleNegatives,
} from '../../src/data/datasets.js';
import type { SpecialIds } from '../../src/data/masking.js';

const DIM = 6;
const LABELS = 4;
const IDS: SpecialIds = { cls: 101, sep: 102, mask: 103, vRange: [106, 400] };

function image(rng: Rng, nbb: number): ImageRecord {
  const normBb = new Float32Array(nbb * 6);
  for (let r = 0; r < nbb; r++) {
    const [x1, y1] = [rng.uniform() / 2, rng.uniform() / 2];
    const [w, h] = [rng.uniform() / 2, rng.uniform() / 2];
    normBb.set([x1, y1, x1 + w, y1 + h, w, h], r * 6);
  }
  return {
    nbb,
    features: Float32Array.from({ length: nbb * DIM }, () => rng.int(1, 50) / 8),
    normBb,
    softLabels: Float32Array.from({ length: nbb * LABELS }, () => rng.uniform()),
  };
}

function images(rng: Rng, counts: Record<string, number>): MemoryImageSource {
  return new MemoryImageSource(new Map(Object.entries(counts).map(([k, n]) => [k, image(rng, n)])), DIM, LABELS);
}

function captions(rng: Rng, specs: Array<[string, number, string | string[]]>, extra: (i: number) => Partial<TextRecord> = () => ({})): MemoryTextSource {
  return new MemoryTextSource(specs.map(([id, len, img], i) => ({ id, input_ids: Array.from({ length: len }, () => rng.int(106, 400)), img_fname: img, ...extra(i) })));
}

test('MLM dataset: [CLS] masked text [SEP], labels -1 at the specials, official image features', () => {
  const rng = new Rng(1);
  const img = images(rng, { a: 3, b: 5 });
  const txt = captions(rng, [['c0', 6, 'a'], ['c1', 2, 'b']]);
  const ds = new MlmDataset(txt, img, { specialIds: IDS });
  assert.deepEqual(ds.lens(), [6 + 3, 2 + 5], 'bucket length = wordpieces + regions');
  const ex = ds.get(0, new Rng(5));
  assert.equal(ex.inputIds[0], 101);
  assert.equal(ex.inputIds.at(-1), 102);
  assert.equal(ex.txtLabels[0], -1);
  assert.equal(ex.txtLabels.at(-1), -1);
  const orig = txt.get('c0').input_ids;
  ex.txtLabels.slice(1, -1).forEach((l, k) => assert.ok(l === -1 || l === orig[k]));
  assert.ok(ex.txtLabels.some((l) => l !== -1));
  assert.deepEqual(Array.from(ex.imgPosFeat), Array.from(positionFeatures(img.get('a').normBb, 3)));
  assert.equal(ex.imgMask, undefined);
  const batch = ds.collate([ex, ds.get(1, new Rng(6))]);
  assert.deepEqual(batch.get('txt_labels')!.shape, [2, 8]);

  const joint = new MlmDataset(txt, img, { specialIds: IDS, jointMasking: true });
  const jb = joint.collate([joint.get(0, new Rng(1)), joint.get(1, new Rng(2))]);
  assert.ok(jb.has('txt_labels') && jb.has('img_mask_tgt') && jb.has('feat_targets'), 'joint ablation masks both');
});

test('MRFR / MRC datasets: region masks, soft labels required for MRC', () => {
  const rng = new Rng(2);
  const img = images(rng, { a: 4, b: 2 });
  const txt = captions(rng, [['c0', 3, 'a'], ['c1', 4, 'b']]);
  const mrfr = new MrfrDataset(txt, img, { specialIds: IDS });
  const ex = mrfr.get(0, new Rng(3));
  assert.equal(ex.imgMask.length, 4);
  assert.ok(ex.imgMask.some((v) => v === 1));
  assert.deepEqual(ex.inputIds, [101, ...txt.get('c0').input_ids, 102], 'text intact');
  const b = mrfr.collate([ex, mrfr.get(1, new Rng(4))]);
  assert.ok(b.has('feat_targets') && !b.has('txt_labels'));

  const mrc = new MrcDataset(txt, img, { specialIds: IDS });
  assert.equal(mrc.task, 'mrckl');
  const cb = mrc.collate([mrc.get(0, new Rng(3)), mrc.get(1, new Rng(4))]);
  assert.equal(cb.get('label_targets')!.shape[1], LABELS);

  const noSoft = new MemoryImageSource(new Map([['a', { ...image(rng, 2), softLabels: undefined }]]), DIM, LABELS);
  const m2 = new MrcDataset(captions(rng, [['x9', 3, 'a']]), noSoft, { specialIds: IDS }, 'mrc');
  assert.throws(() => m2.get(0, new Rng(1)), /mrc record 'x9': field 'img_fname': image 'a' has no soft_labels/);
});

test('bad records name the record id and the field', () => {
  const rng = new Rng(3);
  const img = images(rng, { a: 2, b: 3 });
  const mlm = new MlmDataset(captions(rng, [['ok', 2, 'a'], ['gone', 2, 'zzz'], ['empty', 0, 'a']]), img, { specialIds: IDS });
  assert.throws(() => mlm.get(1, new Rng(1)), /mlm record 'gone': field 'img_fname': image 'zzz' is not in the image source/);
  assert.throws(() => mlm.get(2, new Rng(1)), /mlm record 'empty': field 'input_ids': empty caption/);

  const vqaTxt = captions(rng, [['q0', 3, 'a'], ['q1', 3, 'a'], ['q2', 3, 'b']], (i) =>
    [{ target: { labels: [1, 3], scores: [0.3, 1] } }, { target: { labels: [7], scores: [1] } }, {}][i],
  );
  const vqa = new VqaDataset(vqaTxt, img, { numAnswers: 4, specialIds: IDS });
  assert.deepEqual(Array.from(vqa.get(0).target!), [0, Math.fround(0.3), 0, 1]);
  assert.throws(() => vqa.get(1), /vqa record 'q1': field 'target.labels': unknown answer label 7 \(expected 0..3\)/);
  assert.throws(() => vqa.get(2), /vqa record 'q2': field 'target': missing/);
  const unlabelled = new VqaDataset(vqaTxt, img, { numAnswers: 4, specialIds: IDS, requireTargets: false });
  assert.equal(unlabelled.get(2).target, null);

  const nl = new Nlvr2PairedDataset(captions(rng, [['n0', 3, ['a', 'b']], ['n1', 3, ['a']], ['n2', 3, ['a', 'nope']]], () => ({ target: 1 })), img, { specialIds: IDS });
  assert.equal(nl.get(0).rows.length, 2);
  assert.throws(() => nl.get(1), /nlvr2 record 'n1': field 'img_fname': expected a pair of image names/);
  assert.throws(() => nl.get(2), /nlvr2 record 'n2': field 'img_fname\[1\]': image 'nope' is not in the image source/);
});

test('VE: one-hot of 3 classes through the VQA path', () => {
  const rng = new Rng(4);
  const img = images(rng, { a: 2 });
  const ve = new VeDataset(captions(rng, [['h0', 3, 'a']], () => ({ target: { labels: [2], scores: [1.0] } })), img, { specialIds: IDS });
  assert.equal(ve.numAnswers, 3);
  assert.deepEqual(Array.from(ve.get(0).target!), [0, 0, 1]);
});

test('ITM: negatives swap only the image, use a different image of the dataset, and are redrawn per epoch', () => {
  const rng = new Rng(5);
  const img = images(rng, { a: 2, b: 3, c: 4, unused: 9 });
  const specs: Array<[string, number, string]> = Array.from({ length: 60 }, (_, i) => [`c${i}`, 3 + (i % 4), ['a', 'b', 'c'][i % 3]]);
  const txt = captions(rng, specs);
  const ds = new ItmDataset(txt, img, { specialIds: IDS });
  assert.deepEqual([...ds.imagePool].sort(), ['a', 'b', 'c'], 'pool = images of this dataset');
  assert.throws(() => ds.get(0), /call newEpoch/);
  ds.newEpoch(new Rng(1));
  const first = ds.ids.map((_, i) => ds.pair(i));
  let negatives = 0;
  first.forEach((p, i) => {
    const own = specs[i][2];
    if (p.label === 1) assert.equal(p.image, own);
    else {
      negatives++;
      assert.notEqual(p.image, own);
      assert.ok(ds.imagePool.includes(p.image));
    }
    const ex = ds.get(i);
    assert.equal(ex.target, p.label);
    assert.deepEqual(ex.inputIds, [101, ...txt.get(`c${i}`).input_ids, 102], 'text is never swapped');
    assert.equal(ex.nbb, img.nbb(p.image));
    assert.equal(ds.lens()[i], specs[i][1] + img.nbb(p.image));
  });
  assert.ok(negatives > 10 && negatives < 50, `about half negative (${negatives}/60)`);
  ds.newEpoch(new Rng(2));
  assert.notDeepEqual(ds.ids.map((_, i) => ds.pair(i)), first, 'labels and images redrawn');
  const b = ds.collate([ds.get(0), ds.get(1)]);
  assert.ok(b.has('ot_inputs.ot_scatter'));

  const all = new ItmDataset(txt, img, { specialIds: IDS, negProb: 1 });
  all.newEpoch(new Rng(3));
  assert.ok(all.ids.every((_, i) => all.pair(i).label === 0));
  const single = new ItmDataset(captions(rng, [['s0', 3, 'a'], ['s1', 3, 'a']]), img, { specialIds: IDS, negProb: 1 });
  assert.throws(() => single.newEpoch(new Rng(1)), /need 1 negative\(s\) but only 0 of 1 candidates/);
});

test('ITM rank: rows (caption, own image), (caption, other image), (other caption, own image)', () => {
  const rng = new Rng(6);
  const img = images(rng, { a: 2, b: 3, c: 4 });
  const specs: Array<[string, number, string]> = [['t0', 3, 'a'], ['t1', 4, 'a'], ['t2', 5, 'b'], ['t3', 2, 'c']];
  const txt = captions(rng, specs);
  const ds = new ItmRankDataset(txt, img, { specialIds: IDS });
  for (let trial = 0; trial < 20; trial++) {
    const ex = ds.get(0, new Rng(trial));
    assert.equal(ex.rows.length, 3);
    assert.deepEqual(ex.rows[0].inputIds, [101, ...txt.get('t0').input_ids, 102]);
    assert.equal(ex.rows[0].nbb, 2);
    assert.deepEqual(ex.rows[1].inputIds, ex.rows[0].inputIds);
    assert.ok(ex.rows[1].nbb === 3 || ex.rows[1].nbb === 4, 'negative image differs from a');
    assert.deepEqual(Array.from(ex.rows[2].imgFeat), Array.from(ex.rows[0].imgFeat), 'negative caption keeps the own image');
    const negText = ex.rows[2].inputIds.slice(1, -1).join();
    assert.ok([txt.get('t2').input_ids.join(), txt.get('t3').input_ids.join()].includes(negText), 'negative caption is not a caption of image a');
  }
  const b = ds.collate([ds.get(0, new Rng(1)), ds.get(2, new Rng(2))]);
  assert.equal(Number(b.get('sample_size')!.data[0]), 3);
  assert.equal(b.get('input_ids')!.shape[0], 6);
  const draws = sampleNegatives([1, 2, 3, 4, 5], [2, 4], 3, new Rng(1), 'x');
  assert.deepEqual([...draws].sort(), [1, 3, 5]);
});

test('NLVR2: paired rows with image types 1/2, triplet row with left then right regions', () => {
  const rng = new Rng(7);
  const img = images(rng, { l: 2, r: 3 });
  const txt = captions(rng, [['n0', 4, ['l', 'r']]], () => ({ target: 0 }));
  const paired = new Nlvr2PairedDataset(txt, img, { specialIds: IDS });
  assert.deepEqual(paired.lens(), [2 * 4 + 5], 'paired length counts the text twice');
  const p = paired.get(0);
  assert.deepEqual(p.rows[0].imgTypeIds, [1, 1]);
  assert.deepEqual(p.rows[1].imgTypeIds, [2, 2, 2]);
  assert.equal(p.target, 0);
  const triplet = new Nlvr2TripletDataset(txt, img, { specialIds: IDS });
  assert.deepEqual(triplet.lens(), [4 + 5]);
  const t = triplet.get(0);
  assert.equal(t.nbb, 5);
  assert.deepEqual(t.imgTypeIds, [1, 1, 2, 2, 2]);
  assert.deepEqual(Array.from(t.imgFeat), [...img.get('l').features, ...img.get('r').features]);
  const noTypes = new Nlvr2TripletDataset(txt, img, { specialIds: IDS, useImgType: false });
  assert.ok(!noTypes.collate([noTypes.get(0)]).has('img_type_ids'));
  const bad = new Nlvr2PairedDataset(captions(rng, [['n1', 3, ['l', 'r']]], () => ({ target: 'True' })), img, { specialIds: IDS });
  assert.throws(() => bad.get(0), /nlvr2 record 'n1': field 'target': expected an integer/);
});

test('RE: target = index of ann_id among the image ann_ids; checks GT region count', () => {
  const rng = new Rng(8);
  const img = images(rng, { [`visual_grounding_coco_gt_${'7'.padStart(12, '0')}.npz`]: 3 });
  const table = new Map([[7, { ann_ids: [70, 71, 72] }]]);
  const txt = captions(rng, [['s0', 3, 'ignored'], ['s1', 3, 'ignored']], (i) => ({ image_id: 7, ann_id: [72, 99][i] }));
  const ds = new ReDataset(txt, img, { images: table, specialIds: IDS });
  assert.equal(ds.get(0).target, 2);
  assert.throws(() => ds.get(1), /re record 's1': field 'ann_id': annotation 99 is not among the ann_ids of image 7/);
  const wrong = new ReDataset(txt, img, { images: new Map([[7, { ann_ids: [1, 2] }]]), specialIds: IDS });
  assert.throws(() => wrong.get(0), /has 2 ann_ids but 3 GT regions/);
  const b = ds.collate([ds.get(0)]);
  assert.deepEqual(toNumbers(b.get('targets')!), [2]);
  const own = new ReDataset(captions(rng, [['s2', 3, 'mine']], () => ({ image_id: 7, ann_id: 71 })), images(rng, { mine: 3 }), {
    images: table,
    specialIds: IDS,
    imgFname: (_, rec) => rec.img_fname as string,
  });
  assert.equal(own.get(0).target, 1, "record's own img_fname");
});

test('VCR: Q->A and QA->R rows with text types 0/2/3, GT regions before detections', () => {
  const rng = new Rng(9);
  const gt = images(rng, { g: 2 });
  const det = images(rng, { d: 3 });
  const rec = {
    input_ids_as: [[201], [202, 203], [204], [205]],
    input_ids_rs: [[301], [302], [303, 304], [305]],
    qa_target: 1,
    qar_target: 2,
  };
  const txt = new MemoryTextSource([{ id: 'v0', input_ids: [11, 12], img_fname: ['g', 'd'], ...rec }]);
  const qa = new VcrDataset(txt, { gt, det }, { task: 'qa', specialIds: IDS });
  const ex = qa.get(0);
  assert.equal(ex.rows.length, 4);
  assert.deepEqual(ex.rows[1].inputIds, [101, 11, 12, 102, 202, 203, 102]);
  assert.deepEqual(ex.rows[1].txtTypeIds, [0, 0, 0, 2, 2, 2, 2]);
  assert.deepEqual(ex.rows.map((r) => r.target), [0, 1, 0, 0]);
  assert.equal(ex.rows[0].nbb, 5);
  assert.deepEqual(Array.from(ex.rows[0].imgFeat), [...gt.get('g').features, ...det.get('d').features], 'GT boxes first');
  const qar = new VcrDataset(txt, { gt, det }, { task: 'qar', specialIds: IDS });
  const r = qar.get(0).rows[2];
  assert.deepEqual(r.inputIds, [101, 11, 12, 102, 202, 203, 102, 303, 304, 102]);
  assert.deepEqual(r.txtTypeIds, [0, 0, 0, 2, 2, 2, 3, 3, 3, 3]);
  assert.equal(r.target, 1);
  const batch = qar.collate([qar.get(0)]);
  assert.deepEqual(batch.get('targets')!.shape, [4, 1]);
  assert.deepEqual(toNumbers(batch.get('txt_type_ids')!).slice(20, 30), [0, 0, 0, 2, 2, 2, 3, 3, 3, 3]);

  const val = new VcrEvalDataset(txt, { gt, det }, { split: 'val', specialIds: IDS });
  assert.equal(val.get(0).rows.length, 8);
  const test_ = new VcrEvalDataset(txt, { det }, { split: 'test', specialIds: IDS });
  const te = test_.get(0);
  assert.equal(te.rows.length, 20);
  assert.equal(te.rows[0].nbb, 3, 'detections only');
  const eb = val.collate([val.get(0)]);
  assert.deepEqual(toNumbers(eb.get('qa_targets')!), [1]);
  assert.deepEqual(toNumbers(eb.get('qar_targets')!), [2]);
});
