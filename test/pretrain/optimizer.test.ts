import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AdamW, accumulateGrads, clipGradNorm, clipScale, globalGradNorm, groupByNameSubstring, usesWeightDecay, zeroGrads } from '../../src/pretrain/optimizer.js';
import { Rng } from '../../src/util/rng.js';

const B1 = 0.9;
const B2 = 0.98;
const EPS = 1e-6;
const WD = 0.01;

/** Float64 reference of one parameter tensor under the official update rule, written from the formulas. */
function referenceAdamW(p0: number[], gradsPerStep: number[][], lrs: number[], decay: boolean, lrMul = 1): number[] {
  const p = [...p0];
  const m = p0.map(() => 0);
  const v = p0.map(() => 0);
  gradsPerStep.forEach((g, k) => {
    const t = k + 1;
    const lr = lrs[k] * lrMul;
    for (let i = 0; i < p.length; i++) {
      m[i] = B1 * m[i] + (1 - B1) * g[i];
      v[i] = B2 * v[i] + (1 - B2) * g[i] * g[i];
      const mHat = m[i] / (1 - B1 ** t);
      const vHat = v[i] / (1 - B2 ** t);
      // Official: step_size = lr*sqrt(1-b2^t)/(1-b1^t), denom = sqrt(v)+eps (eps not bias-corrected).
      p[i] -= (lr * mHat) / (Math.sqrt(vHat) + EPS / Math.sqrt(1 - B2 ** t));
      if (decay) p[i] -= lr * WD * p[i];
    }
  });
  return p;
}

function closeTo(actual: ArrayLike<number>, expected: ArrayLike<number>, rel = 2e-6, label = ''): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    const tol = rel * Math.max(1, Math.abs(expected[i]));
    assert.ok(Math.abs(actual[i] - expected[i]) <= tol, `${label}[${i}]: ${actual[i]} vs expected ${expected[i]}`);
  }
}

function setup() {
  const w0 = [0.5, -1.25, 2.0, 0.03125];
  const b0 = [0.1, -0.2];
  const ln0 = [1.0, 0.75];
  const params = new Map<string, Float32Array>([
    ['uniter.encoder.layer.0.attention.self.query.weight', Float32Array.from(w0)],
    ['uniter.encoder.layer.0.attention.self.query.bias', Float32Array.from(b0)],
    ['uniter.encoder.layer.0.output.LayerNorm.weight', Float32Array.from(ln0)],
  ]);
  const shapes = new Map<string, number[]>([
    ['uniter.encoder.layer.0.attention.self.query.weight', [2, 2]],
    ['uniter.encoder.layer.0.attention.self.query.bias', [2]],
    ['uniter.encoder.layer.0.output.LayerNorm.weight', [2]],
  ]);
  return { params, shapes, w0, b0, ln0 };
}

describe('AdamW', () => {
  it('matches a float64 two-step computation of the official update (decay after the Adam step)', () => {
    const { params, shapes, w0, b0, ln0 } = setup();
    const opt = new AdamW(params, shapes, { weightDecay: WD });
    const gW = [[0.2, -0.4, 1.5, 0.0], [-0.1, 0.3, 0.5, 0.25]];
    const gB = [[0.05, -3.0], [0.02, 1.0]];
    const gLn = [[-0.7, 0.01], [0.3, -0.02]];
    const lrs = [1e-3, 5e-4];
    for (let k = 0; k < 2; k++) {
      opt.step(
        new Map([
          ['uniter.encoder.layer.0.attention.self.query.weight', Float32Array.from(gW[k])],
          ['uniter.encoder.layer.0.attention.self.query.bias', Float32Array.from(gB[k])],
          ['uniter.encoder.layer.0.output.LayerNorm.weight', Float32Array.from(gLn[k])],
        ]),
        lrs[k],
      );
    }
    // Inputs are rounded to float32 as the optimizer sees them.
    const f = (xs: number[]) => xs.map(Math.fround);
    closeTo(params.get('uniter.encoder.layer.0.attention.self.query.weight')!, referenceAdamW(f(w0), gW.map(f), lrs, true), 2e-6, 'weight');
    closeTo(params.get('uniter.encoder.layer.0.attention.self.query.bias')!, referenceAdamW(f(b0), gB.map(f), lrs, false), 2e-6, 'bias');
    closeTo(params.get('uniter.encoder.layer.0.output.LayerNorm.weight')!, referenceAdamW(f(ln0), gLn.map(f), lrs, false), 2e-6, 'LayerNorm.weight');
    assert.equal(opt.stepCount, 2);
  });

  it('moves each weight by about lr*sign(g) on the first step (bias-corrected Adam), then decays it', () => {
    const params = new Map([['w', Float32Array.from([1, 1, 1])]]);
    const opt = new AdamW(params, new Map([['w', [3]]]), { weightDecay: 0.1 });
    const lr = 0.01;
    opt.step(new Map([['w', Float32Array.from([5, -0.5, 0])]]), lr);
    // First step: m/(sqrt(v)) = g/|g| after bias correction; zero gradient gives no Adam move.
    const expected = [1 - lr, 1 + lr, 1].map((p) => p - lr * 0.1 * p);
    closeTo(params.get('w')!, expected, 1e-5);
  });

  it('excludes bias and LayerNorm weights/biases from decay by name, as the official no_decay list', () => {
    assert.equal(usesWeightDecay('uniter.encoder.layer.3.attention.self.key.weight'), true);
    assert.equal(usesWeightDecay('uniter.encoder.layer.3.attention.self.key.bias'), false);
    assert.equal(usesWeightDecay('uniter.embeddings.LayerNorm.weight'), false);
    assert.equal(usesWeightDecay('uniter.img_embeddings.LayerNorm.bias'), false);
    assert.equal(usesWeightDecay('cls.predictions.bias'), false);
    // Official quirk: these LayerNorms are not named 'LayerNorm', so they do get decay.
    assert.equal(usesWeightDecay('uniter.img_embeddings.img_layer_norm.weight'), true);
    assert.equal(usesWeightDecay('feat_regress.net.2.weight'), true);

    const names = ['a.dense.weight', 'a.dense.bias', 'a.LayerNorm.weight', 'a.img_layer_norm.weight'];
    const params = new Map(names.map((n) => [n, Float32Array.from([2, -2])]));
    const shapes = new Map(names.map((n) => [n, [2]]));
    const opt = new AdamW(params, shapes, { weightDecay: 0.5 });
    // Zero gradients: the Adam term is 0, so only decay can move a parameter.
    opt.step(new Map(names.map((n) => [n, new Float32Array(2)])), 0.1);
    closeTo(params.get('a.dense.weight')!, [2 * 0.95, -2 * 0.95], 1e-7);
    closeTo(params.get('a.img_layer_norm.weight')!, [2 * 0.95, -2 * 0.95], 1e-7);
    closeTo(params.get('a.dense.bias')!, [2, -2], 0);
    closeTo(params.get('a.LayerNorm.weight')!, [2, -2], 0);
    assert.equal(opt.settingsOf('a.dense.bias').weightDecay, 0);
    assert.equal(opt.settingsOf('a.dense.weight').weightDecay, 0.5);
  });

  it('applies lr multipliers by group to both the Adam step and the decay', () => {
    const names = ['uniter.pooler.dense.weight', 'vqa_output.0.weight', 'vqa_output.0.bias'];
    const p0 = [0.5, -0.25, 1.5];
    const g = [[0.3, -1.0, 0.2], [-0.6, 0.4, 0.1]];
    const params = new Map(names.map((n) => [n, Float32Array.from(p0)]));
    const shapes = new Map(names.map((n) => [n, [3]]));
    const opt = new AdamW(params, shapes, { weightDecay: WD, groups: [groupByNameSubstring('vqa_head', 'vqa_output', 10)] });
    assert.deepEqual(opt.settingsOf('vqa_output.0.weight'), { group: 'vqa_head', lrMultiplier: 10, weightDecay: WD });
    assert.deepEqual(opt.settingsOf('uniter.pooler.dense.weight'), { group: 'default', lrMultiplier: 1, weightDecay: WD });
    const lrs = [2e-3, 1e-3];
    for (let k = 0; k < 2; k++) opt.step(new Map(names.map((n) => [n, Float32Array.from(g[k])])), lrs[k]);
    const f = (xs: number[]) => xs.map(Math.fround);
    closeTo(params.get('uniter.pooler.dense.weight')!, referenceAdamW(f(p0), g.map(f), lrs, true, 1), 2e-6, 'pooler');
    closeTo(params.get('vqa_output.0.weight')!, referenceAdamW(f(p0), g.map(f), lrs, true, 10), 2e-6, 'vqa weight');
    closeTo(params.get('vqa_output.0.bias')!, referenceAdamW(f(p0), g.map(f), lrs, false, 10), 2e-6, 'vqa bias');
  });

  it('skips parameters without a gradient (their step count does not advance)', () => {
    const params = new Map([
      ['a.weight', Float32Array.from([1, 2])],
      ['b.weight', Float32Array.from([3, 4])],
    ]);
    const opt = new AdamW(params, new Map([['a.weight', [2]], ['b.weight', [2]]]));
    opt.step(new Map([['a.weight', Float32Array.from([1, 1])]]), 1e-2);
    assert.deepEqual([...params.get('b.weight')!], [3, 4]);
    const s = opt.state();
    assert.deepEqual(s.json.paramSteps, { 'a.weight': 1 });
    assert.ok(!s.tensors.has('exp_avg.b.weight'));
    // b's first update later is bias-corrected as its own first step.
    opt.step(new Map([['b.weight', Float32Array.from([-2, 2])]]), 1e-2);
    assert.deepEqual(opt.state().json.paramSteps, { 'a.weight': 1, 'b.weight': 1 });
    closeTo(params.get('b.weight')!, [3 + 0.01, 4 - 0.01].map((p) => p - 1e-2 * 0.01 * p), 1e-5);
  });

  it('rejects gradients for unknown parameters or of the wrong size, naming them, without updating anything', () => {
    const { params, shapes } = setup();
    const opt = new AdamW(params, shapes);
    const before = Float32Array.from(params.get('uniter.encoder.layer.0.attention.self.query.weight')!);
    assert.throws(() => opt.step(new Map([['nope.weight', new Float32Array(2)]]), 1e-3), /unknown parameter 'nope.weight'/);
    assert.throws(
      () =>
        opt.step(
          new Map([
            ['uniter.encoder.layer.0.attention.self.query.weight', new Float32Array(4).fill(1)],
            ['uniter.encoder.layer.0.attention.self.query.bias', new Float32Array(5)],
          ]),
          1e-3,
        ),
      /query\.bias' has 5 values, parameter has 2/,
    );
    assert.deepEqual(params.get('uniter.encoder.layer.0.attention.self.query.weight'), before);
    assert.equal(opt.stepCount, 0);
  });

  it('state() / loadState() resume bit-exactly', () => {
    const grads = (k: number) =>
      new Map([
        ['uniter.encoder.layer.0.attention.self.query.weight', Float32Array.from([0.1 * k, -0.2, 0.3, k])],
        ['uniter.encoder.layer.0.attention.self.query.bias', Float32Array.from([k, -k])],
        ['uniter.encoder.layer.0.output.LayerNorm.weight', Float32Array.from([0.5, -0.5 * k])],
      ]);
    const a = setup();
    const optA = new AdamW(a.params, a.shapes);
    optA.step(grads(1), 1e-3);
    optA.step(grads(2), 2e-3);
    const saved = optA.state();
    // Through JSON, as a checkpoint stores it; tensors copied so later steps cannot alias them.
    const json = JSON.parse(JSON.stringify(saved.json));
    const tensors = new Map([...saved.tensors].map(([k, t]) => [k, { ...t, data: Float32Array.from(t.data as Float32Array) }]));

    const b = setup();
    for (const [k, v] of a.params) b.params.get(k)!.set(v);
    const optB = new AdamW(b.params, b.shapes);
    optB.loadState({ tensors, json });
    assert.equal(optB.stepCount, 2);
    optA.step(grads(3), 3e-3);
    optB.step(grads(3), 3e-3);
    for (const [k, v] of a.params) assert.deepEqual(b.params.get(k), v, k);
  });

  it('loadState() names the offending tensor or setting', () => {
    const a = setup();
    const opt = new AdamW(a.params, a.shapes);
    opt.step(new Map([['uniter.encoder.layer.0.attention.self.query.bias', Float32Array.from([1, 1])]]), 1e-3);
    const good = opt.state();
    const other = setup();
    const fresh = new AdamW(other.params, other.shapes);
    const badShape = new Map(good.tensors);
    badShape.set('exp_avg.uniter.encoder.layer.0.attention.self.query.bias', { dtype: 'float32', shape: [3], data: new Float32Array(3) });
    assert.throws(() => fresh.loadState({ tensors: badShape, json: good.json }, 'ckpt/optimizer.safetensors'), /ckpt\/optimizer\.safetensors: tensor 'exp_avg\.uniter\.encoder\.layer\.0\.attention\.self\.query\.bias' has shape \[3\]/);
    assert.throws(() => fresh.loadState({ tensors: good.tensors, json: { ...good.json, betas: [0.9, 0.999] } }), /betas \[0\.9,0\.999\] differ/);
    const missing = new Map(good.tensors);
    missing.delete('exp_avg_sq.uniter.encoder.layer.0.attention.self.query.bias');
    assert.throws(() => fresh.loadState({ tensors: missing, json: good.json }), /missing tensor 'exp_avg_sq\.uniter\.encoder\.layer\.0\.attention\.self\.query\.bias'/);
    const grouped = new AdamW(setup().params, setup().shapes, { groups: [groupByNameSubstring('enc', 'encoder', 5)] });
    assert.throws(() => grouped.loadState(good), /was in group 'default' \(x1\), now in 'enc' \(x5\)/);
  });
});

/**
 * The update as the trainers ran it before the clipping factor moved into AdamW.step (issue 19):
 * clip the gradients in place, then this loop over each parameter. Kept verbatim as the reference.
 */
function previousClipAndStep(params: Map<string, Float32Array>, m: Map<string, Float32Array>, v: Map<string, Float32Array>, t: number, grads: Map<string, Float32Array>, lr: number, maxNorm: number, lrMul: (n: string) => number, wd: (n: string) => number): number {
  let sumSq = 0;
  for (const g of grads.values()) for (let i = 0; i < g.length; i++) sumSq += g[i] * g[i];
  const norm = Math.sqrt(sumSq);
  if (maxNorm > 0 && Number.isFinite(norm)) {
    const coef = maxNorm / (norm + 1e-6);
    if (coef < 1) for (const g of grads.values()) for (let i = 0; i < g.length; i++) g[i] *= coef;
  }
  for (const [name, w] of params) {
    const g = grads.get(name)!;
    const groupLr = lr * lrMul(name);
    const stepSize = (groupLr * Math.sqrt(1 - B2 ** t)) / (1 - B1 ** t);
    const decay = groupLr * wd(name);
    const mm = m.get(name)!;
    const vv = v.get(name)!;
    for (let i = 0; i < w.length; i++) {
      const gi = g[i];
      const mi = Math.fround(B1 * mm[i] + (1 - B1) * gi);
      const vi = Math.fround(B2 * vv[i] + (1 - B2) * gi * gi);
      mm[i] = mi;
      vv[i] = vi;
      const updated = Math.fround(w[i] - (stepSize * mi) / (Math.sqrt(vi) + EPS));
      w[i] = updated - decay * updated;
    }
  }
  return norm;
}

describe('AdamW.step with the clipping factor (the trainers\' path)', () => {
  it('is bitwise the previous clip-in-place-then-step update, clipping or not, over several steps', () => {
    const rng = new Rng(19, 'adamw-clip');
    const names = ['encoder.layer.0.dense.weight', 'encoder.layer.0.dense.bias', 'vqa_output.0.weight', 'encoder.LayerNorm.weight'];
    const sizes = [70000, 300, 1200, 64];
    const init = names.map((_, k) => Float32Array.from({ length: sizes[k] }, () => rng.normal() * 0.05));
    const fresh = () => new Map(names.map((n, k) => [n, Float32Array.from(init[k])]));
    const shapes = new Map(names.map((n, k) => [n, [sizes[k]]]));
    const groups = [groupByNameSubstring('head', 'vqa_output', 10)];
    for (const maxNorm of [0.5, 1e6, -1]) {
      const mine = fresh();
      const opt = new AdamW(mine, shapes, { weightDecay: WD, groups });
      const ref = fresh();
      const m = new Map(names.map((n, k) => [n, new Float32Array(sizes[k])]));
      const v = new Map(names.map((n, k) => [n, new Float32Array(sizes[k])]));
      for (let t = 1; t <= 3; t++) {
        const g = names.map((_, k) => Float32Array.from({ length: sizes[k] }, () => rng.normal() * 0.02 * t));
        const refNorm = previousClipAndStep(ref, m, v, t, new Map(names.map((n, k) => [n, Float32Array.from(g[k])])), 1e-3 * t, maxNorm, (n) => opt.settingsOf(n).lrMultiplier, (n) => opt.settingsOf(n).weightDecay);
        const grads = new Map(names.map((n, k) => [n, g[k]]));
        const norm = maxNorm > 0 ? globalGradNorm(grads) : null;
        opt.step(grads, 1e-3 * t, norm === null ? 1 : clipScale(norm, maxNorm));
        if (norm !== null) assert.equal(norm, refNorm);
        names.forEach((n, k) => assert.deepEqual(grads.get(n), g[k], 'the gradients are left as they were'));
      }
      const state = opt.state().tensors;
      for (const n of names) {
        assert.deepEqual(mine.get(n), ref.get(n), `${n} (maxNorm ${maxNorm})`);
        assert.deepEqual(state.get(`exp_avg.${n}`)!.data, m.get(n), `exp_avg.${n}`);
        assert.deepEqual(state.get(`exp_avg_sq.${n}`)!.data, v.get(n), `exp_avg_sq.${n}`);
      }
    }
  });

  it('clipScale is 1 when off, below the limit or not finite, else maxNorm / (norm + 1e-6)', () => {
    assert.equal(clipScale(13, -1), 1);
    assert.equal(clipScale(13, 0), 1);
    assert.equal(clipScale(5, 10), 1);
    assert.equal(clipScale(Infinity, 1), 1);
    assert.equal(clipScale(NaN, 1), 1);
    assert.equal(clipScale(13, 6.5), 6.5 / (13 + 1e-6));
  });

  it('refuses a gradient scale that is not a finite positive number', () => {
    const { params, shapes } = setup();
    const opt = new AdamW(params, shapes);
    assert.throws(() => opt.step(new Map(), 1e-3, NaN), /gradScale must be a finite number > 0, got NaN/);
    assert.throws(() => opt.step(new Map(), 1e-3, 0), /gradScale must be a finite number > 0, got 0/);
  });
});

describe('clipGradNorm', () => {
  it('returns the global L2 norm and scales all gradients to maxNorm when above it', () => {
    const grads = new Map([
      ['a', Float32Array.from([3, 0])],
      ['b', Float32Array.from([4, 12])],
    ]);
    const norm = clipGradNorm(grads, 6.5);
    assert.ok(Math.abs(norm - 13) < 1e-9);
    const coef = 6.5 / (13 + 1e-6);
    closeTo(grads.get('a')!, [3 * coef, 0], 1e-6);
    closeTo(grads.get('b')!, [4 * coef, 12 * coef], 1e-6);
    const after = Math.hypot(...grads.get('a')!, ...grads.get('b')!);
    assert.ok(Math.abs(after - 6.5) < 1e-4);
  });

  it('leaves gradients alone below the threshold, when off (<= 0), or when the norm is not finite', () => {
    const g = () => new Map([['a', Float32Array.from([3, 4])]]);
    const below = g();
    assert.ok(Math.abs(clipGradNorm(below, 10) - 5) < 1e-12);
    assert.deepEqual([...below.get('a')!], [3, 4]);
    const off = g();
    assert.ok(Math.abs(clipGradNorm(off, -1) - 5) < 1e-12);
    assert.deepEqual([...off.get('a')!], [3, 4]);
    const inf = new Map([['a', Float32Array.from([Infinity, 1])]]);
    assert.equal(clipGradNorm(inf, 1), Infinity);
    assert.deepEqual([...inf.get('a')!], [Infinity, 1]);
  });
});

describe('accumulateGrads', () => {
  it('sums micro-batch gradients, inserting copies for new names', () => {
    const acc = new Map<string, Float32Array>();
    const first = new Map([['w', Float32Array.from([1, 2])]]);
    accumulateGrads(acc, first);
    first.get('w')!.fill(100); // the accumulator must not alias its input
    accumulateGrads(acc, new Map([['w', Float32Array.from([0.5, -1])], ['b', Float32Array.from([3])]]));
    assert.deepEqual([...acc.get('w')!], [1.5, 1]);
    assert.deepEqual([...acc.get('b')!], [3]);
    zeroGrads(acc);
    assert.deepEqual([...acc.get('w')!], [0, 0]);
    assert.throws(() => accumulateGrads(acc, new Map([['w', new Float32Array(3)]])), /gradient of 'w' has 3 values, the accumulator has 2/);
  });
});
