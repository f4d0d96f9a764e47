/**
 * What the region detector takes and gives. An image is decoded RGB pixels; a detection is the
 * reference's final selection (rows in descending confidence); `Regions` is the part of it UNITER
 * reads (the first nbb rows, float16-rounded as an img_db stores them).
 */
import type { RegionFeatures } from '../api/inputs.js';

/** Decoded pixels: `data` is height x width x 3 bytes, RGB, row-major. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** The detector's final selection for one image; arrays are row-major, n = numBoxes rows. */
export interface Detection {
  /** Original image size in pixels. */
  height: number;
  width: number;
  numBoxes: number;
  /** [n, 4] x1, y1, x2, y2 in original-image pixels. */
  boxes: Float32Array;
  /** [n, 6] UNITER's norm_bb: x1/W, y1/H, x2/W, y2/H, w/W, h/H. */
  normBb: Float32Array;
  /** [n, featureDim] pooled res5 features. */
  features: Float32Array;
  featureDim: number;
  /** [n] best object-class probability (UNITER's conf). */
  conf: Float32Array;
  /** [n, labelDim] class probabilities, background FIRST (UNITER's soft_labels; labelDim = classes + 1). */
  softLabels: Float32Array;
  labelDim: number;
  /** [n] object class ids (0..classes-1, background excluded) and attribute ids. */
  objectIds: Int32Array;
  attrIds: Int32Array;
  attrProbs: Float32Array;
  /** Class and attribute names when the detector folder carries them. */
  objectNames?: string[];
  attributeNames?: string[];
}

/** UNITER's box-count rule: keep boxes with conf > confTh, at least minBb, at most maxBb. */
export interface BoxCountRule {
  confTh: number;
  minBb: number;
  maxBb: number;
}

export const UNITER_BOX_RULE: BoxCountRule = { confTh: 0.2, minBb: 10, maxBb: 100 };

/** What `Uniter` scoring takes ({nbb, features, normBb}), with the detection it came from. */
export interface Regions extends RegionFeatures {
  detection: Detection;
}
