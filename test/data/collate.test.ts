import { test } from 'node:test';
import assert from 'node:assert/strict';
import { toNumbers } from '../../src/engine/host.js';
import { Rng } from '../../src/util/rng.js';
import {
  type SeqRow,
  batchLengths,
  collateRows,
  gatherIndex,
  itmCollate,
  itmRankCollate,
  mlmCollate,
  mrcCollate,
  mrfrCollate,
  nlvr2PairedCollate,
  reCollate,
  vcrCollate,
  vqaCollate,
} from '../../src/data/collate.js';

const DIM = 5;

function row(rng: Rng, tl: number, nbb: number): SeqRow {
  const feat = new Float32Array(nbb * DIM);
  for (let i = 0; i < feat.length; i++) feat[i] = 1 + rng.int(100);
  const pos = new Float32Array(nbb * 7);
  for (let i = 0; i < pos.length; i++) pos[i] = rng.uniform();
  const ids = [101, ...Array.from({ length: tl - 2 }, () => rng.int(106, 500)), 102];
  return { inputIds: ids, imgFeat: feat, imgPosFeat: pos, nbb };
}

test('gatherIndex matches the spec example', () => {
  const g = gatherIndex([4, 3], [2, 3], 4, 6);
  assert.deepEqual(g.shape, [2, 6]);
  assert.deepEqual(toNumbers(g), [0, 1, 2, 3, 4, 5, 0, 1, 2, 4, 5, 6]);
  assert.throws(() => gatherIndex([4], [3], 4, 6), /row 0 has 4 text \+ 3 regions > out size 6/);
});

test('collateRows pads text with 0, regions with zeros and builds compact masks', () => {
  const rng = new Rng(1);
  const rows = [row(rng, 4, 2), row(rng, 3, 3), row(rng, 5, 1)];
  const { batch, layout } = collateRows(rows);
  assert.deepEqual(layout, { txtLens: [4, 3, 5], numBbs: [2, 3, 1], maxTl: 5, maxNbb: 3, jointLen: 6, imgDim: DIM });
  const ids = batch.get('input_ids')!;
  assert.equal(ids.dtype, 'int64');
  assert.deepEqual(ids.shape, [3, 5]);
  assert.deepEqual(toNumbers(ids).slice(0, 5), [...rows[0].inputIds, 0]);
  assert.deepEqual(toNumbers(batch.get('position_ids')!), [0, 1, 2, 3, 4]);
  assert.deepEqual(batch.get('position_ids')!.shape, [1, 5]);
  const feat = batch.get('img_feat')!;
  assert.deepEqual(feat.shape, [3, 3, DIM]);
  assert.deepEqual(toNumbers(feat).slice(0, 2 * DIM), Array.from(rows[0].imgFeat));
  assert.ok(toNumbers(feat).slice(2 * DIM, 3 * DIM).every((v) => v === 0), 'region padding is zero');
  assert.deepEqual(toNumbers(feat).slice(6 * DIM, 7 * DIM), Array.from(rows[2].imgFeat));
  assert.ok(toNumbers(feat).slice(7 * DIM).every((v) => v === 0), 'a row with one region is padded after it');
  assert.deepEqual(batch.get('img_pos_feat')!.shape, [3, 3, 7]);
  assert.equal(batch.get('attn_masks')!.dtype, 'int64');
  assert.deepEqual(toNumbers(batch.get('attn_masks')!), [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
  assert.deepEqual(toNumbers(batch.get('gather_index')!), [0, 1, 2, 3, 5, 6, 0, 1, 2, 5, 6, 7, 0, 1, 2, 3, 4, 5]);
  assert.ok(!batch.has('txt_type_ids') && !batch.has('img_type_ids'));
  assert.deepEqual(batchLengths(batch), { txtLens: [4, 3, 5], numBbs: [2, 3, 1] });
});

test('batchLengths recovers lengths for random batches (rows whose text fills Lt included)', () => {
  const rng = new Rng(2);
  for (let trial = 0; trial < 50; trial++) {
    const b = 1 + rng.int(6);
    const rows = Array.from({ length: b }, () => row(rng, 2 + rng.int(8), 1 + rng.int(4)));
    const { batch, layout } = collateRows(rows);
    assert.deepEqual(batchLengths(batch), { txtLens: layout.txtLens, numBbs: layout.numBbs });
  }
});

test('type ids are padded with 0 and must be on all rows or none', () => {
  const rng = new Rng(3);
  const a = { ...row(rng, 4, 2), txtTypeIds: [0, 0, 2, 2], imgTypeIds: [1, 1] };
  const b = { ...row(rng, 3, 3), txtTypeIds: [0, 2, 2], imgTypeIds: [2, 2, 2] };
  const { batch } = collateRows([a, b]);
  assert.deepEqual(toNumbers(batch.get('txt_type_ids')!), [0, 0, 2, 2, 0, 2, 2, 0]);
  assert.deepEqual(toNumbers(batch.get('img_type_ids')!), [1, 1, 0, 2, 2, 2]);
  assert.throws(() => collateRows([a, row(rng, 3, 1)]), /txtTypeIds is set on 1 of 2 rows/);
  assert.throws(() => collateRows([{ ...a, imgTypeIds: [1] }]), /imgTypeIds has length 1, expected 2/);
});

test('collateRows rejects inconsistent inputs with clear errors', () => {
  const rng = new Rng(4);
  assert.throws(() => collateRows([]), /empty batch/);
  const r = row(rng, 3, 2);
  assert.throws(() => collateRows([r, { ...r, imgFeat: new Float32Array(2 * (DIM + 1)) }]), /row 1 img_feat has 12 values, expected 2 x 5/);
  assert.throws(() => collateRows([{ ...r, imgPosFeat: new Float32Array(6) }]), /row 0 img_pos_feat has 6 values, expected 2 x 7/);
  // Every example needs regions (issue 15, case 6): alone or inside a batch.
  assert.throws(() => collateRows([row(rng, 3, 0)], DIM), /row 0 has 0 image regions/);
  assert.throws(() => collateRows([r, row(rng, 3, 0)]), /row 1 has 0 image regions/);
});

test('mlm collate: labels padded with -1 and flat positions of the labelled slots', () => {
  const rng = new Rng(5);
  const a = { ...row(rng, 5, 2), txtLabels: [-1, 300, -1, 301, -1] };
  const b = { ...row(rng, 3, 1), txtLabels: [-1, 200, -1] };
  const batch = mlmCollate([a, b]);
  assert.deepEqual(toNumbers(batch.get('txt_labels')!), [-1, 300, -1, 301, -1, -1, 200, -1, -1, -1]);
  assert.deepEqual(toNumbers(batch.get('mlm_positions')!), [1, 3, 6]);
  assert.ok(!batch.has('img_masks'), 'no region masking without the joint ablation');
});

test('mrfr collate: targets are the original features, masked rows zeroed, tgt at per-row offsets', () => {
  const rng = new Rng(6);
  const a = { ...row(rng, 4, 3), imgMask: Uint8Array.from([0, 1, 1]) };
  const b = { ...row(rng, 6, 2), imgMask: Uint8Array.from([1, 0]) };
  const batch = mrfrCollate([a, b]);
  const targets = batch.get('feat_targets')!;
  assert.deepEqual(targets.shape, [3, DIM]);
  assert.deepEqual(toNumbers(targets), [...a.imgFeat.slice(DIM, 3 * DIM), ...b.imgFeat.slice(0, DIM)]);
  const feat = batch.get('img_feat')!.data as Float32Array;
  assert.deepEqual(Array.from(feat.slice(0, DIM)), Array.from(a.imgFeat.slice(0, DIM)), 'unmasked row kept');
  assert.ok(feat.slice(DIM, 3 * DIM).every((v) => v === 0), 'masked rows zeroed');
  assert.ok(a.imgFeat.slice(DIM).some((v) => v !== 0), 'the example itself is not modified');
  assert.deepEqual(toNumbers(batch.get('img_masks')!), [0, 1, 1, 1, 0, 0]);
  assert.equal(batch.get('img_mask_tgt')!.dtype, 'bool');
  // Lj = 8: row 0 regions at slots 4..6, row 1 regions at 6..7.
  assert.deepEqual(toNumbers(batch.get('img_mask_tgt')!), [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
  assert.deepEqual(toNumbers(batch.get('mrm_positions')!), [5, 6, 14]);
  assert.deepEqual(toNumbers(batch.get('img_pos_feat')!).slice(0, 21), Array.from(a.imgPosFeat), 'positions are not masked');
});

test('mrc collate: label targets are the soft labels of masked regions', () => {
  const rng = new Rng(7);
  const soft = (n: number) => Float32Array.from({ length: n * 3 }, (_, i) => i / 10);
  const a = { ...row(rng, 4, 2), imgMask: Uint8Array.from([0, 1]), softLabels: soft(2) };
  const b = { ...row(rng, 3, 1), imgMask: Uint8Array.from([1]), softLabels: soft(1) };
  const batch = mrcCollate([a, b]);
  assert.deepEqual(batch.get('label_targets')!.shape, [2, 3]);
  assert.deepEqual(toNumbers(batch.get('label_targets')!), [...Array.from(soft(2).slice(3)), ...Array.from(soft(1))]);
  assert.ok(!batch.has('feat_targets'));
});

test('joint masking ablation: mlm and mrm fields in the same batch', () => {
  const rng = new Rng(8);
  const a = { ...row(rng, 4, 2), txtLabels: [-1, 150, -1, -1], imgMask: Uint8Array.from([1, 0]) };
  const batch = mlmCollate([a]);
  for (const k of ['txt_labels', 'mlm_positions', 'feat_targets', 'img_masks', 'img_mask_tgt', 'mrm_positions']) assert.ok(batch.has(k), k);
  assert.throws(() => mlmCollate([a, { ...row(rng, 3, 1), txtLabels: [-1, 2, -1] }]), /imgMask is set on 1 of 2/);
  const m = mrfrCollate([{ ...a, imgMask: Uint8Array.from([0, 1]) }]);
  assert.deepEqual(toNumbers(m.get('txt_labels')!), [-1, 150, -1, -1]);
});

test('itm collate: OT scatter equals gather_index on real slots and pads are right', () => {
  const rng = new Rng(9);
  const rows = [row(rng, 7, 4), row(rng, 3, 7), row(rng, 11, 2), row(rng, 5, 5)].map((r, i) => ({ ...r, target: i % 2 }));
  const batch = itmCollate(rows);
  assert.deepEqual(toNumbers(batch.get('targets')!), [0, 1, 0, 1]);
  const lj = batch.get('attn_masks')!.shape[1];
  const scatter = toNumbers(batch.get('ot_inputs.ot_scatter')!);
  const gather = toNumbers(batch.get('gather_index')!);
  const attn = toNumbers(batch.get('attn_masks')!);
  for (let k = 0; k < scatter.length; k++) if (attn[k]) assert.equal(scatter[k], gather[k], `slot ${k}`);
  // Padding slots continue the region numbering: slot j >= tl_i -> Lt + j - tl_i.
  assert.equal(scatter[0 * lj + lj - 1], 11 + (lj - 1 - 7));
  const max = batch.get('ot_inputs.scatter_max')!;
  assert.deepEqual(max.shape, []);
  assert.equal(Number(max.data[0]), Math.max(...scatter));
  assert.deepEqual(toNumbers(batch.get('ot_inputs.img_pad')!).slice(0, 7), [0, 0, 0, 0, 1, 1, 1]);
  assert.deepEqual(toNumbers(batch.get('ot_inputs.txt_pad')!).slice(11, 22), [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
  const plain = itmCollate(rows, { ot: false });
  assert.ok(![...plain.keys()].some((k) => k.startsWith('ot_inputs.')));
});

test('downstream collates: vqa targets, nlvr2 pairs, re masks, retrieval sample size, vcr types', () => {
  const rng = new Rng(10);
  const vqa = vqaCollate([
    { ...row(rng, 4, 2), target: Float32Array.from([0, 0.3, 1]) },
    { ...row(rng, 5, 1), target: Float32Array.from([0, 0, 0]) },
  ]);
  assert.equal(vqa.get('targets')!.dtype, 'float32');
  assert.deepEqual(toNumbers(vqa.get('targets')!), [0, Math.fround(0.3), 1, 0, 0, 0]);
  assert.ok(!vqaCollate([{ ...row(rng, 4, 2), target: null }]).has('targets'), 'unlabelled split has no targets');

  const left = { ...row(rng, 4, 2), imgTypeIds: [1, 1] };
  const right = { ...left, ...row(rng, 4, 3), inputIds: left.inputIds, imgTypeIds: [2, 2, 2] };
  const nl = nlvr2PairedCollate([{ rows: [left, right], target: 1 }]);
  assert.deepEqual(nl.get('input_ids')!.shape, [2, 4]);
  assert.deepEqual(toNumbers(nl.get('targets')!), [1]);
  assert.deepEqual(toNumbers(nl.get('img_type_ids')!), [1, 1, 0, 2, 2, 2]);

  const re = reCollate([{ ...row(rng, 4, 2), target: 1 }, { ...row(rng, 3, 4), target: 3 }]);
  assert.deepEqual([...re.keys()].slice(0, 6), ['input_ids', 'position_ids', 'img_feat', 'img_pos_feat', 'obj_masks', 'attn_masks']);
  assert.deepEqual(toNumbers(re.get('obj_masks')!), [0, 0, 1, 1, 0, 0, 0, 0]);
  assert.deepEqual(re.get('targets')!.shape, [2, 1]);
  assert.deepEqual(toNumbers(re.get('txt_lens')!), [4, 3]);
  assert.deepEqual(toNumbers(re.get('num_bbs')!), [2, 4]);

  const rank = itmRankCollate([{ rows: [row(rng, 4, 2), row(rng, 4, 3), row(rng, 5, 2)] }, { rows: [row(rng, 3, 2), row(rng, 3, 1), row(rng, 6, 2)] }]);
  assert.deepEqual(rank.get('input_ids')!.shape, [6, 6]);
  assert.deepEqual(rank.get('sample_size')!.shape, []);
  assert.equal(Number(rank.get('sample_size')!.data[0]), 3);
  assert.throws(() => itmRankCollate([{ rows: [row(rng, 4, 2)] }, { rows: [row(rng, 4, 2), row(rng, 4, 2)] }]), /has 2 rows, the first has 1/);

  const vr = (target: number) => ({ ...row(rng, 5, 2), txtTypeIds: [0, 0, 2, 2, 2], target });
  const vcr = vcrCollate([{ rows: [vr(0), vr(1), vr(0), vr(0)] }]);
  assert.deepEqual(vcr.get('targets')!.shape, [4, 1]);
  assert.deepEqual(toNumbers(vcr.get('targets')!), [0, 1, 0, 0]);
  assert.deepEqual([...vcr.keys()].slice(0, 3), ['input_ids', 'txt_type_ids', 'position_ids']);
});
