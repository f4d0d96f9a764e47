/**
 * Every differentiable op of the engine, checked against central finite differences
 * (float64 where ONNX Runtime has float64 kernels; otherwise float32, reported in the test's
 * diagnostic), plus the autodiff properties the model relies on: summed gradients for a value
 * used twice, stopGradient, null gradients without backward nodes for unreached inputs, and
 * build-time shape errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Dim,
  Graph,
  ShapeError,
  Tensor,
  abs,
  add,
  bceWithLogits,
  bool,
  cast,
  compile,
  concat,
  crossEntropy,
  dimSub,
  div,
  erf,
  exp,
  expand,
  expandAs,
  f32,
  flattenLead,
  gather,
  gatherElements,
  gelu,
  gemm,
  grad,
  i64,
  layerNorm,
  linear,
  log,
  logSoftmax,
  matmul,
  max,
  maximum,
  mean,
  meanAll,
  minimum,
  mul,
  neg,
  oneHot,
  pow,
  relu,
  reshape,
  reshapeAs,
  scatterAdd,
  scatterAddRows,
  sigmoid,
  slice,
  softmax,
  split,
  sqrt,
  squeeze,
  stopGradient,
  sub,
  sum,
  sumAll,
  tanh,
  transpose,
  unsqueeze,
  where,
} from '../../src/engine/index.js';
import { GradCase, GradCheckOptions, assertGradOk, formatResult } from '../helpers/gradcheck.js';

function check(c: GradCase, opts: GradCheckOptions = {}): void {
  test(`grad ${c.name}`, async (t) => {
    const r = await assertGradOk(c, opts);
    t.diagnostic(formatResult(c, r));
    assert.ok(r.checked > 0, 'no gradient element was checked');
  });
}

type BinaryOp = (a: Tensor | number, b: Tensor | number) => Tensor;

// ---------------------------------------------------------------------------------------------
// Elementwise binary ops with broadcasting

const binaries: Array<[string, BinaryOp]> = [
  ['add', add],
  ['sub', sub],
  ['mul', mul],
  ['div', div],
];
for (const [name, op] of binaries) {
  // Divisors are kept away from zero.
  const bRange: [number, number] = name === 'div' ? [0.5, 1.5] : [-1, 1];
  check({
    name: `${name} [B,1,H] with [H] (symbolic B, H)`,
    floats: { a: { shape: [2, 1, 3], declared: ['B', 1, 'H'] }, b: { shape: [3], declared: ['H'], range: bRange } },
    build: ({ a, b }) => op(a, b),
  });
  check({
    name: `${name} [B,1,H] with [T,H] (both broadcast)`,
    floats: { a: { shape: [2, 1, 3] }, b: { shape: [4, 3], range: bRange } },
    build: ({ a, b }) => op(a, b),
  });
  check({
    name: `${name} scalar tensor with [2,3] and [2,3] with scalar tensor`,
    floats: { s: { shape: [], range: [0.5, 1.5] }, x: { shape: [2, 3], range: [0.5, 1.5] } },
    build: ({ s, x }) => add(op(s, x), op(x, s)),
  });
  check({
    name: `${name} leading-dim broadcast [1,3,4] with [2,3,4] and [2,3,4] with [3,4]`,
    floats: { a: { shape: [1, 3, 4] }, b: { shape: [2, 3, 4], range: bRange }, c: { shape: [3, 4], range: bRange } },
    build: ({ a, b, c }) => op(op(a, b), c),
  });
  check({
    name: `${name} with a plain number on either side`,
    floats: { x: { shape: [2, 3], range: [0.5, 1.5] } },
    build: ({ x }) => add(op(x, 1.5), op(2, x)),
  });
}

const kinkB = [-0.5, 0.1, 0.6];
for (const [name, op] of [
  ['maximum', maximum],
  ['minimum', minimum],
] as Array<[string, BinaryOp]>) {
  check({
    name: `${name} [2,3] with broadcast [3]`,
    floats: { a: { shape: [2, 3], awayFrom: { points: kinkB, margin: 0.05 } }, b: { shape: [3], values: kinkB } },
    build: ({ a, b }) => op(a, b),
  });
}

for (const p of [3, 0.5, -1.5]) {
  check({ name: `pow x^${p}`, floats: { x: { shape: [2, 3], range: [0.5, 1.5] } }, build: ({ x }) => pow(x, p) });
}

// ---------------------------------------------------------------------------------------------
// Elementwise unary ops

const unaries: Array<[string, (x: Tensor) => Tensor, Partial<GradCase['floats'][string]>]> = [
  ['neg', neg, {}],
  ['exp', exp, {}],
  ['log', log, { range: [0.3, 2] }],
  ['sqrt', sqrt, { range: [0.3, 2] }],
  ['tanh', tanh, { range: [-2, 2] }],
  ['erf', erf, { range: [-2, 2] }],
  ['relu', relu, { awayFrom: { points: [0], margin: 0.05 } }],
  ['sigmoid', sigmoid, { range: [-3, 3] }],
  ['abs', abs, { awayFrom: { points: [0], margin: 0.05 } }],
  ['gelu', gelu, { range: [-3, 3] }],
];
for (const [name, op, spec] of unaries) {
  check({ name, floats: { x: { shape: [3, 4], ...spec } }, build: ({ x }) => op(x) });
}

check({
  name: 'where with bool condition, tensor and broadcast operands',
  floats: { a: { shape: [2, 3] }, b: { shape: [3] } },
  fixed: { c: { value: bool([2, 3], [1, 0, 1, 0, 0, 1]) } },
  build: ({ c, a, b }) => add(where(c, a, b), where(c, 0.5, mul(a, a))),
});

check(
  {
    name: 'cast float32 -> float64 -> float32',
    floats: { x: { shape: [2, 3] } },
    build: ({ x }) => cast(mul(exp(cast(x, 'float64')), 3), 'float32'),
  },
  { dtype: 'float32' },
);
check({
  name: 'cast to the same dtype is the identity',
  floats: { x: { shape: [2, 3] } },
  build: ({ x }, dtype) => tanh(cast(x, dtype)),
});

// ---------------------------------------------------------------------------------------------
// Matrix products

check({ name: 'matmul 2-D [3,4]@[4,2]', floats: { a: { shape: [3, 4] }, b: { shape: [4, 2] } }, build: ({ a, b }) => matmul(a, b) });
check({
  name: 'matmul batched [2,3,4]@[2,4,5]',
  floats: { a: { shape: [2, 3, 4] }, b: { shape: [2, 4, 5] } },
  build: ({ a, b }) => matmul(a, b),
});
check({
  name: 'matmul broadcast batch [B,h,T,d]@[d,k]',
  floats: { a: { shape: [2, 2, 3, 4], declared: ['B', 2, 'T', 4] }, b: { shape: [4, 5] } },
  build: ({ a, b }) => matmul(a, b),
});
check({
  name: 'matmul broadcast batch on both sides [2,1,3,4]@[3,4,2]',
  floats: { a: { shape: [2, 1, 3, 4] }, b: { shape: [3, 4, 2] } },
  build: ({ a, b }) => matmul(a, b),
});
check({
  name: 'matmul attention scores [B,h,T,d]@[B,h,d,T]',
  floats: { q: { shape: [2, 2, 3, 4], declared: ['B', 2, 'T', 4] }, k: { shape: [2, 2, 3, 4], declared: ['B', 2, 'T', 4] } },
  build: ({ q, k }) => matmul(q, transpose(k, [0, 1, 3, 2])),
});
check({
  name: 'linear with bias',
  floats: { x: { shape: [2, 3, 4] }, w: { shape: [5, 4] }, b: { shape: [5] } },
  build: ({ x, w, b }) => linear(x, w, b),
});
check({ name: 'linear without bias', floats: { x: { shape: [3, 4] }, w: { shape: [2, 4] } }, build: ({ x, w }) => linear(x, w) });
check({
  name: 'linear on [B,T,in] with symbolic dims and on a vector',
  floats: { x: { shape: [2, 3, 4], declared: ['B', 'T', 4] }, v: { shape: [4] }, w: { shape: [5, 4] }, b: { shape: [5] } },
  build: ({ x, v, w, b }) => {
    const y = linear(x, w, b);
    assert.deepEqual(y.shape, ['B', 'T', 5]);
    const u = linear(v, w);
    assert.deepEqual(u.shape, [5]);
    return add(y, u);
  },
});
for (const [transA, transB] of [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
]) {
  check({
    name: `gemm transA=${transA} transB=${transB} with bias`,
    floats: { a: { shape: transA ? [4, 3] : [3, 4] }, b: { shape: transB ? [2, 4] : [4, 2] }, c: { shape: [2] } },
    build: ({ a, b, c }) => gemm(a, b, { transA, transB }, c),
  });
}
check({
  name: 'flattenLead',
  floats: { x: { shape: [2, 3, 4], declared: ['B', 'T', 4] } },
  build: ({ x }) => mul(flattenLead(x), flattenLead(exp(x))),
});

// ---------------------------------------------------------------------------------------------
// Reductions

/** Distinct values spaced 0.05 apart in shuffled order, so max has no near-ties. */
function distinctValues(n: number): number[] {
  const v = [...Array(n).keys()].map((i) => -1 + 0.05 * i);
  for (let i = n - 1; i > 0; i--) {
    const j = (i * 7 + 3) % (i + 1);
    [v[i], v[j]] = [v[j], v[i]];
  }
  return v;
}

for (const axes of [[1], [0, 2], [-1]]) {
  for (const keepdims of [false, true]) {
    const tag = `axes [${axes}] keepdims=${keepdims}`;
    check({ name: `sum ${tag}`, floats: { x: { shape: [2, 3, 4] } }, build: ({ x }) => sum(x, axes, keepdims) });
    check({ name: `mean ${tag}`, floats: { x: { shape: [2, 3, 4] } }, build: ({ x }) => mean(x, axes, keepdims) });
    check({
      name: `max ${tag}`,
      floats: { x: { shape: [2, 3, 4], values: distinctValues(24) } },
      build: ({ x }) => max(x, axes, keepdims),
    });
  }
}
check({ name: 'sum over a symbolic axis', floats: { x: { shape: [2, 3, 4], declared: ['B', 'T', 4] } }, build: ({ x }) => sum(x, [1]) });
check({ name: 'mean over a symbolic axis', floats: { x: { shape: [2, 3, 4], declared: ['B', 'T', 4] } }, build: ({ x }) => mean(x, [1], true) });
check({ name: 'sumAll', floats: { x: { shape: [2, 3, 4] } }, build: ({ x }) => sumAll(mul(x, x)) });
check({ name: 'meanAll', floats: { x: { shape: [2, 3, 4], declared: ['B', 'T', 4] } }, build: ({ x }) => meanAll(mul(x, x)) });

// ---------------------------------------------------------------------------------------------
// Normalisations

for (const axis of [-1, 1]) {
  check({ name: `softmax axis ${axis}`, floats: { x: { shape: [2, 3, 4], range: [-2, 2] } }, build: ({ x }) => softmax(x, axis) });
  check({ name: `logSoftmax axis ${axis}`, floats: { x: { shape: [2, 3, 4], range: [-2, 2] } }, build: ({ x }) => logSoftmax(x, axis) });
}
check({
  name: 'softmax with an additive key mask (1-mask)*-10000',
  floats: { x: { shape: [2, 3, 4], range: [-2, 2] }, m: { shape: [2, 1, 4], values: [1, 1, 1, 0, 1, 1, 0, 0], constant: true } },
  build: ({ x, m }) => softmax(add(x, mul(sub(1, m), -10000)), -1),
});
for (const eps of [1e-12, 1e-5]) {
  check({
    name: `layerNorm eps ${eps} (x, weight and bias)`,
    floats: { x: { shape: [2, 3, 5], range: [-2, 2] }, w: { shape: [5], range: [0.5, 1.5] }, b: { shape: [5] } },
    build: ({ x, w, b }) => layerNorm(x, w, b, eps),
  });
}

// ---------------------------------------------------------------------------------------------
// Shapes

check({
  name: 'reshape with -1 and symbolic dims',
  floats: { x: { shape: [2, 3, 4], declared: ['B', 'T', 4] } },
  build: ({ x }) => {
    const flat = reshape(x, ['B', -1]);
    assert.deepEqual(flat.shape, ['B', '4*T']);
    const rows = reshape(x, [-1, 4]);
    assert.deepEqual(rows.shape, ['B*T', 4]);
    return add(mul(reshape(rows, ['B', 'T', 4]), x), reshape(mul(flat, flat), ['B', 'T', 4]));
  },
});
check({
  name: 'reshapeAs (gradient to the reshaped value only)',
  floats: { x: { shape: [6, 2] }, like: { shape: [3, 4], declared: ['P', 'Q'], constant: true } },
  build: ({ x, like }) => mul(reshapeAs(x, like), like),
});
check({ name: 'transpose [2,0,1]', floats: { x: { shape: [2, 3, 4] } }, build: ({ x }) => transpose(x, [2, 0, 1]) });
check({
  name: 'unsqueeze then squeeze',
  floats: { x: { shape: [2, 3] }, y: { shape: [2, 1, 3] } },
  build: ({ x, y }) => add(unsqueeze(x, [1]), unsqueeze(squeeze(y, [1]), [0, -1])),
});
check({
  name: 'concat with symbolic sizes (gradient to every part)',
  floats: {
    a: { shape: [2, 2, 3], declared: ['B', 'S1', 3] },
    b: { shape: [2, 3, 3], declared: ['B', 'S2', 3] },
    c: { shape: [2, 1, 3], declared: ['B', 1, 3] },
  },
  build: ({ a, b, c }) => {
    const cat = concat([a, mul(b, b), c], 1);
    assert.deepEqual(cat.shape, ['B', '1+S1+S2', 3]);
    return cat;
  },
});
check({
  name: 'slice with symbolic bounds',
  floats: { a: { shape: [2, 2, 3], declared: ['B', 'S1', 3] }, b: { shape: [2, 4, 3], declared: ['B', 'S2', 3] } },
  build: ({ a, b }) => {
    const cat = concat([a, b], 1);
    const second = slice(cat, 1, 'S1', 'S1+S2'); // exactly b
    const tail = slice(cat, 1, 1, 'S1+S2'); // all but the first row
    return add(mul(second, second), sum(tail, [1], true));
  },
});
check({
  name: 'split into constant and symbolic sizes',
  floats: { x: { shape: [2, 5, 3], declared: ['B', 'T', 3] } },
  build: ({ x }) => {
    const [head, mid, rest] = split(x, 1, [1, 2, dimSub('T', 3)]);
    return concat([exp(rest), mul(head, 2), mul(mid, mid)], 1);
  },
});
check({
  name: 'expand [1,3] to [B,3] (B bound by another input)',
  floats: { x: { shape: [1, 3] }, other: { shape: [4, 2], declared: ['B', 2] } },
  build: ({ x, other }) => add(expand(x, ['B', 3] as Dim[]), sum(other, [1], true)),
});
check({
  name: 'expandAs [3] to the run-time shape of [2,4,3]',
  floats: { x: { shape: [3] }, like: { shape: [2, 4, 3], declared: ['B', 'T', 3], constant: true } },
  build: ({ x, like }) => mul(expandAs(x, like), like),
});

// ---------------------------------------------------------------------------------------------
// Indexing

check({
  name: 'gather with repeated indices accumulates',
  floats: { table: { shape: [5, 3] } },
  fixed: { ids: { value: i64([2, 4], [0, 2, 0, 1, 0, 4, 4, 0]), declared: ['B', 'T'] } },
  build: ({ table, ids }) => gather(table, ids),
});
check({
  name: 'scatterAddRows (base and updates, repeated rows)',
  floats: { base: { shape: [5, 3] }, upd: { shape: [4, 3] } },
  fixed: { ids: { value: i64([4], [3, 1, 3, 3]) } },
  build: ({ base, ids, upd }) => mul(scatterAddRows(base, ids, upd), scatterAddRows(base, ids, upd)),
});
for (const axis of [0, 1]) {
  check({
    name: `gatherElements axis ${axis} with repeats`,
    floats: { x: { shape: [3, 4] } },
    fixed: { idx: { value: i64([3, 2], axis === 1 ? [0, 0, 3, 1, 2, 2] : [0, 2, 2, 1, 0, 0]) } },
    build: ({ x, idx }) => gatherElements(x, idx, axis),
  });
  check({
    name: `scatterAdd axis ${axis} with repeats`,
    floats: { base: { shape: [3, 4] }, upd: { shape: [3, 2] } },
    fixed: { idx: { value: i64([3, 2], axis === 1 ? [0, 0, 3, 1, 2, 2] : [0, 2, 2, 1, 0, 0]) } },
    build: ({ base, idx, upd }) => tanh(scatterAdd(base, idx, upd, axis)),
  });
}

// ---------------------------------------------------------------------------------------------
// Losses

check({
  name: 'crossEntropy',
  floats: { logits: { shape: [4, 5], range: [-2, 2] } },
  fixed: { y: { value: i64([4], [1, 0, 4, 1]), declared: ['N'] } },
  build: ({ logits, y }) => crossEntropy(logits, y),
});
check({
  name: 'bceWithLogits',
  floats: { logits: { shape: [3, 4], range: [-3, 3], awayFrom: { points: [0], margin: 0.05 } }, t: { shape: [3, 4], range: [0, 1], constant: true } },
  build: ({ logits, t }) => bceWithLogits(logits, t),
});
check({
  name: 'oneHot picks logits (label-smoothed NLL)',
  floats: { logits: { shape: [4, 5], range: [-2, 2] } },
  fixed: { y: { value: i64([4], [1, 0, 4, 1]) } },
  build: ({ logits, y }, dtype) => {
    const target = add(mul(oneHot(y, 5, dtype), 0.9), 0.02);
    return neg(sum(mul(logSoftmax(logits, -1), target), [-1]));
  },
});

// ---------------------------------------------------------------------------------------------
// Autodiff properties

check({
  name: 'tied weight: one table as embedding and output projection',
  floats: { emb: { shape: [6, 4] } },
  fixed: { ids: { value: i64([2, 3], [0, 5, 2, 2, 1, 0]) }, y: { value: i64([6], [3, 0, 5, 5, 1, 2]) } },
  build: ({ emb, ids, y }) => {
    const h = tanh(gather(emb, ids));
    const logits = linear(reshape(h, [-1, 4]), emb);
    return meanAll(crossEntropy(logits, y));
  },
});

test('tied weight gradient equals the sum of the two untied gradients', async () => {
  const table = f32([6, 4], Array.from({ length: 24 }, (_, i) => Math.sin(i + 1)));
  const ids = i64([2, 3], [0, 5, 2, 2, 1, 0]);
  const y = i64([6], [3, 0, 5, 5, 1, 2]);
  const lossOf = (embIn: Tensor, projIn: Tensor, idsIn: Tensor, yIn: Tensor) =>
    meanAll(crossEntropy(linear(reshape(tanh(gather(embIn, idsIn)), [-1, 4]), projIn), yIn));

  const tied = new Graph();
  const e = tied.param('emb', [6, 4]);
  const [gTied] = grad(lossOf(e, e, tied.input('ids', 'int64', [2, 3]), tied.input('y', 'int64', [6])), [e]);
  const tiedOut = await compile(tied, { g: gTied! }).run({ emb: table, ids, y });

  const untied = new Graph();
  const e1 = untied.param('emb_in', [6, 4]);
  const e2 = untied.param('emb_out', [6, 4]);
  const [g1, g2] = grad(lossOf(e1, e2, untied.input('ids', 'int64', [2, 3]), untied.input('y', 'int64', [6])), [e1, e2]);
  const untiedOut = await compile(untied, { g1: g1!, g2: g2! }).run({ emb_in: table, emb_out: table, ids, y });

  const a = tiedOut.get('g')!.data as Float32Array;
  const b1 = untiedOut.get('g1')!.data as Float32Array;
  const b2 = untiedOut.get('g2')!.data as Float32Array;
  assert.ok(b1.some((v) => v !== 0) && b2.some((v) => v !== 0), 'both paths must carry gradient');
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - (b1[i] + b2[i])) < 1e-6, `element ${i}: ${a[i]} vs ${b1[i]} + ${b2[i]}`);
});

check({
  name: 'a value used twice (residual x + f(x)) gets the summed gradient',
  floats: { x: { shape: [2, 3] }, w: { shape: [3, 3] } },
  build: ({ x, w }) => add(x, tanh(linear(x, w))),
});

test('stopGradient: gradient only through the live path; null when no live path exists', async () => {
  const g = new Graph();
  const x = g.input('x', 'float32', [2, 3]);
  const w = g.param('w', [2, 3]);
  const mixed = sumAll(mul(x, stopGradient(x)));
  const [gMixed] = grad(mixed, [x]);
  const detachedOnly = sumAll(mul(stopGradient(x), w));
  const [gx, gw] = grad(detachedOnly, [x, w]);
  assert.equal(gx, null, 'a loss reached only through stopGradient has a null gradient');
  assert.ok(gw, 'the other factor keeps its gradient');
  const xs = [0.5, -1, 2, 0.25, 3, -0.75];
  const out = await compile(g, { gMixed: gMixed!, gw: gw! }).run({ x: f32([2, 3], xs), w: f32([2, 3], [1, 2, 3, 4, 5, 6]) });
  assert.deepEqual(Array.from(out.get('gMixed')!.data as Float32Array), xs, 'd/dx x*sg(x) = x (not 2x)');
  assert.deepEqual(Array.from(out.get('gw')!.data as Float32Array), xs);
});

test('grad returns null for unreached inputs and builds no backward nodes for them', () => {
  const build = () => {
    const g = new Graph();
    const x = g.input('x', 'float32', ['B', 3]);
    const w = g.param('w', [2, 3]);
    const u = g.param('unused', [4, 4]);
    const side = exp(matmul(u, u)); // depends on u, never reaches the loss
    const idx = g.input('idx', 'int64', ['B']);
    const intPath = cast(gather(cast(idx, 'float32'), idx), 'int64'); // an integer-valued branch
    const loss = meanAll(mul(gelu(linear(x, w)), cast(unsqueeze(intPath, [1]), 'float32')));
    return { g, w, u, side, loss, idx };
  };
  const a = build();
  const before = a.g.nodes.length;
  const [gw, gu] = grad(a.loss, [a.w, a.u]);
  assert.ok(gw);
  assert.equal(gu, null);
  const added = a.g.nodes.slice(before);
  const touchesUnused = added.filter((n) => n.inputs.some((i) => i.id === a.u.id || i.id === a.side.id || i.id === a.side.inputs[0].id));
  assert.deepEqual(touchesUnused.map(String), [], 'no backward node reads the unreached branch');

  const b = build();
  const beforeB = b.g.nodes.length;
  grad(b.loss, [b.w]);
  assert.equal(added.length, b.g.nodes.length - beforeB, 'asking for the unreached input adds no nodes');

  const c = build();
  const [gi] = grad(c.loss, [c.idx]);
  assert.equal(gi, null, 'integer inputs have no gradient');
});

test('shape errors at build time name the op and both shapes', () => {
  const g = new Graph();
  const a = g.input('a', 'float32', [2, 3]);
  const b = g.input('b', 'float32', [4, 5]);
  const c = g.input('c', 'float32', [4, 3]);
  const expectShapeError = (fn: () => unknown, op: string, shapes: string[]) => {
    assert.throws(fn, (e: unknown) => {
      assert.ok(e instanceof ShapeError, `expected ShapeError, got ${String(e)}`);
      assert.ok(e.message.startsWith(`${op}:`), `message names the op: ${e.message}`);
      for (const s of shapes) assert.ok(e.message.includes(s), `message names shape ${s}: ${e.message}`);
      return true;
    });
  };
  expectShapeError(() => matmul(a, b), 'matmul', ['[2, 3]', '[4, 5]']);
  expectShapeError(() => add(a, c), 'add', ['[2, 3]', '[4, 3]']);
  expectShapeError(() => mul(a, b), 'mul', ['[2, 3]', '[4, 5]']);
  expectShapeError(() => linear(a, b), 'linear', ['[2, 3]', '[4, 5]']);
  expectShapeError(() => gemm(a, c), 'gemm', ['[2, 3]', '[4, 3]']);
  expectShapeError(() => concat([a, b], 0), 'concat', ['[2, 3]', '[4, 5]']);
  expectShapeError(() => reshape(a, [4, 2]), 'reshape', ['[2, 3]', '[4, 2]']);
  expectShapeError(() => where(g.input('m', 'bool', [3, 3]), a, c), 'where', ['[3, 3]', '[2, 3]']);
  expectShapeError(() => layerNorm(a, g.param('lw', [4]), g.param('lb', [4])), 'layerNorm', ['[2, 3]', '[4]']);
});
