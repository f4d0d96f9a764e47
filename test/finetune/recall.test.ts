import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { rankOf, recallAtK, retrievalMetrics, retrievalRanks, type ScoreMatrix } from '../../src/finetune/recall.js';

const near = (a: number, b: number) => assert.ok(Math.abs(a - b) <= 1e-12, `${a} vs ${b}`);

/**
 * 4 captions x 3 images. Ground truth: c0, c1 -> A; c2 -> B; c3 -> C.
 *          A     B     C
 *   c0   0.9   0.1   0.2     A ranked 0
 *   c1   0.3   0.8   0.5     A ranked 2 (B, C above)
 *   c2   0.4   0.6   0.7     B ranked 1 (C above)
 *   c3   0.0   0.2   0.1     C ranked 1 (B above)
 * Text retrieval, per image, the best rank of its captions among the 4 (column order):
 *   A: column (0.9, 0.3, 0.4, 0.0): c0 rank 0 -> 0
 *   B: column (0.1, 0.8, 0.6, 0.2): c2 rank 1 -> 1
 *   C: column (0.2, 0.5, 0.7, 0.1): c3 rank 3 -> 3
 */
function handMade(): { m: ScoreMatrix; txt2img: Record<string, string> } {
  return {
    m: {
      txtIds: ['c0', 'c1', 'c2', 'c3'],
      imgIds: ['A', 'B', 'C'],
      scores: new Float32Array([0.9, 0.1, 0.2, 0.3, 0.8, 0.5, 0.4, 0.6, 0.7, 0.0, 0.2, 0.1]),
    },
    txt2img: { c0: 'A', c1: 'A', c2: 'B', c3: 'C' },
  };
}

describe('R@K on a hand-made score matrix', () => {
  it('ranks the ground truth in both directions', () => {
    const { m, txt2img } = handMade();
    const r = retrievalRanks(m, txt2img);
    assert.deepEqual(r.imageRanks, [0, 2, 1, 1]);
    assert.deepEqual(r.textRanks, [0, 1, 3]);
  });

  it('R@1/5/10 and the means (recall@K counts ranks below K)', () => {
    const { m, txt2img } = handMade();
    const met = retrievalMetrics(m, txt2img);
    near(met.img_r1, 1 / 4);
    near(met.img_r5, 1);
    near(met.img_r10, 1);
    near(met.txt_r1, 1 / 3);
    near(met.txt_r5, 1);
    near(met.txt_r10, 1);
    near(met.img_r_mean, (1 / 4 + 1 + 1) / 3);
    near(met.txt_r_mean, (1 / 3 + 1 + 1) / 3);
    near(met.r_mean, (met.img_r_mean + met.txt_r_mean) / 2);
    // recall at 2 and 3 for the IR ranks [0, 2, 1, 1]
    near(recallAtK([0, 2, 1, 1], 2), 3 / 4);
    near(recallAtK([0, 2, 1, 1], 3), 1);
  });

  it('ties are broken by position (a stable sort): earlier entries rank first', () => {
    const s = [0.5, 0.7, 0.5, 0.5];
    assert.equal(rankOf(4, (j) => s[j], 0), 1);
    assert.equal(rankOf(4, (j) => s[j], 2), 2);
    assert.equal(rankOf(4, (j) => s[j], 3), 3);
    assert.equal(rankOf(4, (j) => s[j], 1), 0);
  });

  it('a larger gallery: R@10 counts ranks 0..9 only', () => {
    // One caption, 12 images, its image scored 11th best.
    const scores = new Float32Array(12).map((_, j) => 12 - j);
    const m: ScoreMatrix = { txtIds: ['t'], imgIds: Array.from({ length: 12 }, (_, j) => `i${j}`), scores };
    const txt2img = { t: 'i10' };
    // The other images have no caption: text retrieval is undefined for them.
    assert.throws(() => retrievalMetrics(m, txt2img), /gallery image 'i0' has no ground-truth caption/);
    const only = retrievalRanks({ txtIds: ['t'], imgIds: ['i10'], scores: new Float32Array([1]) }, txt2img);
    assert.deepEqual(only.imageRanks, [0]);
    assert.equal(rankOf(12, (j) => scores[j], 10), 10);
    assert.equal(recallAtK([10], 10), 0);
    assert.equal(recallAtK([9], 10), 1);
  });
});

describe('retrieval metric errors', () => {
  it('a caption without a positive in the gallery is named', () => {
    const { m } = handMade();
    assert.throws(() => retrievalMetrics(m, { c0: 'A', c1: 'A', c2: 'B', c3: 'Z' }), /caption 'c3' has no positive in the gallery \(its image 'Z' is not among the 3 gallery images\)/);
    assert.throws(() => retrievalMetrics(m, { c0: 'A', c1: 'A', c2: 'B' }), /caption 'c3' has no ground-truth image/);
  });

  it('a malformed matrix is reported', () => {
    const { m, txt2img } = handMade();
    assert.throws(() => retrievalMetrics({ ...m, scores: new Float32Array(11) }, txt2img), /11 scores, expected 4 captions x 3 images = 12/);
    const nan = m.scores.slice();
    nan[4] = Number.NaN;
    assert.throws(() => retrievalMetrics({ ...m, scores: nan }, txt2img), /caption 'c1' x image 'B' is NaN/);
    assert.throws(() => retrievalMetrics({ ...m, txtIds: ['c0', 'c0', 'c2', 'c3'] }, txt2img), /caption 'c0' appears twice/);
    assert.throws(() => recallAtK([], 1), /no ranks/);
  });
});
