import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/util/rng.js';
import {
  BERT_BASE_CASED_IDS,
  type SpecialIds,
  applyMlmMasking,
  drawImgMask,
  drawJointMasking,
  drawMlmMasking,
  imgMaskFromRegions,
  maskRegionFeatures,
  randomWord,
  selectMaskedRows,
} from '../../src/data/masking.js';

const IDS: SpecialIds = { cls: 101, sep: 102, mask: 103, vRange: [106, 512] };

/** |observed - p| within `sigmas` binomial standard deviations. */
function assertRate(count: number, n: number, p: number, what: string, sigmas = 5): void {
  const sd = Math.sqrt((p * (1 - p)) / n);
  const rate = count / n;
  assert.ok(Math.abs(rate - p) <= sigmas * sd, `${what}: rate ${rate.toFixed(4)} vs expected ${p} (n=${n}, sd=${sd.toFixed(4)})`);
}

test('MLM: 15% selection, 80/10/10 split, labels and replacements follow the official rule', () => {
  const rng = new Rng(11, 'mlm');
  let tokens = 0;
  let selected = 0;
  const kinds = { mask: 0, random: 0, keep: 0 };
  for (let c = 0; c < 600; c++) {
    const caption = Array.from({ length: 40 }, () => rng.int(106, 512));
    const r = randomWord(caption, rng, IDS);
    assert.equal(r.tokens.length, caption.length);
    if (r.forcedFirstToken) continue; // statistics over chance selections only
    tokens += caption.length;
    for (let i = 0; i < caption.length; i++) {
      const d = r.decisions.find((x) => x.position === i);
      if (!d) {
        assert.equal(r.labels[i], -1);
        assert.equal(r.tokens[i], caption[i]);
        continue;
      }
      selected++;
      kinds[d.kind]++;
      assert.equal(r.labels[i], caption[i], 'label is the original id');
      assert.equal(r.tokens[i], d.replacement);
      if (d.kind === 'mask') assert.equal(d.replacement, 103);
      if (d.kind === 'keep') assert.equal(d.replacement, caption[i]);
      if (d.kind === 'random') assert.ok(d.replacement >= 106 && d.replacement < 512, `random id ${d.replacement} in v_range`);
    }
  }
  assertRate(selected, tokens, 0.15, 'selection');
  assertRate(kinds.mask, selected, 0.8, 'mask');
  assertRate(kinds.random, selected, 0.1, 'random');
  assertRate(kinds.keep, selected, 0.1, 'keep');
});

test('MLM: when nothing is selected, wordpiece 0 is forced to [MASK] with its label', () => {
  const rng = new Rng(12);
  let forced = 0;
  const n = 4000;
  for (let k = 0; k < n; k++) {
    const r = randomWord([777, 778], rng, { ...IDS, vRange: [106, 1000] });
    if (!r.forcedFirstToken) continue;
    forced++;
    assert.deepEqual(r.tokens, [103, 778]);
    assert.deepEqual(r.labels, [777, -1]);
    assert.deepEqual(r.decisions, [{ position: 0, kind: 'mask', replacement: 103 }]);
  }
  assertRate(forced, n, 0.85 * 0.85, 'forced (nothing selected in 2 tokens)');
  // maskProb 0: always forced.
  const z = randomWord([5, 6, 7], rng, IDS, 0);
  assert.equal(z.forcedFirstToken, true);
  assert.deepEqual(z.labels, [5, -1, -1]);
});

test('MLM: same seed gives the same masking; decisions replay to the same output', () => {
  const caption = Array.from({ length: 30 }, (_, i) => 200 + i);
  const a = randomWord(caption, new Rng(3, 'x'), BERT_BASE_CASED_IDS);
  const b = randomWord(caption, new Rng(3, 'x'), BERT_BASE_CASED_IDS);
  assert.deepEqual(a, b);
  const replay = applyMlmMasking(caption, drawMlmMasking(caption, new Rng(3, 'x'), BERT_BASE_CASED_IDS).decisions);
  assert.deepEqual(replay, { tokens: a.tokens, labels: a.labels });
  assert.throws(() => randomWord([], new Rng(1), IDS), /empty wordpiece list/);
  assert.throws(() => applyMlmMasking([1, 2], [{ position: 2, kind: 'mask', replacement: 103 }]), /position 2 is outside the 2 wordpieces/);
  assert.throws(() => applyMlmMasking([1, 2], [{ position: 0, kind: 'keep', replacement: 9 }]), /'keep' at position 0 must feed the original id 1/);
});

test('MRM: 15% of regions masked, and one region forced when none was drawn', () => {
  const rng = new Rng(13, 'mrm');
  let masked = 0;
  let total = 0;
  for (let k = 0; k < 500; k++) {
    const m = drawImgMask(36, rng);
    const n = m.reduce((s, v) => s + v, 0);
    assert.ok(n >= 1);
    masked += n;
    total += 36;
  }
  // The forced case adds a little mass (0.85^36 ~ 0.3% of examples): well inside the tolerance.
  assertRate(masked, total, 0.15, 'region masking');
  // One region: always exactly that region (by chance or forced).
  for (let k = 0; k < 50; k++) assert.deepEqual(Array.from(drawImgMask(1, rng)), [1]);
  // maskProb 0: exactly one region, uniformly chosen.
  const counts = new Array(4).fill(0);
  for (let k = 0; k < 4000; k++) {
    const m = drawImgMask(4, rng, 0);
    assert.equal(m.reduce((s, v) => s + v, 0), 1);
    counts[m.indexOf(1)]++;
  }
  for (const c of counts) assertRate(c, 4000, 0.25, 'forced region choice');
  assert.throws(() => drawImgMask(0, rng), /need at least one region/);
});

test('MRM feature masking: targets taken before zeroing, positions untouched', () => {
  const feat = Float32Array.from({ length: 12 }, (_, i) => i + 1);
  const mask = Uint8Array.from([0, 1, 0, 1]);
  const { masked, targets } = maskRegionFeatures(feat, mask, 3);
  assert.deepEqual(Array.from(targets), [4, 5, 6, 10, 11, 12]);
  assert.deepEqual(Array.from(masked), [1, 2, 3, 0, 0, 0, 7, 8, 9, 0, 0, 0]);
  assert.equal(feat[3], 4, 'input not modified');
  assert.deepEqual(Array.from(selectMaskedRows(feat, mask, 3)), [4, 5, 6, 10, 11, 12]);
  assert.throws(() => maskRegionFeatures(feat, mask, 4), /expected 4 regions x 4/);
  assert.deepEqual(Array.from(imgMaskFromRegions(4, [3, 1])), [0, 1, 0, 1]);
  assert.throws(() => imgMaskFromRegions(4, [4]), /region 4 is outside the 4 regions/);
});

test('joint masking masks both modalities of one example', () => {
  const rng = new Rng(14);
  for (let k = 0; k < 20; k++) {
    const { text, imgMask } = drawJointMasking([300, 301, 302, 303], 10, rng, IDS);
    assert.ok(text.labels.some((l) => l !== -1));
    assert.ok(imgMask.some((v) => v === 1));
    assert.equal(imgMask.length, 10);
  }
});
