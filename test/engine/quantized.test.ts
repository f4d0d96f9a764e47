/**
 * The int8 linear layer (inference only): per-output-channel symmetric weight quantization in
 * JS, and ONNX Runtime's DynamicQuantizeMatMul against the float32 Linear it replaces.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, HostTensor, compile, concatQuantized, f32, linear, quantizeWeightPerChannel, quantizedLinear } from '../../src/engine/index.js';
import { Rng } from '../../src/util/rng.js';

function randomF32(rng: Rng, shape: number[], scale = 1): HostTensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = (rng.uniform() * 2 - 1) * scale;
  return f32(shape, data);
}

test('per-channel quantization: int8 [in, out] with one scale per output row, error <= scale / 2', () => {
  const rng = new Rng(1, 'q');
  const [out, inp] = [5, 7];
  const w = randomF32(rng, [out, inp]);
  (w.data as Float32Array)[3] = 0; // a zero stays zero
  const zeroRow = new Float32Array(out * inp).fill(0.5);
  zeroRow.fill(0, inp, 2 * inp); // an all-zero row gets scale 1, not 0 (no division by zero)
  const q = quantizeWeightPerChannel('w', w.data as Float32Array, out, inp);
  assert.equal(q.data.length, out * inp);
  for (let o = 0; o < out; o++) {
    let m = 0;
    for (let i = 0; i < inp; i++) m = Math.max(m, Math.abs((w.data as Float32Array)[o * inp + i]));
    assert.ok(Math.abs(q.scale[o] - m / 127) < 1e-9);
    for (let i = 0; i < inp; i++) {
      const back = q.data[i * out + o] * q.scale[o];
      assert.ok(Math.abs(back - (w.data as Float32Array)[o * inp + i]) <= q.scale[o] / 2 + 1e-7, `w[${o}, ${i}]`);
    }
  }
  assert.equal(q.data[3 * out + 0], 0);
  const z = quantizeWeightPerChannel('z', zeroRow, out, inp);
  assert.equal(z.scale[1], 1);
  assert.ok([...z.data].every((v) => v >= -127 && v <= 127));
  assert.throws(() => quantizeWeightPerChannel('bad', new Float32Array([1, NaN]), 1, 2), /non-finite/);
  assert.throws(() => quantizeWeightPerChannel('bad', new Float32Array(3), 2, 2), /has 3 values/);
});

test('concatQuantized joins weights along the output axis exactly', () => {
  const rng = new Rng(2, 'q');
  const a = quantizeWeightPerChannel('a', randomF32(rng, [3, 4]).data as Float32Array, 3, 4);
  const b = quantizeWeightPerChannel('b', randomF32(rng, [2, 4]).data as Float32Array, 2, 4);
  const c = concatQuantized('ab', [a, b]);
  assert.deepEqual([c.inFeatures, c.outFeatures], [4, 5]);
  for (let i = 0; i < 4; i++) {
    for (let o = 0; o < 3; o++) assert.equal(c.data[i * 5 + o], a.data[i * 3 + o]);
    for (let o = 0; o < 2; o++) assert.equal(c.data[i * 5 + 3 + o], b.data[i * 2 + o]);
  }
  assert.deepEqual([...c.scale], [...a.scale, ...b.scale]);
});

test('DynamicQuantizeMatMul agrees with the float32 Linear (rank 2 and 3 inputs, with and without bias)', async () => {
  const rng = new Rng(3, 'q');
  const [K, N] = [96, 40];
  const w = randomF32(rng, [N, K], 0.1);
  const b = randomF32(rng, [N], 0.1);
  const q = quantizeWeightPerChannel('layer.weight', w.data as Float32Array, N, K);
  const g = new Graph('q');
  const x3 = g.input('x3', 'float32', ['B', 'T', K]);
  const x2 = g.input('x2', 'float32', ['M', K]);
  const wt = g.param('w', [N, K]);
  const bt = g.param('b', [N]);
  const prog = compile(g, {
    ref3: linear(x3, wt, bt),
    int8_3: quantizedLinear(x3, q, bt),
    ref2: linear(x2, wt),
    int8_2: quantizedLinear(x2, q),
  }, { threads: 1 });
  const feeds = { x3: randomF32(rng, [2, 5, K]), x2: randomF32(rng, [3, K]), w, b };
  const out = await prog.run(feeds);
  for (const [ref, got] of [['ref3', 'int8_3'], ['ref2', 'int8_2']]) {
    const r = out.get(ref)!;
    const q8 = out.get(got)!;
    assert.deepEqual(q8.shape, r.shape);
    let maxRef = 0;
    let maxDiff = 0;
    for (let i = 0; i < r.data.length; i++) {
      maxRef = Math.max(maxRef, Math.abs(Number(r.data[i])));
      maxDiff = Math.max(maxDiff, Math.abs(Number(r.data[i]) - Number(q8.data[i])));
    }
    // 8-bit activations and weights: about 1% of the output's range.
    assert.ok(maxDiff < 0.02 * maxRef, `${got}: max |diff| ${maxDiff} against max |ref| ${maxRef}`);
    assert.ok(maxDiff > 0, `${got}: identical to float32, so not quantized?`);
  }
  // The int8 weights are initializers of the emitted model (not graph inputs), under their weight's name.
  assert.ok(!prog.model.inputs.some((i) => i.name.includes('int8')));
  const text = new TextDecoder('latin1').decode(prog.model.bytes);
  assert.ok(text.includes('layer.weight.int8') && text.includes('com.microsoft'));
});

test('per-row activation quantization: each row keeps its own resolution next to a large row; a zero row stays zero', async () => {
  const rng = new Rng(4, 'q');
  const [K, N] = [64, 24];
  const w = randomF32(rng, [N, K], 0.1);
  const b = randomF32(rng, [N], 0.1);
  const q = quantizeWeightPerChannel('layer.weight', w.data as Float32Array, N, K);
  const g = new Graph('q');
  const x = g.input('x', 'float32', ['B', 'T', K]);
  const wt = g.param('w', [N, K]);
  const bt = g.param('b', [N]);
  const prog = compile(g, { ref: linear(x, wt), perTensor: quantizedLinear(x, q), perRow: quantizedLinear(x, q, undefined, true), perRowBias: quantizedLinear(x, q, bt, true), refBias: linear(x, wt, bt) }, { threads: 1 });
  // Rows: 0 large (x1000), 1 and 2 ordinary, 3 all zero; in two batch entries.
  const xs = randomF32(rng, [2, 4, K]);
  const xd = xs.data as Float32Array;
  for (let k = 0; k < K; k++) {
    xd[k] *= 1000;
    xd[3 * K + k] = 0;
  }
  const out = await prog.run({ x: xs, w, b });
  const rowErr = (name: string, ref: string, r: number) => {
    const a = out.get(name)!.data as Float32Array;
    const e = out.get(ref)!.data as Float32Array;
    let diff = 0;
    let range = 0;
    for (let j = 0; j < N; j++) {
      diff = Math.max(diff, Math.abs(a[r * N + j] - e[r * N + j]));
      range = Math.max(range, Math.abs(e[r * N + j]));
    }
    return { diff, range };
  };
  for (const r of [0, 1, 2, 5, 6]) {
    const { diff, range } = rowErr('perRow', 'ref', r);
    assert.ok(diff < 0.02 * range, `per-row, row ${r}: max |diff| ${diff} against the row's max |ref| ${range}`);
    const withBias = rowErr('perRowBias', 'refBias', r);
    assert.ok(withBias.diff < 0.02 * withBias.range + 1e-6, `per-row with bias, row ${r}: ${withBias.diff} vs ${withBias.range}`);
  }
  // One scale for the whole tensor: the ordinary rows get the large row's step (about 1000x coarser).
  const small = rowErr('perTensor', 'ref', 1);
  assert.ok(small.diff > 0.1 * small.range, `per-tensor, row 1: ${small.diff} against ${small.range} (expected the coarse shared scale to show)`);
  for (const name of ['perRow', 'perRowBias']) {
    const a = out.get(name)!.data as Float32Array;
    assert.ok(a.every(Number.isFinite), `${name}: finite`);
  }
  const zero = (out.get('perRow')!.data as Float32Array).subarray(3 * N, 4 * N);
  assert.ok(zero.every((v) => v === 0), 'a zero row gives a zero product');
});

test('quantizedLinear reports shape errors naming the weight', () => {
  const g = new Graph('q');
  const x = g.input('x', 'float32', ['B', 8]);
  const q = quantizeWeightPerChannel('enc.weight', new Float32Array(4 * 6), 4, 6);
  assert.throws(() => quantizedLinear(x, q), /input features 8 vs weight in-features 6 \('enc\.weight'\)/);
});
