/**
 * The detector's input: the image resized so its shorter side is min_size_test unless the longer
 * would pass max_size_test (sizes rounded as the reference rounds them), by bilinear interpolation
 * on float pixels (torch's `interpolate(mode="bilinear", align_corners=False)`, no antialiasing,
 * float32 arithmetic), in BGR order minus the pixel means, divided by the stds.
 */
import type { DetectorConfig } from './config.js';
import type { RgbImage } from './types.js';

const f = Math.fround;

/** (h, w) after the shortest-edge resize, exactly as the reference computes and rounds it. */
export function resizedSize(height: number, width: number, minSize: number, maxSize: number): [number, number] {
  const scale = minSize / Math.min(height, width);
  let newh: number;
  let neww: number;
  if (height < width) [newh, neww] = [minSize, scale * width];
  else [newh, neww] = [scale * height, minSize];
  if (Math.max(newh, neww) > maxSize) {
    const s = maxSize / Math.max(newh, neww);
    newh *= s;
    neww *= s;
  }
  return [Math.trunc(newh + 0.5), Math.trunc(neww + 0.5)];
}

/** Source index and weights of each output position along one axis (torch's linear kernel). */
function axisWeights(inSize: number, outSize: number): { i0: Int32Array; i1: Int32Array; l0: Float32Array; l1: Float32Array } {
  const scale = f(inSize / outSize);
  const i0 = new Int32Array(outSize);
  const i1 = new Int32Array(outSize);
  const l0 = new Float32Array(outSize);
  const l1 = new Float32Array(outSize);
  for (let o = 0; o < outSize; o++) {
    // torch takes the scale in float32 but the source coordinate and the weight in double, rounding
    // only the weight: a float32 coordinate would move weights by an ulp of the coordinate (up to
    // ~0.01 in a pixel at 1000 px).
    let src = scale * (o + 0.5) - 0.5;
    if (src < 0) src = 0;
    const lo = Math.floor(src);
    i0[o] = lo;
    i1[o] = lo < inSize - 1 ? lo + 1 : lo;
    l1[o] = f(src - lo);
    l0[o] = f(1 - l1[o]);
  }
  return { i0, i1, l0, l1 };
}

export interface PreprocessedImage {
  /** [3, h, w] planar, BGR, normalised. */
  data: Float32Array;
  height: number;
  width: number;
  rawHeight: number;
  rawWidth: number;
  /** raw / resized size per axis, float32: maps boxes back to the original image. */
  scaleY: number;
  scaleX: number;
}

export function preprocess(image: RgbImage, cfg: DetectorConfig): PreprocessedImage {
  const { height: H, width: W, data: rgb } = image;
  if (rgb.length !== H * W * 3) throw new Error(`preprocess: image data has ${rgb.length} bytes, expected ${H} x ${W} x 3`);
  const [h, w] = resizedSize(H, W, cfg.input.min_size_test, cfg.input.max_size_test);
  if (h < 1 || w < 1) throw new Error(`preprocess: a ${W}x${H} image resizes to ${w}x${h} pixels, too thin for the detector`);
  const ys = axisWeights(H, h);
  const xs = axisWeights(W, w);
  const out = new Float32Array(3 * h * w);
  const mean = cfg.model.pixel_mean.map(f);
  const std = cfg.model.pixel_std.map(f);
  for (let c = 0; c < 3; c++) {
    // The network sees BGR whatever input.format says (its means are BGR; the reference reads
    // that key inconsistently), so RGB bytes are read in reverse channel order.
    const src = 2 - c;
    const plane = c * h * w;
    for (let y = 0; y < h; y++) {
      const r0 = ys.i0[y] * W * 3;
      const r1 = ys.i1[y] * W * 3;
      const hl0 = ys.l0[y];
      const hl1 = ys.l1[y];
      for (let x = 0; x < w; x++) {
        const c0 = xs.i0[x] * 3 + src;
        const c1 = xs.i1[x] * 3 + src;
        const wl0 = xs.l0[x];
        const wl1 = xs.l1[x];
        const top = f(f(wl0 * rgb[r0 + c0]) + f(wl1 * rgb[r0 + c1]));
        const bottom = f(f(wl0 * rgb[r1 + c0]) + f(wl1 * rgb[r1 + c1]));
        const v = f(f(hl0 * top) + f(hl1 * bottom));
        out[plane + y * w + x] = f(f(v - mean[c]) / std[c]);
      }
    }
  }
  return { data: out, height: h, width: w, rawHeight: H, rawWidth: W, scaleY: f(H / h), scaleX: f(W / w) };
}
