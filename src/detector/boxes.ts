/**
 * The data-dependent steps between and after the detector's graphs, in float32 arithmetic as the
 * reference does them (every operation rounded with Math.fround): anchors, box decoding, clipping,
 * greedy NMS, the RPN's proposal selection and the final detection selection.
 * Boxes are (x1, y1, x2, y2), row-major Float32Arrays of 4 values per box.
 */
const f = Math.fround;

/** Cell anchors for sizes (outer loop) x aspect ratios (inner), centred on the origin. */
export function generateCellAnchors(sizes: readonly number[], ratios: readonly number[]): Float32Array {
  const out: number[] = [];
  for (const size of sizes) {
    for (const r of ratios) {
      const w = Math.sqrt((size * size) / r);
      const h = r * w;
      out.push(-w / 2, -h / 2, w / 2, h / 2);
    }
  }
  return Float32Array.from(out);
}

/** Anchors over a fh x fw grid: index (y * fw + x) * A + a, cells shifted by (stride x, stride y). */
export function gridAnchors(cell: Float32Array, fh: number, fw: number, stride: number, offset: number): Float32Array {
  const A = cell.length / 4;
  const out = new Float32Array(fh * fw * A * 4);
  let k = 0;
  for (let y = 0; y < fh; y++) {
    const sy = f(offset * stride + y * stride);
    for (let x = 0; x < fw; x++) {
      const sx = f(offset * stride + x * stride);
      for (let a = 0; a < A; a++) {
        out[k++] = f(sx + cell[a * 4]);
        out[k++] = f(sy + cell[a * 4 + 1]);
        out[k++] = f(sx + cell[a * 4 + 2]);
        out[k++] = f(sy + cell[a * 4 + 3]);
      }
    }
  }
  return out;
}

/** dw, dh are clamped here so that exp() cannot blow up: a 16 px box grows to at most 1000 px. */
export const SCALE_CLAMP = f(Math.log(1000 / 16));

/**
 * Apply deltas [n, 4k] (dx, dy, dw, dh per class) to boxes [n, 4] with weights (wx, wy, ww, wh):
 * the result is [n, 4k]. Widths have no +1.
 */
export function applyDeltas(deltas: Float32Array, boxes: Float32Array, n: number, weights: readonly number[]): Float32Array {
  const k = deltas.length / n / 4;
  const out = new Float32Array(deltas.length);
  const [wx, wy, ww, wh] = weights.map(f);
  for (let i = 0; i < n; i++) {
    const x1 = boxes[i * 4];
    const y1 = boxes[i * 4 + 1];
    const w = f(boxes[i * 4 + 2] - x1);
    const h = f(boxes[i * 4 + 3] - y1);
    const cx = f(x1 + f(0.5 * w));
    const cy = f(y1 + f(0.5 * h));
    for (let c = 0; c < k; c++) {
      const j = (i * k + c) * 4;
      const dx = f(deltas[j] / wx);
      const dy = f(deltas[j + 1] / wy);
      const dw = Math.min(f(deltas[j + 2] / ww), SCALE_CLAMP);
      const dh = Math.min(f(deltas[j + 3] / wh), SCALE_CLAMP);
      const pcx = f(f(dx * w) + cx);
      const pcy = f(f(dy * h) + cy);
      const pw = f(f(Math.exp(dw)) * w);
      const ph = f(f(Math.exp(dh)) * h);
      out[j] = f(pcx - f(0.5 * pw));
      out[j + 1] = f(pcy - f(0.5 * ph));
      out[j + 2] = f(pcx + f(0.5 * pw));
      out[j + 3] = f(pcy + f(0.5 * ph));
    }
  }
  return out;
}

/** Clamp every box in place to [0, width] x [0, height] (to the size, not size - 1). */
export function clipBoxes(boxes: Float32Array, height: number, width: number): void {
  for (let i = 0; i < boxes.length; i += 4) {
    boxes[i] = Math.min(Math.max(boxes[i], 0), width);
    boxes[i + 1] = Math.min(Math.max(boxes[i + 1], 0), height);
    boxes[i + 2] = Math.min(Math.max(boxes[i + 2], 0), width);
    boxes[i + 3] = Math.min(Math.max(boxes[i + 3], 0), height);
  }
}

/** Indices ordered by descending score (ties keep index order). */
export function argsortDesc(scores: ArrayLike<number>, count = scores.length): number[] {
  const idx = Array.from({ length: count }, (_, i) => i);
  return idx.sort((a, b) => scores[b] - scores[a] || a - b);
}

/**
 * Greedy NMS in descending score order: a box is dropped when its IoU with a kept box is strictly
 * above `threshold` (IoU in float32, no +1 on sizes; 0/0 suppresses nothing). Returns kept indices.
 */
export function nms(boxes: Float32Array, scores: ArrayLike<number>, threshold: number): number[] {
  const n = scores.length;
  const order = argsortDesc(scores, n);
  const area = new Float32Array(n);
  for (let i = 0; i < n; i++) area[i] = f(f(boxes[i * 4 + 2] - boxes[i * 4]) * f(boxes[i * 4 + 3] - boxes[i * 4 + 1]));
  const suppressed = new Uint8Array(n);
  const keep: number[] = [];
  for (let a = 0; a < n; a++) {
    const i = order[a];
    if (suppressed[i]) continue;
    keep.push(i);
    const ix1 = boxes[i * 4];
    const iy1 = boxes[i * 4 + 1];
    const ix2 = boxes[i * 4 + 2];
    const iy2 = boxes[i * 4 + 3];
    for (let b = a + 1; b < n; b++) {
      const j = order[b];
      if (suppressed[j]) continue;
      const w = Math.max(0, f(Math.min(ix2, boxes[j * 4 + 2]) - Math.max(ix1, boxes[j * 4])));
      const h = Math.max(0, f(Math.min(iy2, boxes[j * 4 + 3]) - Math.max(iy1, boxes[j * 4 + 1])));
      const inter = f(w * h);
      const iou = f(inter / f(f(area[i] + area[j]) - inter));
      if (iou > threshold) suppressed[j] = 1;
    }
  }
  return keep;
}

export interface RpnSettings {
  preNmsTopk: number;
  postNmsTopk: number;
  nmsThresh: number;
  minSize: number;
  weights: readonly number[];
}

export interface Proposals {
  /** Every anchor decoded, unclipped [N, 4] (same order as the anchors). */
  all: Float32Array;
  /** Kept proposals [P, 4] in descending logit order, and their logits [P]. */
  boxes: Float32Array;
  logits: Float32Array;
  count: number;
}

/**
 * The RPN's proposals for one image: objectness [A, fh, fw] and deltas [4A, fh, fw] (raw conv
 * outputs) over the anchors; sort by logit, keep the top pre-NMS k, clip to the image, drop empty
 * boxes, NMS, keep the top post-NMS k.
 */
export function rpnProposals(objectness: Float32Array, deltas: Float32Array, anchors: Float32Array, A: number, fh: number, fw: number, imageH: number, imageW: number, s: RpnSettings): Proposals {
  const N = fh * fw * A;
  const logits = new Float32Array(N);
  const d = new Float32Array(N * 4);
  const hw = fh * fw;
  // Conv outputs are [A, fh, fw] and [A, 4, fh, fw]; proposals are indexed (y * fw + x) * A + a.
  for (let p = 0; p < hw; p++) {
    for (let a = 0; a < A; a++) {
      const i = p * A + a;
      logits[i] = objectness[a * hw + p];
      for (let k = 0; k < 4; k++) d[i * 4 + k] = deltas[(a * 4 + k) * hw + p];
    }
  }
  const all = applyDeltas(d, anchors, N, s.weights);
  const top = argsortDesc(logits).slice(0, Math.min(s.preNmsTopk, N));
  const cand: number[] = [];
  const candBoxes: number[] = [];
  for (const i of top) {
    const b = Float32Array.from(all.subarray(i * 4, i * 4 + 4));
    clipBoxes(b, imageH, imageW);
    if (f(b[2] - b[0]) > s.minSize && f(b[3] - b[1]) > s.minSize) {
      cand.push(i);
      candBoxes.push(...b);
    }
  }
  const cb = Float32Array.from(candBoxes);
  const candLogits = Float32Array.from(cand, (i) => logits[i]);
  const keep = nms(cb, candLogits, s.nmsThresh).slice(0, s.postNmsTopk);
  const boxes = new Float32Array(keep.length * 4);
  const kept = new Float32Array(keep.length);
  keep.forEach((k, r) => {
    boxes.set(cb.subarray(k * 4, k * 4 + 4), r * 4);
    kept[r] = candLogits[k];
  });
  return { all, boxes, logits: kept, count: keep.length };
}

export interface Selection {
  /** Arg-max object class (background excluded) and its probability, per proposal [P]. */
  maxClasses: Int32Array;
  maxScores: Float32Array;
  /** Deltas and decoded box of the arg-max class [P, 4]; clipped version = the NMS boxes. */
  boxDeltas: Float32Array;
  boxesUnclipped: Float32Array;
  maxBoxes: Float32Array;
  thresholdsTried: number[];
  /** Selected proposal indices, descending score, at most maxDetections. */
  keep: number[];
}

/**
 * The final selection: per proposal the best object class (background, the last column,
 * excluded) and its regressed box clipped to the image; one class-agnostic NMS with the first
 * threshold, cut to maxDetections; when fewer than minDetections remain, the next threshold.
 * Where no threshold reaches minDetections the reference fails; here the last threshold's result
 * stands (small images with few proposals still give their boxes).
 */
export function selectDetections(
  clsProbs: Float32Array,
  boxDeltas: Float32Array,
  proposals: Float32Array,
  P: number,
  K: number,
  imageH: number,
  imageW: number,
  weights: readonly number[],
  nmsThresholds: readonly number[],
  minDetections: number,
  maxDetections: number,
): Selection {
  const maxClasses = new Int32Array(P);
  const maxScores = new Float32Array(P);
  const rowDeltas = new Float32Array(P * 4);
  for (let i = 0; i < P; i++) {
    let best = 0;
    for (let c = 1; c < K; c++) if (clsProbs[i * (K + 1) + c] > clsProbs[i * (K + 1) + best]) best = c;
    maxClasses[i] = best;
    maxScores[i] = clsProbs[i * (K + 1) + best];
    rowDeltas.set(boxDeltas.subarray((i * K + best) * 4, (i * K + best) * 4 + 4), i * 4);
  }
  // Decoding one class per proposal gives the same numbers as decoding all and picking one.
  const boxesUnclipped = applyDeltas(rowDeltas, proposals, P, weights);
  const maxBoxes = Float32Array.from(boxesUnclipped);
  clipBoxes(maxBoxes, imageH, imageW);
  const thresholdsTried: number[] = [];
  let keep: number[] = [];
  for (const t of nmsThresholds) {
    thresholdsTried.push(t);
    keep = nms(maxBoxes, maxScores, t).slice(0, maxDetections);
    if (keep.length >= minDetections) break;
  }
  return { maxClasses, maxScores, boxDeltas: rowDeltas, boxesUnclipped, maxBoxes, thresholdsTried, keep };
}
