/**
 * Pre-training masking, drawn exactly like the official `data/mlm.py::random_word` and
 * `data/mrm.py::_get_img_mask`, with every draw taken from an `Rng`.
 *
 * MLM: each caption wordpiece ([CLS]/[SEP] are not part of the list) is selected with p 0.15
 * by ONE uniform draw u; the same draw decides what happens to it (u/0.15 < 0.8: [MASK],
 * < 0.9: a random id from v_range, else kept). Only a `random` decision draws a second number
 * (the replacement id). When nothing is selected, wordpiece 0 becomes [MASK] and is predicted.
 *
 * MRM: each region is masked with p 0.15; when none is, one uniformly chosen region is forced.
 * Masked features are zeroed after the targets were read (`maskRegionFeatures`).
 *
 * A masking outcome is kept as explicit decisions, so the same apply step serves fresh draws and
 * replays of recorded ones (the golden fixtures).
 */
import type { Rng } from '../util/rng.js';

/** The special ids of bert-base-cased (spec 3.4); `vRange` is [first, end) of MLM random ids. */
export interface SpecialIds {
  cls: number;
  sep: number;
  mask: number;
  vRange: readonly [number, number];
}

export const BERT_BASE_CASED_IDS: SpecialIds = { cls: 101, sep: 102, mask: 103, vRange: [106, 28996] };

export const MASK_PROB = 0.15;

export type MlmKind = 'mask' | 'random' | 'keep';

/** What happened to one selected wordpiece. `replacement` is the id fed to the model. */
export interface MlmDecision {
  position: number;
  kind: MlmKind;
  replacement: number;
}

export interface MlmMasking {
  /** Selected wordpieces in increasing position order. */
  decisions: MlmDecision[];
  /** True when nothing was selected by chance and wordpiece 0 was forced to [MASK]. */
  forcedFirstToken: boolean;
}

export interface MaskedText {
  /** Wordpieces after masking (no [CLS]/[SEP]). */
  tokens: number[];
  /** Original id at selected positions, -1 elsewhere (same length as `tokens`). */
  labels: number[];
}

function checkTokens(tokens: readonly number[], what: string): void {
  if (tokens.length === 0) throw new Error(`${what}: cannot mask an empty wordpiece list (the official code needs at least one wordpiece)`);
}

/** Draw the MLM decisions for one caption (official `random_word`). */
export function drawMlmMasking(tokens: readonly number[], rng: Rng, ids: SpecialIds, maskProb = MASK_PROB): MlmMasking {
  checkTokens(tokens, 'drawMlmMasking');
  const [lo, hi] = ids.vRange;
  if (!(hi > lo)) throw new Error(`drawMlmMasking: empty v_range [${lo}, ${hi})`);
  const decisions: MlmDecision[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const u = rng.uniform();
    if (u >= maskProb) continue;
    const p = u / maskProb;
    if (p < 0.8) decisions.push({ position: i, kind: 'mask', replacement: ids.mask });
    else if (p < 0.9) decisions.push({ position: i, kind: 'random', replacement: rng.int(lo, hi) });
    else decisions.push({ position: i, kind: 'keep', replacement: tokens[i] });
  }
  if (decisions.length > 0) return { decisions, forcedFirstToken: false };
  return { decisions: [{ position: 0, kind: 'mask', replacement: ids.mask }], forcedFirstToken: true };
}

/** Apply decisions (drawn or recorded) to a caption; labels keep the original ids. */
export function applyMlmMasking(tokens: readonly number[], decisions: readonly MlmDecision[]): MaskedText {
  checkTokens(tokens, 'applyMlmMasking');
  const out = tokens.slice();
  const labels = new Array<number>(tokens.length).fill(-1);
  for (const d of decisions) {
    if (!Number.isInteger(d.position) || d.position < 0 || d.position >= tokens.length) {
      throw new Error(`applyMlmMasking: position ${d.position} is outside the ${tokens.length} wordpieces`);
    }
    if (d.kind === 'keep' && d.replacement !== tokens[d.position]) {
      throw new Error(`applyMlmMasking: 'keep' at position ${d.position} must feed the original id ${tokens[d.position]}, got ${d.replacement}`);
    }
    labels[d.position] = tokens[d.position];
    out[d.position] = d.replacement;
  }
  return { tokens: out, labels };
}

/** Official `random_word`: draw and apply in one step. */
export function randomWord(tokens: readonly number[], rng: Rng, ids: SpecialIds, maskProb = MASK_PROB): MaskedText & MlmMasking {
  const m = drawMlmMasking(tokens, rng, ids, maskProb);
  return { ...applyMlmMasking(tokens, m.decisions), ...m };
}

/** Official `_get_img_mask`: 1 = region masked. */
export function drawImgMask(nbb: number, rng: Rng, maskProb = MASK_PROB): Uint8Array {
  if (!Number.isInteger(nbb) || nbb <= 0) throw new Error(`drawImgMask: need at least one region, got nbb=${nbb}`);
  const mask = new Uint8Array(nbb);
  let any = false;
  for (let i = 0; i < nbb; i++) {
    if (rng.uniform() < maskProb) {
      mask[i] = 1;
      any = true;
    }
  }
  if (!any) mask[rng.int(nbb)] = 1;
  return mask;
}

/** Build an image mask from recorded region indices (replay). */
export function imgMaskFromRegions(nbb: number, regions: readonly number[]): Uint8Array {
  const mask = new Uint8Array(nbb);
  for (const r of regions) {
    if (!Number.isInteger(r) || r < 0 || r >= nbb) throw new Error(`imgMaskFromRegions: region ${r} is outside the ${nbb} regions`);
    mask[r] = 1;
  }
  return mask;
}

/**
 * MRM feature masking for one example: `targets` are the ORIGINAL rows of the masked regions
 * (row order), `masked` is a copy of the features with those rows zeroed. Positions are not
 * masked (official `_get_feat_target` / `_mask_img_feat`).
 */
export function maskRegionFeatures(feat: Float32Array, imgMask: Uint8Array, dim: number): { masked: Float32Array; targets: Float32Array } {
  const nbb = imgMask.length;
  if (feat.length !== nbb * dim) throw new Error(`maskRegionFeatures: features have ${feat.length} values, expected ${nbb} regions x ${dim}`);
  const masked = feat.slice();
  let n = 0;
  for (let r = 0; r < nbb; r++) if (imgMask[r]) n++;
  const targets = new Float32Array(n * dim);
  let k = 0;
  for (let r = 0; r < nbb; r++) {
    if (!imgMask[r]) continue;
    targets.set(feat.subarray(r * dim, (r + 1) * dim), k * dim);
    masked.fill(0, r * dim, (r + 1) * dim);
    k++;
  }
  return { masked, targets };
}

/** Rows of a per-region table (soft labels) at masked regions, row order (official `_get_targets`). */
export function selectMaskedRows(table: Float32Array, imgMask: Uint8Array, dim: number): Float32Array {
  const nbb = imgMask.length;
  if (table.length !== nbb * dim) throw new Error(`selectMaskedRows: table has ${table.length} values, expected ${nbb} rows x ${dim}`);
  let n = 0;
  for (let r = 0; r < nbb; r++) if (imgMask[r]) n++;
  const out = new Float32Array(n * dim);
  let k = 0;
  for (let r = 0; r < nbb; r++) {
    if (!imgMask[r]) continue;
    out.set(table.subarray(r * dim, (r + 1) * dim), k * dim);
    k++;
  }
  return out;
}

/**
 * Joint (non-conditional) masking for the ablation: text AND regions of the same example are
 * masked, each with its own official rule. The paper's conditional masking never does this.
 */
export function drawJointMasking(tokens: readonly number[], nbb: number, rng: Rng, ids: SpecialIds, maskProb = MASK_PROB): { text: MaskedText & MlmMasking; imgMask: Uint8Array } {
  const text = randomWord(tokens, rng, ids, maskProb);
  const imgMask = drawImgMask(nbb, rng, maskProb);
  return { text, imgMask };
}
