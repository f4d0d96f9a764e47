/**
 * ORT session reuse (one session per graph signature, whatever the batch and sequence sizes)
 * and reproducible dropout masks drawn from (seed, step).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Graph,
  HostTensor,
  add,
  compile,
  dropout,
  f32,
  gelu,
  grad,
  i64,
  gather,
  linear,
  meanAll,
  mul,
  sessionStats,
  softmax,
  transpose,
  matmul,
} from '../../src/engine/index.js';
import { Rng } from '../../src/util/rng.js';

function randomF32(rng: Rng, shape: number[]): HostTensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = rng.uniform() * 2 - 1;
  return f32(shape, data);
}

/** A small attention-like block over [B, T, H] with an embedding lookup and a training loss. */
function buildBlock(hidden: number) {
  const g = new Graph('block');
  const ids = g.input('ids', 'int64', ['B', 'T']);
  const emb = g.param('emb', [11, hidden]);
  const wq = g.param('wq', [hidden, hidden]);
  const w = g.param('w', [hidden, hidden]);
  const x = gather(emb, ids);
  const q = linear(x, wq);
  const att = softmax(mul(matmul(q, transpose(x, [0, 2, 1])), 1 / Math.sqrt(hidden)), -1);
  const y = gelu(linear(matmul(att, x), w));
  const loss = meanAll(mul(y, y));
  const [gEmb, gW] = grad(loss, [emb, w]);
  return { g, outputs: { y, loss, gEmb: gEmb!, gW: gW! } };
}

test('one compiled graph serves every batch and sequence size with one session', async () => {
  const rng = new Rng(1, 'session');
  const { g, outputs } = buildBlock(8);
  const program = compile(g, outputs);
  const params = { emb: randomF32(rng, [11, 8]), wq: randomF32(rng, [8, 8]), w: randomF32(rng, [8, 8]) };
  const before = sessionStats.created;
  for (const [b, t] of [
    [1, 3],
    [4, 7],
    [2, 16],
    [3, 1],
  ]) {
    const ids = i64(
      [b, t],
      Array.from({ length: b * t }, () => rng.int(11)),
    );
    const out = await program.run({ ...params, ids });
    assert.deepEqual(out.get('y')!.shape, [b, t, 8]);
    assert.deepEqual(out.get('gEmb')!.shape, [11, 8]);
    assert.ok(Number.isFinite(out.get('loss')!.data[0] as number));
  }
  assert.equal(sessionStats.created - before, 1, 'exactly one ORT session for four different sizes');
});

test('identical graphs built twice share one session', async () => {
  const rng = new Rng(2, 'session');
  const params = { emb: randomF32(rng, [11, 6]), wq: randomF32(rng, [6, 6]), w: randomF32(rng, [6, 6]) };
  const ids = i64([2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  const before = sessionStats.created;
  const first = buildBlock(6);
  const second = buildBlock(6);
  const p1 = compile(first.g, first.outputs);
  const p2 = compile(second.g, second.outputs);
  assert.equal(p1.signature, p2.signature);
  const o1 = await p1.run({ ...params, ids });
  const o2 = await p2.run({ ...params, ids });
  assert.deepEqual(o1.get('loss')!.data, o2.get('loss')!.data);
  assert.equal(sessionStats.created - before, 1, 'the second identical graph reuses the first session');

  // A different graph (other hidden size) does get its own session.
  const third = buildBlock(4);
  await compile(third.g, third.outputs).run({ emb: randomF32(rng, [11, 4]), wq: randomF32(rng, [4, 4]), w: randomF32(rng, [4, 4]), ids });
  assert.equal(sessionStats.created - before, 2);
});

function buildDropout(p: number, training: boolean) {
  const g = new Graph('dropout');
  const x = g.input('x', 'float32', ['B', 'H']);
  const w = g.param('w', [4, 4]);
  const y = dropout(x, p, training);
  const z = dropout(linear(y, w), p, training);
  return { g, y, z };
}

test('dropout: same (seed, step) gives the same masks, another step or seed different ones', async () => {
  const { g, y, z } = buildDropout(0.3, true);
  const program = compile(g, { y, z });
  assert.equal(program.model.inputs.filter((i) => i.role === 'dropout').length, 2, 'one mask input per dropout site');
  const x = f32([16, 4], new Float32Array(64).fill(1));
  const w = f32([4, 4], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
  const run = async (seed: number, step: number) => {
    const out = await program.run({ x, w }, { seed, step });
    return [Array.from(out.get('y')!.data as Float32Array), Array.from(out.get('z')!.data as Float32Array)];
  };
  const a = await run(7, 3);
  const b = await run(7, 3);
  assert.deepEqual(a, b, 'same seed and step reproduce both masks');
  assert.notDeepEqual(a[0], a[1], 'the two sites draw different masks');
  assert.notDeepEqual((await run(7, 4))[0], a[0], 'the next step draws a new mask');
  assert.notDeepEqual((await run(8, 3))[0], a[0], 'another seed draws a new mask');
  await assert.rejects(program.run({ x, w }), /dropout seed/, 'training graphs need a seed');
});

test('dropout: eval mode has no mask input and is the identity', async () => {
  const { g, y, z } = buildDropout(0.3, false);
  assert.equal(g.dropoutSites.size, 0);
  const program = compile(g, { y, z });
  assert.deepEqual(
    program.model.inputs.map((i) => i.name),
    ['x', 'w'],
  );
  const xs = Array.from({ length: 8 }, (_, i) => i - 3.5);
  const out = await program.run({ x: f32([2, 4], xs), w: f32([4, 4], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]) });
  assert.deepEqual(Array.from(out.get('y')!.data as Float32Array), xs);
  assert.deepEqual(Array.from(out.get('z')!.data as Float32Array), xs);
});

test('dropout: kept fraction ~ 1-p, kept values scaled by 1/(1-p), gradient uses the same mask', async () => {
  const p = 0.1;
  const g = new Graph('dropout_stats');
  const x = g.input('x', 'float32', ['B', 'H']);
  const y = dropout(x, p, true);
  const loss = meanAll(mul(y, add(x, 0)));
  const [gx] = grad(loss, [x]);
  const program = compile(g, { y, gx: gx! });
  const n = 64 * 512;
  const ones = f32([64, 512], new Float32Array(n).fill(1));
  const out = await program.run({ x: ones }, { seed: 123, step: 0 });
  const ys = out.get('y')!.data as Float32Array;
  const kept = ys.filter((v) => v !== 0);
  const fraction = kept.length / n;
  const sigma = Math.sqrt(p * (1 - p) / n);
  assert.ok(Math.abs(fraction - (1 - p)) < 5 * sigma, `kept fraction ${fraction} vs ${1 - p} (5 sigma = ${5 * sigma})`);
  const scale = Math.fround(1 / (1 - p));
  assert.ok(kept.every((v) => v === scale), `kept values are 1/(1-p) = ${scale}`);
  // d/dx mean(x * mask * x) = 2 x mask / n: zero exactly where the forward mask dropped.
  const gs = out.get('gx')!.data as Float32Array;
  for (let i = 0; i < n; i++) {
    const expected = (2 * ys[i]) / n;
    if (Math.abs(gs[i] - expected) > 1e-9) assert.fail(`gradient at ${i}: ${gs[i]} vs ${expected}`);
  }
  // The mean over the mask is unbiased: E[y] = x.
  const meanY = ys.reduce((s, v) => s + v, 0) / n;
  assert.ok(Math.abs(meanY - 1) < 5 * sigma * scale, `mean ${meanY} ~ 1`);
});
