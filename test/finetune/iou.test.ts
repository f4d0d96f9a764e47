import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { computeIoU, isCorrectGrounding, regionBoxXywh } from '../../src/finetune/iou.js';
import { positionFeatures } from '../../src/data/types.js';

const near = (a: number, b: number, tol = 1e-12) => assert.ok(Math.abs(a - b) <= tol, `${a} vs ${b}`);

describe('official inclusive-pixel IoU', () => {
  it('identical boxes: 1', () => {
    assert.equal(computeIoU([10, 20, 30, 40], [10, 20, 30, 40]), 1);
  });

  it('intersection over inclusive corners (+1), the union over plain w*h areas', () => {
    // a covers x 0..9, b x 5..14: inclusive overlap 5..9 = 9 - 5 + 1 = 5 pixels; same in y.
    near(computeIoU([0, 0, 10, 10], [5, 5, 10, 10]), 25 / 175);
    near(computeIoU([0, 0, 10, 10], [5, 0, 10, 10]), 50 / 150);
    // Nested box: inter = the inner area, union = the outer area.
    near(computeIoU([0, 0, 10, 10], [2, 2, 4, 4]), 16 / 100);
  });

  it('an overlap of one pixel or less counts as none (strict test on the inclusive corners)', () => {
    // a covers x 0..9, b x 9..18: inclusive left = right = 9 -> no intersection, although the
    // boxes share a one-pixel column (a plain IoU would give 10 / 190).
    assert.equal(computeIoU([0, 0, 10, 10], [9, 0, 10, 10]), 0);
    // Same along y, and for a fractional overlap of 0.5 pixel.
    assert.equal(computeIoU([0, 0, 10, 10], [0, 9, 10, 10]), 0);
    assert.equal(computeIoU([0, 0, 10, 10], [9.5, 0, 10, 10]), 0);
    // Overlaps just above one pixel count in full: 1.5 x 10 and 2 x 10.
    near(computeIoU([0, 0, 10, 10], [8.5, 0, 10, 10]), 15 / 185);
    near(computeIoU([0, 0, 10, 10], [8, 0, 10, 10]), 20 / 180);
    assert.equal(computeIoU([0, 0, 10, 10], [50, 50, 10, 10]), 0);
  });

  it('is symmetric and works with fractional pixel boxes', () => {
    const a = [3.5, 7.25, 20.5, 11] as const;
    const b = [10, 2, 30.75, 15.5] as const;
    near(computeIoU(a, b), computeIoU(b, a));
    // Inclusive corners: x max(3.5, 10) = 10 .. min(23, 39.75) = 23 -> 14; y 7.25 .. min(17.25, 16.5) -> 10.25.
    near(computeIoU(a, b), (14 * 10.25) / (20.5 * 11 + 30.75 * 15.5 - 14 * 10.25));
  });

  it('correct means IoU strictly above 0.5', () => {
    // Shifted by a third of the width: inter 20 x 10, union 400 -> exactly 0.5, not correct.
    near(computeIoU([0, 0, 30, 10], [10, 0, 30, 10]), 0.5);
    assert.equal(isCorrectGrounding(computeIoU([0, 0, 30, 10], [10, 0, 30, 10])), false);
    // One pixel less shift: 21 x 10 / 390 > 0.5, correct.
    near(computeIoU([0, 0, 30, 10], [9, 0, 30, 10]), 210 / 390);
    assert.equal(isCorrectGrounding(computeIoU([0, 0, 30, 10], [9, 0, 30, 10])), true);
    assert.equal(isCorrectGrounding(0.5000001), true);
  });

  it('rejects malformed boxes naming which one', () => {
    assert.throws(() => computeIoU([0, 0, 10] as unknown as [number, number, number, number], [0, 0, 1, 1]), /first box.*4 finite numbers/);
    assert.throws(() => computeIoU([0, 0, 1, 1], [0, 0, -1, 1]), /second box.*negative/);
    assert.throws(() => computeIoU([0, 0, 1, 1], [0, Number.NaN, 1, 1]), /second box/);
  });
});

describe('region box from the 7-d position feature', () => {
  it('scales x1, y1 and the stored w, h columns back to pixels (official ReEvalDataset)', () => {
    const W = 640;
    const H = 480;
    // Two regions as an img_db stores them: [x1/W, y1/H, x2/W, y2/H, w/W, h/H].
    const boxes = [
      [64, 48, 192, 240],
      [320, 0, 640, 120],
    ];
    const normBb = new Float32Array(boxes.flatMap(([x1, y1, x2, y2]) => [x1 / W, y1 / H, x2 / W, y2 / H, (x2 - x1) / W, (y2 - y1) / H]));
    const pos = positionFeatures(normBb, 2);
    boxes.forEach(([x1, y1, x2, y2], r) => {
      const [x, y, w, h] = regionBoxXywh(pos, r, W, H);
      near(x, x1, 1e-4);
      near(y, y1, 1e-4);
      near(w, x2 - x1, 1e-4);
      near(h, y2 - y1, 1e-4);
    });
  });

  it('reports bad rows and sizes', () => {
    const pos = new Float32Array(14);
    assert.throws(() => regionBoxXywh(pos, 2, 10, 10), /region 2 out of range \(2 regions\)/);
    assert.throws(() => regionBoxXywh(pos, 0, 0, 10), /image size must be positive/);
    assert.throws(() => regionBoxXywh(new Float32Array(5), 0, 10, 10), /not a multiple of 7/);
  });
});
