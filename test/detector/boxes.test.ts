import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/util/rng.js';
import { applyDeltas, generateCellAnchors, gridAnchors, nms, selectDetections } from '../../src/detector/boxes.js';
import { resizedSize } from '../../src/detector/preprocess.js';
import { windowOut } from '../../src/engine/ops.js';

test('resize follows the reference: shortest edge, max-size rule, int(x + 0.5)', () => {
  assert.deepEqual(resizedSize(150, 200, 112, 200), [112, 149]);
  assert.deepEqual(resizedSize(150, 60, 112, 200), [200, 80]);
  assert.deepEqual(resizedSize(600, 800, 600, 1000), [600, 800]);
  assert.deepEqual(resizedSize(480, 640, 600, 1000), [600, 800]);
  assert.deepEqual(resizedSize(300, 1200, 600, 1000), [250, 1000]);
  assert.deepEqual(resizedSize(500, 500, 600, 1000), [600, 600]);
});

test('res4 size follows the conv/ceil-pool chain (600x800 -> 38x50, 901x600 -> 57x38)', () => {
  const res4 = (n: number) => {
    let s = windowOut(n, 7, 2, 3) as number;
    s = windowOut(s, 3, 2, 0, 1, true) as number;
    s = windowOut(s, 1, 2, 0) as number;
    return windowOut(s, 1, 2, 0) as number;
  };
  assert.deepEqual([res4(600), res4(800)], [38, 50]);
  assert.deepEqual([res4(901), res4(600)], [57, 38]);
});

test('cell anchors: sizes outer, ratios inner, area size^2, centred', () => {
  const a = generateCellAnchors([64, 128], [0.5, 1, 2]);
  assert.equal(a.length, 24);
  for (let i = 0; i < 6; i++) {
    const w = a[i * 4 + 2] - a[i * 4];
    const h = a[i * 4 + 3] - a[i * 4 + 1];
    const size = i < 3 ? 64 : 128;
    assert.ok(Math.abs(w * h - size * size) < 1e-2);
    assert.ok(Math.abs(h / w - [0.5, 1, 2][i % 3]) < 1e-5);
  }
  const grid = gridAnchors(a, 2, 3, 16, 0);
  // index (y * fw + x) * A + a: anchor 0 of cell (y=1, x=2) is shifted by (32, 16).
  const idx = (1 * 3 + 2) * 6;
  assert.equal(grid[idx * 4], Math.fround(a[0] + 32));
  assert.equal(grid[idx * 4 + 1], Math.fround(a[1] + 16));
});

test('zero deltas give the box back; dw is clamped at log(1000/16)', () => {
  const boxes = Float32Array.from([10, 20, 50, 60]);
  assert.deepEqual(Array.from(applyDeltas(new Float32Array(4), boxes, 1, [1, 1, 1, 1])), [10, 20, 50, 60]);
  const big = applyDeltas(Float32Array.from([0, 0, 100, 0]), boxes, 1, [1, 1, 1, 1]);
  assert.ok(Math.abs(big[2] - big[0] - 40 * (1000 / 16)) < 0.05);
});

function bruteNms(boxes: Float32Array, scores: number[], th: number): number[] {
  const order = scores.map((s, i) => [s, i] as const).sort((p, q) => q[0] - p[0] || p[1] - q[1]).map((p) => p[1]);
  const keep: number[] = [];
  const iou = (i: number, j: number) => {
    const w = Math.max(0, Math.min(boxes[i * 4 + 2], boxes[j * 4 + 2]) - Math.max(boxes[i * 4], boxes[j * 4]));
    const h = Math.max(0, Math.min(boxes[i * 4 + 3], boxes[j * 4 + 3]) - Math.max(boxes[i * 4 + 1], boxes[j * 4 + 1]));
    const area = (k: number) => (boxes[k * 4 + 2] - boxes[k * 4]) * (boxes[k * 4 + 3] - boxes[k * 4 + 1]);
    return (w * h) / (area(i) + area(j) - w * h);
  };
  for (const i of order) if (keep.every((k) => !(iou(k, i) > th))) keep.push(i);
  return keep;
}

test('NMS keeps what a brute-force greedy pass keeps, in descending score order', () => {
  const rng = new Rng(7, 'nms');
  for (let trial = 0; trial < 20; trial++) {
    const n = 60;
    const boxes = new Float32Array(n * 4);
    const scores: number[] = [];
    for (let i = 0; i < n; i++) {
      const x = rng.uniform() * 100;
      const y = rng.uniform() * 100;
      boxes.set([x, y, x + 5 + rng.uniform() * 40, y + 5 + rng.uniform() * 40], i * 4);
      scores.push(rng.uniform());
    }
    for (const th of [0.3, 0.5, 0.7]) assert.deepEqual(nms(boxes, scores, th), bruteNms(boxes, scores, th));
  }
});

test('selection falls back to the next NMS threshold when too few boxes survive, and never exceeds the maximum', () => {
  // 6 proposals, 2 classes + background: three pairs of heavily overlapping boxes.
  const proposals = Float32Array.from([0, 0, 10, 10, 1, 0, 11, 10, 30, 30, 40, 40, 31, 30, 41, 40, 60, 60, 70, 70, 61, 60, 71, 70]);
  const probs = new Float32Array(6 * 3);
  for (let i = 0; i < 6; i++) probs.set([0.9 - i * 0.1, 0.05, 0.05 + i * 0.1], i * 3);
  const deltas = new Float32Array(6 * 2 * 4);
  const strict = selectDetections(probs, deltas, proposals, 6, 2, 100, 100, [10, 10, 5, 5], [0.3, 0.95], 5, 10);
  assert.deepEqual(strict.thresholdsTried.map(Math.fround), [0.3, 0.95].map(Math.fround));
  assert.equal(strict.keep.length, 6);
  const capped = selectDetections(probs, deltas, proposals, 6, 2, 100, 100, [10, 10, 5, 5], [0.3, 0.95], 5, 4);
  assert.deepEqual(capped.keep, [0, 1, 2, 3]);
  const enough = selectDetections(probs, deltas, proposals, 6, 2, 100, 100, [10, 10, 5, 5], [0.3, 0.95], 3, 10);
  assert.deepEqual(enough.keep, [0, 2, 4]);
  // No threshold reaches the minimum: the last threshold's boxes stand (the reference would fail).
  const short = selectDetections(probs, deltas, proposals, 6, 2, 100, 100, [10, 10, 5, 5], [0.3], 5, 10);
  assert.deepEqual(short.keep, [0, 2, 4]);
});
