/**
 * TEST HELPER, not a detector: a `RegionDetector` that cuts the image into a g x g grid and
 * describes each cell by statistics of its pixels, so extraction tests get real, deterministic
 * values that depend on the image (features, boxes, confidences, soft labels) without a network.
 * Rows come in descending confidence, as the real detector returns them.
 */
import { VG_CONFIG, type DetectorConfig } from '../../src/detector/config.js';
import type { Detection, RgbImage } from '../../src/detector/types.js';
import type { RegionDetector } from '../../src/detector/extract.js';

export const GRID_FEATURE_DIM = 8;
export const GRID_LABEL_DIM = 5;

export class GridDetector implements RegionDetector {
  readonly config: DetectorConfig = VG_CONFIG;
  /** Sizes of the images seen, in call order (tests count calls with it). */
  readonly calls: Array<{ width: number; height: number }> = [];

  constructor(
    private readonly grid = 4,
    /** Make detect() fail (throw) or return a NaN feature for chosen images. */
    private readonly sabotage?: (img: RgbImage) => 'throw' | 'nan' | null,
  ) {}

  async detect(img: RgbImage): Promise<Detection> {
    this.calls.push({ width: img.width, height: img.height });
    const s = this.sabotage?.(img);
    if (s === 'throw') throw new Error('grid detector: sabotaged');
    const g = this.grid;
    const rows: Array<{ box: number[]; feat: number[]; probs: number[] }> = [];
    for (let gy = 0; gy < g; gy++) {
      for (let gx = 0; gx < g; gx++) {
        const x1 = Math.floor((gx * img.width) / g);
        const x2 = Math.floor(((gx + 1) * img.width) / g);
        const y1 = Math.floor((gy * img.height) / g);
        const y2 = Math.floor(((gy + 1) * img.height) / g);
        const sum = [0, 0, 0];
        let lum2 = 0;
        let lo = 255;
        let hi = 0;
        for (let y = y1; y < y2; y++) {
          for (let x = x1; x < x2; x++) {
            const p = (y * img.width + x) * 3;
            const l = (img.data[p] + img.data[p + 1] + img.data[p + 2]) / 3;
            for (let c = 0; c < 3; c++) sum[c] += img.data[p + c];
            lum2 += l * l;
            lo = Math.min(lo, l);
            hi = Math.max(hi, l);
          }
        }
        const n = (x2 - x1) * (y2 - y1);
        const mean = sum.map((v) => v / n);
        const lum = (mean[0] + mean[1] + mean[2]) / 3;
        const std = Math.sqrt(Math.max(0, lum2 / n - lum * lum));
        const feat = [mean[0] / 255, mean[1] / 255, mean[2] / 255, std / 128, lo / 255, hi / 255, gx / g, gy / g];
        // Background first, then four "classes" driven by colour and texture.
        const logits = [1, mean[0] / 40, mean[1] / 40, mean[2] / 40, std / 20];
        const m = Math.max(...logits);
        const e = logits.map((v) => Math.exp(v - m));
        const z = e.reduce((a, b) => a + b, 0);
        rows.push({ box: [x1, y1, x2, y2], feat, probs: e.map((v) => v / z) });
      }
    }
    const conf = (r: (typeof rows)[number]) => Math.max(...r.probs.slice(1));
    rows.sort((a, b) => conf(b) - conf(a));
    const nb = rows.length;
    const det: Detection = {
      height: img.height,
      width: img.width,
      numBoxes: nb,
      boxes: Float32Array.from(rows.flatMap((r) => r.box)),
      normBb: Float32Array.from(
        rows.flatMap(({ box: [x1, y1, x2, y2] }) => [x1 / img.width, y1 / img.height, x2 / img.width, y2 / img.height, (x2 - x1) / img.width, (y2 - y1) / img.height]),
      ),
      features: Float32Array.from(rows.flatMap((r) => r.feat)),
      featureDim: GRID_FEATURE_DIM,
      conf: Float32Array.from(rows.map(conf)),
      softLabels: Float32Array.from(rows.flatMap((r) => r.probs)),
      labelDim: GRID_LABEL_DIM,
      objectIds: Int32Array.from(rows.map((r) => r.probs.slice(1).indexOf(conf(r)))),
      attrIds: new Int32Array(nb),
      attrProbs: new Float32Array(nb).fill(1),
    };
    if (s === 'nan') det.features[3] = NaN;
    return det;
  }
}
