/**
 * Boxes for referring-expression evaluation, in the official conventions (`data/re.py`):
 *
 * - A box is COCO xywh in pixels: [x, y, w, h].
 * - A region's box comes back from its 7-d position feature [x1/W, y1/H, x2/W, y2/H, w/W, h/H, area]
 *   as [x1*W, y1*H, (w/W)*W, (h/H)*H], with W, H the image size from images.json.
 * - IoU uses the inclusive-pixel convention of the official `computeIoU`: a box covers pixels
 *   x .. x+w-1, the intersection's side is (right - left + 1) over those inclusive corners (the
 *   same length as the plain overlap), but it only counts when the inclusive corners are
 *   strictly ordered, so an overlap of one pixel or less (along either axis) counts as none.
 *   The union uses the plain areas w*h. A prediction is correct when IoU > 0.5 (strictly).
 */

/** COCO [x, y, w, h] in pixels. */
export type XywhBox = readonly [number, number, number, number];

/** A prediction counts as correct above this IoU (strictly), as the official evaluation. */
export const IOU_THRESHOLD = 0.5;

/** Width of the position feature (6 stored box columns + area). */
const POS_DIM = 7;

function checkBox(b: XywhBox, what: string): void {
  if (!Array.isArray(b) || b.length !== 4 || b.some((v) => typeof v !== 'number' || !Number.isFinite(v))) {
    throw new Error(`${what}: expected a box [x, y, w, h] of 4 finite numbers, got ${JSON.stringify(b)}`);
  }
  if (b[2] < 0 || b[3] < 0) throw new Error(`${what}: box ${JSON.stringify(b)} has a negative width or height`);
}

/**
 * Official inclusive-pixel IoU of two xywh boxes. Returns 0 when the union is empty (two
 * zero-area boxes), where the official code would divide by zero.
 */
export function computeIoU(a: XywhBox, b: XywhBox): number {
  checkBox(a, 'computeIoU: first box');
  checkBox(b, 'computeIoU: second box');
  const interX1 = Math.max(a[0], b[0]);
  const interY1 = Math.max(a[1], b[1]);
  const interX2 = Math.min(a[0] + a[2] - 1, b[0] + b[2] - 1);
  const interY2 = Math.min(a[1] + a[3] - 1, b[1] + b[3] - 1);
  const inter = interX1 < interX2 && interY1 < interY2 ? (interX2 - interX1 + 1) * (interY2 - interY1 + 1) : 0;
  const union = a[2] * a[3] + b[2] * b[3] - inter;
  return union > 0 ? inter / union : 0;
}

export function isCorrectGrounding(iou: number): boolean {
  return iou > IOU_THRESHOLD;
}

/**
 * Pixel xywh box of region `row` from a [nbb, 7] position-feature array and the image size,
 * exactly as the official ReEvalDataset converts `img_pos_feat` (x1, y1 and the stored w, h
 * columns scaled back; x2/y2 are not used).
 */
export function regionBoxXywh(posFeat: Float32Array, row: number, width: number, height: number): [number, number, number, number] {
  const nbb = posFeat.length / POS_DIM;
  if (!Number.isInteger(nbb)) throw new Error(`regionBoxXywh: position features have ${posFeat.length} values, not a multiple of ${POS_DIM}`);
  if (!Number.isInteger(row) || row < 0 || row >= nbb) throw new Error(`regionBoxXywh: region ${row} out of range (${nbb} regions)`);
  if (!(width > 0 && height > 0)) throw new Error(`regionBoxXywh: image size must be positive, got ${width} x ${height}`);
  const o = row * POS_DIM;
  return [posFeat[o] * width, posFeat[o + 1] * height, posFeat[o + 4] * width, posFeat[o + 5] * height];
}
