/**
 * Shared data contracts. A collated batch is a map from the official batch field names
 * (`input_ids`, `gather_index`, `ot_inputs.ot_scatter`, ...) to host tensors with the official
 * dtypes (int64 ids and masks, float32 features, bool for the official uint8 masks), exactly
 * the layout of `test/fixtures/golden/tiny/<task>/batch.safetensors`.
 */
import type { HostTensor } from '../engine/host.js';

export type Batch = Map<string, HostTensor>;

/** One image as stored in an img_db, already truncated to its `nbb` boxes, float32. */
export interface ImageRecord {
  /** Region count (rows of every array). */
  nbb: number;
  /** [nbb, imgDim] region features. */
  features: Float32Array;
  /** [nbb, 6] stored box columns [x1/W, y1/H, x2/W, y2/H, w/W, h/H]. */
  normBb: Float32Array;
  /** [nbb] detector confidence (optional in some stores). */
  conf?: Float32Array;
  /** [nbb, labelDim] detector class distribution incl. background column 0. */
  softLabels?: Float32Array;
}

/** Read access to images by file name (an img_db, an npz folder or an in-memory world). */
export interface ImageSource {
  readonly imgDim: number;
  readonly labelDim: number;
  has(fname: string): boolean;
  /** Throws an error naming the key when missing or corrupt. */
  get(fname: string): ImageRecord;
  /** Region count without decoding features. */
  nbb(fname: string): number;
  keys(): string[];
}

/** One text example as stored in a txt_db record (official field names kept as they are). */
export interface TextRecord {
  id: string;
  /** Wordpiece ids without [CLS]/[SEP]. */
  input_ids: number[];
  /** Image file name; NLVR2 uses a pair, VCR a pair (gt, det). */
  img_fname: string | string[];
  [field: string]: unknown;
}

export interface TextSource {
  ids(): string[];
  get(id: string): TextRecord;
  /** Number of wordpieces (id2len). */
  len(id: string): number;
}

/** The 7-d position feature: stored 6 columns plus the area w*h (computed in float32). */
export function positionFeatures(normBb: Float32Array, nbb: number): Float32Array {
  const out = new Float32Array(nbb * 7);
  for (let i = 0; i < nbb; i++) {
    for (let j = 0; j < 6; j++) out[i * 7 + j] = normBb[i * 6 + j];
    out[i * 7 + 6] = Math.fround(normBb[i * 6 + 4] * normBb[i * 6 + 5]);
  }
  return out;
}
