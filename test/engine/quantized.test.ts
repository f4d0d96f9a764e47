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

test('quantizedLinear reports shape errors naming the weight', () => {
  const g = new Graph('q');
  const x = g.input('x', 'float32', ['B', 8]);
  const q = quantizeWeightPerChannel('enc.weight', new Float32Array(4 * 6), 4, 6);
  assert.throws(() => quantizedLinear(x, q), /input features 8 vs weight in-features 6 \('enc\.weight'\)/);
});
