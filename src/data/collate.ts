/**
 * Collate functions: per-example inputs -> a `Batch` with the official field names, dtypes and
 * layouts (exactly those of `test/fixtures/golden/<set>/**\/batch*.safetensors`).
 *
 * Every task collate calls ONE core, `collateRows`, which builds the fields all tasks share:
 *   input_ids    int64 [B, Lt]        [CLS] text [SEP], right-padded with 0
 *   txt_type_ids int64 [B, Lt]        only when rows carry text types (VCR), padded with 0
 *   position_ids int64 [1, Lt]        arange(Lt)
 *   img_feat     f32   [B, Nmax, D]   zero-padded
 *   img_pos_feat f32   [B, Nmax, 7]   zero-padded
 *   attn_masks   int64 [B, Lj]        tl_i + nbb_i ones, then 0; Lj = max(tl_i + nbb_i)
 *   gather_index int64 [B, Lj]        official get_gather_index (compact [text, regions, pad] rows)
 *   img_type_ids int64 [B, Nmax]      only when rows carry region types (NLVR2), padded with 0
 *
 * Extra entries (not official; names do not clash with official ones), host-side index helpers
 * for an engine without masked_select:
 *   mlm_positions int64 [n]  flat indices row*Lt + col of txt_labels != -1, row-major order
 *                            (= the rows of sequence_output[:, :Lt][txt_labels != -1])
 *   mrm_positions int64 [n]  flat indices row*Lj + col of img_mask_tgt, row-major order
 *                            (= the rows of sequence_output[img_mask_tgt])
 * The ITM-OT and RE heads need nothing beyond the official fields.
 */
import { type HostTensor, bool, f32, i64 } from '../engine/host.js';
import type { Batch } from './types.js';
import { maskRegionFeatures, selectMaskedRows } from './masking.js';
import { NonFiniteError, firstNonFinite } from '../util/finite.js';

/** Names of the non-official index helpers this module adds (see the header). */
export const EXTRA_BATCH_FIELDS: readonly string[] = ['mlm_positions', 'mrm_positions'];

/** One encoder row before padding. */
export interface SeqRow {
  /** Text ids including [CLS] and [SEP] (length tl). */
  inputIds: readonly number[];
  /** [nbb, imgDim] region features. */
  imgFeat: Float32Array;
  /** [nbb, 7] position features. */
  imgPosFeat: Float32Array;
  nbb: number;
  /** Per text slot token type (VCR: 0 question, 2 answer, 3 rationale). */
  txtTypeIds?: readonly number[];
  /** Per region token type (NLVR2: 1 left image, 2 right image). */
  imgTypeIds?: readonly number[];
  /** The example's id, when known (named in errors). */
  id?: string;
}

/** The sizes a task collate needs after the core ran. */
export interface BatchLayout {
  txtLens: number[];
  numBbs: number[];
  /** Lt = max tl_i. */
  maxTl: number;
  /** Nmax = max nbb_i. */
  maxNbb: number;
  /** Lj = max(tl_i + nbb_i). */
  jointLen: number;
  imgDim: number;
}

const POS_DIM = 7;

/** NaN or infinite input values are errors naming the row (and example id), field, region and column. */
function checkFiniteField(r: SeqRow, i: number, field: string, data: Float32Array, width: number): void {
  const bad = firstNonFinite(data);
  if (bad < 0) return;
  throw new NonFiniteError(`collate: row ${i}${r.id !== undefined ? ` (example '${r.id}')` : ''} field '${field}' holds ${data[bad]} at region ${Math.floor(bad / width)}, column ${bad % width}; inputs must be finite`);
}

/** int64 [B, L] from ragged rows, right-padded with `pad`. */
function padRows(rows: ReadonlyArray<ArrayLike<number>>, width: number, pad: number): HostTensor {
  const out = new BigInt64Array(rows.length * width).fill(BigInt(pad));
  rows.forEach((r, i) => {
    for (let j = 0; j < r.length; j++) out[i * width + j] = BigInt(r[j]);
  });
  return i64([rows.length, width], out);
}

/** Official get_gather_index: arange(outSize) per row, slots tl..tl+nbb-1 -> maxTl..maxTl+nbb-1. */
export function gatherIndex(txtLens: readonly number[], numBbs: readonly number[], maxTl: number, outSize: number): HostTensor {
  if (txtLens.length !== numBbs.length) throw new Error(`gatherIndex: ${txtLens.length} text lengths but ${numBbs.length} region counts`);
  const b = txtLens.length;
  const out = new BigInt64Array(b * outSize);
  for (let i = 0; i < b; i++) {
    const tl = txtLens[i];
    const nbb = numBbs[i];
    if (tl + nbb > outSize) throw new Error(`gatherIndex: row ${i} has ${tl} text + ${nbb} regions > out size ${outSize}`);
    for (let j = 0; j < outSize; j++) out[i * outSize + j] = BigInt(j);
    for (let k = 0; k < nbb; k++) out[i * outSize + tl + k] = BigInt(maxTl + k);
  }
  return i64([b, outSize], out);
}

/**
 * The shared core: pads text, regions, masks and builds gather_index. `imgDim` is only needed
 * when no row has a region (otherwise it is read from the rows and checked).
 */
export function collateRows(rows: readonly SeqRow[], imgDim?: number): { batch: Batch; layout: BatchLayout } {
  if (rows.length === 0) throw new Error('collate: empty batch');
  const txtLens = rows.map((r) => r.inputIds.length);
  const numBbs = rows.map((r) => r.nbb);
  let dim = imgDim;
  rows.forEach((r, i) => {
    if (r.inputIds.length === 0) throw new Error(`collate: row ${i} has no text ids (expected [CLS] ... [SEP])`);
    if (!Number.isInteger(r.nbb) || r.nbb < 0) throw new Error(`collate: row ${i} has invalid region count ${r.nbb}`);
    if (r.imgPosFeat.length !== r.nbb * POS_DIM) {
      throw new Error(`collate: row ${i} img_pos_feat has ${r.imgPosFeat.length} values, expected ${r.nbb} x ${POS_DIM}`);
    }
    if (r.nbb === 0) {
      // A row without regions has no image to score: alone it breaks the graph's reshapes, in a
      // batch it would be scored on text alone without a word.
      throw new Error(`collate: row ${i}${r.id !== undefined ? ` (example '${r.id}')` : ''} has 0 image regions; every example needs at least one region`);
    }
    const d = r.imgFeat.length / r.nbb;
    if (dim === undefined) dim = d;
    if (d !== dim) throw new Error(`collate: row ${i} img_feat has ${r.imgFeat.length} values, expected ${r.nbb} x ${dim}`);
    checkFiniteField(r, i, 'img_feat', r.imgFeat, dim);
    checkFiniteField(r, i, 'img_pos_feat', r.imgPosFeat, POS_DIM);
  });
  if (dim === undefined) throw new Error('collate: no row has regions, so the feature size is unknown; pass imgDim');
  const b = rows.length;
  const maxTl = Math.max(...txtLens);
  const maxNbb = Math.max(...numBbs);
  const jointLen = Math.max(...rows.map((r, i) => txtLens[i] + r.nbb));

  const batch: Batch = new Map();
  batch.set('input_ids', padRows(rows.map((r) => r.inputIds), maxTl, 0));
  const txtTypes = optionalPerRow(rows, 'txtTypeIds', (r) => r.txtTypeIds, (r) => r.inputIds.length);
  if (txtTypes) batch.set('txt_type_ids', padRows(txtTypes, maxTl, 0));
  batch.set('position_ids', i64([1, maxTl], Array.from({ length: maxTl }, (_, j) => j)));

  const feat = new Float32Array(b * maxNbb * dim);
  const pos = new Float32Array(b * maxNbb * POS_DIM);
  rows.forEach((r, i) => {
    feat.set(r.imgFeat, i * maxNbb * dim!);
    pos.set(r.imgPosFeat, i * maxNbb * POS_DIM);
  });
  batch.set('img_feat', f32([b, maxNbb, dim], feat));
  batch.set('img_pos_feat', f32([b, maxNbb, POS_DIM], pos));

  const attn = new BigInt64Array(b * jointLen);
  rows.forEach((r, i) => attn.fill(1n, i * jointLen, i * jointLen + txtLens[i] + r.nbb));
  batch.set('attn_masks', i64([b, jointLen], attn));
  batch.set('gather_index', gatherIndex(txtLens, numBbs, maxTl, jointLen));
  const imgTypes = optionalPerRow(rows, 'imgTypeIds', (r) => r.imgTypeIds, (r) => r.nbb);
  if (imgTypes) batch.set('img_type_ids', padRows(imgTypes, maxNbb, 0));

  return { batch, layout: { txtLens, numBbs, maxTl, maxNbb, jointLen, imgDim: dim } };
}

/** A per-row optional field must be on every row or on none, with the right length. */
function optionalPerRow(
  rows: readonly SeqRow[],
  name: string,
  get: (r: SeqRow) => readonly number[] | undefined,
  expectedLen: (r: SeqRow) => number,
): Array<readonly number[]> | null {
  const present = rows.filter((r) => get(r) !== undefined).length;
  if (present === 0) return null;
  if (present !== rows.length) throw new Error(`collate: ${name} is set on ${present} of ${rows.length} rows (all or none)`);
  return rows.map((r, i) => {
    const v = get(r)!;
    if (v.length !== expectedLen(r)) throw new Error(`collate: row ${i} ${name} has length ${v.length}, expected ${expectedLen(r)}`);
    return v;
  });
}

// ---------------------------------------------------------------------------------------------
// Masked pre-training tasks (mlm, mrfr, mrc/mrckl), including the joint-masking ablation where
// one example carries both text labels and a region mask.

export interface MlmExample extends SeqRow {
  /** -1 except at masked text slots (original id); same length as inputIds ([CLS]/[SEP] -1). */
  txtLabels: readonly number[];
  /** Joint-masking ablation only: regions masked in the same example. */
  imgMask?: Uint8Array;
}

export interface MrmExample extends SeqRow {
  /** [nbb] 1 = region masked. */
  imgMask: Uint8Array;
  /** Joint-masking ablation only: MLM labels of the same example (inputIds already masked). */
  txtLabels?: readonly number[];
}

export interface MrcExample extends MrmExample {
  /** [nbb, labelDim] detector class distribution (background column 0 included). */
  softLabels: Float32Array;
}

function addTxtLabels(batch: Batch, layout: BatchLayout, examples: ReadonlyArray<{ inputIds: readonly number[]; txtLabels?: readonly number[] }>): void {
  const lt = layout.maxTl;
  const labels = examples.map((e, i) => {
    const l = e.txtLabels!;
    if (l.length !== e.inputIds.length) throw new Error(`collate: row ${i} txt_labels has length ${l.length}, input_ids ${e.inputIds.length}`);
    return l;
  });
  batch.set('txt_labels', padRows(labels, lt, -1));
  const positions: number[] = [];
  labels.forEach((l, i) => l.forEach((v, j) => v !== -1 && positions.push(i * lt + j)));
  batch.set('mlm_positions', i64([positions.length], positions));
}

/** Zero masked rows (targets first), then run the core on the masked rows. */
function collateMasked<E extends SeqRow & { imgMask?: Uint8Array }>(examples: readonly E[]): { batch: Batch; layout: BatchLayout; featTargets: Float32Array[] } {
  const featTargets: Float32Array[] = [];
  const rows = examples.map((e, i) => {
    const mask = e.imgMask!;
    if (mask.length !== e.nbb) throw new Error(`collate: row ${i} img_mask has ${mask.length} entries, the row has ${e.nbb} regions`);
    const { masked, targets } = maskRegionFeatures(e.imgFeat, mask, e.nbb > 0 ? e.imgFeat.length / e.nbb : 0);
    featTargets.push(targets);
    return { ...e, imgFeat: masked };
  });
  return { ...collateRows(rows), featTargets };
}

function addImgMasks(batch: Batch, layout: BatchLayout, masks: readonly Uint8Array[]): number {
  const { maxNbb, jointLen, txtLens } = layout;
  const b = masks.length;
  const imgMasks = new Uint8Array(b * maxNbb);
  const tgt = new Uint8Array(b * jointLen);
  const positions: number[] = [];
  masks.forEach((m, i) => {
    imgMasks.set(m, i * maxNbb);
    tgt.set(m, i * jointLen + txtLens[i]);
    m.forEach((v, r) => v && positions.push(i * jointLen + txtLens[i] + r));
  });
  batch.set('img_masks', bool([b, maxNbb], imgMasks));
  batch.set('img_mask_tgt', bool([b, jointLen], tgt));
  batch.set('mrm_positions', i64([positions.length], positions));
  return positions.length;
}

function concatRows(parts: readonly Float32Array[], dim: number): HostTensor {
  const n = parts.reduce((s, p) => s + p.length, 0);
  const out = new Float32Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return f32([n / dim, dim], out);
}

function checkJoint(examples: ReadonlyArray<{ imgMask?: Uint8Array; txtLabels?: readonly number[] }>, field: 'imgMask' | 'txtLabels'): boolean {
  const n = examples.filter((e) => e[field] !== undefined).length;
  if (n !== 0 && n !== examples.length) throw new Error(`collate: ${field} is set on ${n} of ${examples.length} examples (all or none)`);
  return n > 0;
}

/** Official mlm_collate (+ mlm_positions; + region masking fields in the joint ablation). */
export function mlmCollate(examples: readonly MlmExample[]): Batch {
  const joint = checkJoint(examples, 'imgMask');
  if (!joint) {
    const { batch, layout } = collateRows(examples);
    addTxtLabels(batch, layout, examples);
    return batch;
  }
  const { batch, layout, featTargets } = collateMasked(examples);
  addTxtLabels(batch, layout, examples);
  batch.set('feat_targets', concatRows(featTargets, layout.imgDim));
  addImgMasks(batch, layout, examples.map((e) => e.imgMask!));
  return batch;
}

/** Official mrfr_collate: feat_targets (original features), img_masks, img_mask_tgt. */
export function mrfrCollate(examples: readonly MrmExample[]): Batch {
  const { batch, layout, featTargets } = collateMasked(examples);
  batch.set('feat_targets', concatRows(featTargets, layout.imgDim));
  addImgMasks(batch, layout, examples.map((e) => e.imgMask));
  if (checkJoint(examples, 'txtLabels')) addTxtLabels(batch, layout, examples);
  return batch;
}

/** Official mrc_collate (serves mrc and mrckl): img_masks, img_mask_tgt, label_targets. */
export function mrcCollate(examples: readonly MrcExample[]): Batch {
  const { batch, layout } = collateMasked(examples);
  addImgMasks(batch, layout, examples.map((e) => e.imgMask));
  let labelDim: number | undefined;
  const targets = examples.map((e, i) => {
    if (e.nbb === 0) return new Float32Array(0);
    const d = e.softLabels.length / e.nbb;
    if (labelDim === undefined) labelDim = d;
    if (d !== labelDim || !Number.isInteger(d)) throw new Error(`collate: row ${i} soft_labels has ${e.softLabels.length} values, expected ${e.nbb} x ${labelDim}`);
    return selectMaskedRows(e.softLabels, e.imgMask, d);
  });
  if (labelDim === undefined) throw new Error('collate: no row has regions, label size unknown');
  batch.set('label_targets', concatRows(targets, labelDim));
  if (checkJoint(examples, 'txtLabels')) addTxtLabels(batch, layout, examples);
  return batch;
}

// ---------------------------------------------------------------------------------------------
// ITM with OT inputs (pre-training) and retrieval ranking.

export interface ItmExample extends SeqRow {
  /** 1 = matched pair, 0 = the image was replaced. */
  target: number;
}

/**
 * Official itm_ot_collate (`ot: true`, what pre-training uses when itm_ot_lambda > 0) or
 * itm_collate (`ot: false`). OT fields: ot_scatter [B, Lj] (text slot j keeps j, slot j >= tl_i
 * goes to Lt + j - tl_i), scatter_max (int64 scalar), txt_pad [B, Lt] and img_pad [B, Nmax] (bool).
 */
export function itmCollate(examples: readonly ItmExample[], opts: { ot?: boolean } = {}): Batch {
  const { batch, layout } = collateRows(examples);
  batch.set('targets', i64([examples.length], examples.map((e) => e.target)));
  if (opts.ot === false) return batch;
  const { txtLens, numBbs, maxTl, maxNbb, jointLen } = layout;
  const b = examples.length;
  const scatter = new BigInt64Array(b * jointLen);
  let scatterMax = 0;
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < jointLen; j++) {
      const v = j < txtLens[i] ? j : maxTl + (j - txtLens[i]);
      scatter[i * jointLen + j] = BigInt(v);
      if (v > scatterMax) scatterMax = v;
    }
  }
  batch.set('ot_inputs.ot_scatter', i64([b, jointLen], scatter));
  batch.set('ot_inputs.scatter_max', i64([], [scatterMax]));
  batch.set('ot_inputs.txt_pad', padMask(txtLens, maxTl));
  batch.set('ot_inputs.img_pad', padMask(numBbs, maxNbb));
  return batch;
}

/** Official _compute_pad: bool [B, width], true at slots >= len_i. */
function padMask(lens: readonly number[], width: number): HostTensor {
  const out = new Uint8Array(lens.length * width);
  lens.forEach((l, i) => out.fill(1, i * width + l, (i + 1) * width));
  return bool([lens.length, width], out);
}

/** One caption's rows for retrieval training: (pos), neg images..., neg captions... */
export interface ItmRankExample {
  rows: readonly SeqRow[];
}

/** Official itm_rank_collate: rows grouped per caption, `sample_size` = rows per caption. */
export function itmRankCollate(examples: readonly ItmRankExample[]): Batch {
  if (examples.length === 0) throw new Error('collate: empty batch');
  const sampleSize = examples[0].rows.length;
  examples.forEach((e, i) => {
    if (e.rows.length !== sampleSize) throw new Error(`collate: retrieval example ${i} has ${e.rows.length} rows, the first has ${sampleSize}`);
  });
  const { batch } = collateRows(examples.flatMap((e) => e.rows));
  batch.set('sample_size', i64([], [sampleSize]));
  return batch;
}

// ---------------------------------------------------------------------------------------------
// Downstream tasks.

export interface VqaExample extends SeqRow {
  /** [numAnswers] soft scores, or null for unlabelled (test) questions. */
  target: Float32Array | null;
}

/** Official vqa_collate / ve_collate: targets f32 [B, numAnswers] (omitted when no row has one). */
export function vqaCollate(examples: readonly VqaExample[]): Batch {
  const { batch } = collateRows(examples);
  const n = examples.filter((e) => e.target !== null).length;
  if (n === 0) return batch;
  if (n !== examples.length) throw new Error(`collate: ${n} of ${examples.length} VQA rows have targets (all or none)`);
  const a = examples[0].target!.length;
  const out = new Float32Array(examples.length * a);
  examples.forEach((e, i) => {
    if (e.target!.length !== a) throw new Error(`collate: row ${i} target has ${e.target!.length} answers, row 0 has ${a}`);
    out.set(e.target!, i * a);
  });
  batch.set('targets', f32([examples.length, a], out));
  return batch;
}

export const veCollate = vqaCollate;

export interface Nlvr2PairedExample {
  /** (text, left image) and (text, right image), with img types 1 and 2 when used. */
  rows: readonly [SeqRow, SeqRow];
  target: number;
}

/** Official nlvr2_paired_collate: 2 rows per statement, targets int64 [n_statements]. */
export function nlvr2PairedCollate(examples: readonly Nlvr2PairedExample[]): Batch {
  const { batch } = collateRows(examples.flatMap((e) => e.rows));
  batch.set('targets', i64([examples.length], examples.map((e) => e.target)));
  return batch;
}

export interface Nlvr2TripletExample extends SeqRow {
  target: number;
}

/** Official nlvr2_triplet_collate: one row per statement (left regions, then right ones). */
export function nlvr2TripletCollate(examples: readonly Nlvr2TripletExample[]): Batch {
  const { batch } = collateRows(examples);
  batch.set('targets', i64([examples.length], examples.map((e) => e.target)));
  return batch;
}

export interface ReExample extends SeqRow {
  /** Index of the referred region (absent when evaluating on detected boxes). */
  target?: number;
}

/**
 * Official re_collate: obj_masks bool [B, Nmax] (true at padded regions), targets int64 [B, 1],
 * txt_lens and num_bbs int64 [B] (python lists officially).
 */
export function reCollate(examples: readonly ReExample[]): Batch {
  const { batch, layout } = collateRows(examples);
  const b = examples.length;
  const obj = padMask(layout.numBbs, layout.maxNbb);
  // Official order: obj_masks sits between img_pos_feat and attn_masks.
  const ordered: Batch = new Map();
  for (const [k, v] of batch) {
    if (k === 'attn_masks') ordered.set('obj_masks', obj);
    ordered.set(k, v);
  }
  const n = examples.filter((e) => e.target !== undefined).length;
  if (n !== 0 && n !== b) throw new Error(`collate: ${n} of ${b} RE rows have targets (all or none)`);
  if (n === b) ordered.set('targets', i64([b, 1], examples.map((e) => e.target!)));
  ordered.set('txt_lens', i64([b], layout.txtLens));
  ordered.set('num_bbs', i64([b], layout.numBbs));
  return ordered;
}

export interface VcrRow extends SeqRow {
  txtTypeIds: readonly number[];
  /** 1 = this candidate is the right one. */
  target: number;
}

export interface VcrExample {
  /** One row per candidate answer (Q->A) or rationale (QA->R). */
  rows: readonly VcrRow[];
}

/** Official vcr_collate: txt_type_ids, targets int64 [rows, 1]. */
export function vcrCollate(examples: readonly VcrExample[]): Batch {
  const rows = examples.flatMap((e) => e.rows);
  const { batch } = collateRows(rows);
  batch.set('targets', i64([rows.length, 1], rows.map((r) => r.target)));
  return batch;
}

export interface VcrEvalExample {
  /** 4 Q->A rows, then the QA->R rows (4 for val, 16 for test). */
  rows: readonly (SeqRow & { txtTypeIds: readonly number[] })[];
  qaTarget: number;
  qarTarget: number;
}

/** Official vcr_eval_collate: qa_targets / qar_targets int64 [n, 1]. */
export function vcrEvalCollate(examples: readonly VcrEvalExample[]): Batch {
  const { batch } = collateRows(examples.flatMap((e) => e.rows));
  batch.set('qa_targets', i64([examples.length, 1], examples.map((e) => e.qaTarget)));
  batch.set('qar_targets', i64([examples.length, 1], examples.map((e) => e.qarTarget)));
  return batch;
}

// ---------------------------------------------------------------------------------------------

/**
 * Per-row text lengths (incl. [CLS]/[SEP]) and region counts of a collated batch. Uses
 * `txt_lens`/`num_bbs` when present (RE); otherwise reads them from attn_masks and gather_index:
 * a row's first slot whose gather index differs from the slot number is its first region. When a
 * row has none, it is either text-only (total < Lt) or its text fills Lt (regions follow directly).
 */
export function batchLengths(batch: Batch): { txtLens: number[]; numBbs: number[] } {
  const tl = batch.get('txt_lens');
  const nb = batch.get('num_bbs');
  if (tl && nb) return { txtLens: Array.from(tl.data, Number), numBbs: Array.from(nb.data, Number) };
  const attn = batch.get('attn_masks');
  const gather = batch.get('gather_index');
  const ids = batch.get('input_ids');
  if (!attn || !gather || !ids) throw new Error('batchLengths: batch needs attn_masks, gather_index and input_ids');
  const [b, lj] = attn.shape;
  const lt = ids.shape[1];
  const txtLens: number[] = [];
  const numBbs: number[] = [];
  for (let i = 0; i < b; i++) {
    let total = 0;
    for (let j = 0; j < lj; j++) total += Number(attn.data[i * lj + j]);
    let t = -1;
    for (let j = 0; j < total; j++) {
      if (Number(gather.data[i * lj + j]) !== j) {
        t = j;
        break;
      }
    }
    if (t < 0) t = Math.min(total, lt);
    txtLens.push(t);
    numBbs.push(total - t);
  }
  return { txtLens, numBbs };
}
