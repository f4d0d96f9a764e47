/**
 * The op set. Each op is defined once, with three things side by side: the builder that
 * infers the output shape (and reports shape errors naming the op and both shapes), the
 * gradient rule used by reverse-mode autodiff, and the ONNX emission.
 */
import { Dim, dimAdd, dimDiv, dimEq, dimProduct, dimSub, dimsConflict, fmtShape, freshDim } from './dims.js';
import { Graph, Tensor, shapeError } from './graph.js';
import type { DType } from './host.js';

// ---------------------------------------------------------------------------------------------
// Emission interface (implemented in onnx.ts)

export type OnnxAttr =
  | { kind: 'f'; value: number }
  | { kind: 'i'; value: number }
  | { kind: 's'; value: string }
  | { kind: 'ints'; value: number[] }
  | { kind: 'floats'; value: number[] }
  | { kind: 't'; dtype: DType; dims: number[]; value: number[] };

export const A = {
  f: (value: number): OnnxAttr => ({ kind: 'f', value }),
  i: (value: number): OnnxAttr => ({ kind: 'i', value }),
  s: (value: string): OnnxAttr => ({ kind: 's', value }),
  ints: (value: number[]): OnnxAttr => ({ kind: 'ints', value }),
};

export interface EmitCtx {
  /** ONNX value name of the i-th input of t. */
  input(t: Tensor, i: number): string;
  node(opType: string, inputs: string[], attrs?: Record<string, OnnxAttr>, domain?: string): string;
  scalar(value: number, dtype: DType): string;
  constTensor(dtype: DType, dims: number[], values: ArrayLike<number>): string;
  consti64(values: number[]): string;
  /** A 1-D int64 tensor holding these (possibly symbolic) dims; -1 allowed once. */
  shapeOf(dims: readonly Dim[]): string;
  /** A [1] int64 tensor with one (possibly symbolic) dimension's value. */
  dim(d: Dim): string;
  /** A [1] int64 tensor = Shape(value)[axis]. */
  dimOfValue(value: string, axis: number): string;
  /**
   * A constant tensor stored as an initializer under `name` (made unique if taken), from raw
   * little-endian bytes of ONNX element type `elemType` (e.g. 3 = int8): weights baked into an
   * inference graph at build time.
   */
  initializer(name: string, elemType: number, dims: number[], raw: Uint8Array): string;
}

interface OpDef {
  emit(ctx: EmitCtx, t: Tensor): string;
  /** Gradients w.r.t. each input, given the gradient g of the output (null = none). */
  grad?(t: Tensor, g: Tensor): Array<Tensor | null>;
}

export const OPS: Record<string, OpDef> = {};

const FLOATS: DType[] = ['float32', 'float64'];
export const isFloat = (d: DType): boolean => FLOATS.includes(d);

function g0(xs: readonly Tensor[]): Graph {
  return xs[0].graph;
}

export type Operand = Tensor | number;

function lift(x: Operand, like: Tensor): Tensor {
  return typeof x === 'number' ? scalar(like.graph, x, like.dtype) : x;
}

function liftPair(a: Operand, b: Operand): [Tensor, Tensor] {
  if (typeof a === 'number' && typeof b === 'number') throw new Error('binary op on two numbers');
  const ta = typeof a === 'number' ? lift(a, b as Tensor) : a;
  const tb = typeof b === 'number' ? lift(b, ta) : b;
  return [ta, tb];
}

export function broadcastShapes(op: string, a: readonly Dim[], b: readonly Dim[]): Dim[] {
  const n = Math.max(a.length, b.length);
  const out: Dim[] = [];
  for (let i = 0; i < n; i++) {
    const x = i - (n - a.length) >= 0 ? a[i - (n - a.length)] : 1;
    const y = i - (n - b.length) >= 0 ? b[i - (n - b.length)] : 1;
    if (x === 1) out.push(y);
    else if (y === 1) out.push(x);
    else if (dimsConflict(x, y)) shapeError(op, `cannot broadcast dimension ${x} with ${y}`, a, b);
    else out.push(typeof x === 'number' ? x : y === x || typeof y !== 'number' ? x : y);
  }
  return out;
}

function normAxis(op: string, axis: number, rank: number, shape: readonly Dim[]): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) shapeError(op, `axis ${axis} out of range for rank ${rank}`, shape);
  return a;
}

// ---------------------------------------------------------------------------------------------
// Sources

/** A constant tensor (scalar when shape is []). */
export function constant(graph: Graph, values: ArrayLike<number>, dtype: DType, shape: number[] = []): Tensor {
  return graph.add('const', [], { values: Array.from(values), dims: shape }, shape, dtype);
}
OPS.const = { emit: (ctx, t) => ctx.constTensor(t.dtype, t.attrs.dims as number[], t.attrs.values as number[]) };

export function scalar(graph: Graph, value: number, dtype: DType = 'float32'): Tensor {
  return constant(graph, [value], dtype, []);
}

OPS.input = { emit: () => { throw new Error('inputs are named, not emitted'); } };

export function zerosLike(x: Tensor): Tensor {
  return x.graph.add('zerosLike', [x], {}, x.shape, x.dtype);
}
OPS.zerosLike = {
  emit: (ctx, t) =>
    ctx.node('ConstantOfShape', [ctx.node('Shape', [ctx.input(t, 0)])], { value: { kind: 't', dtype: t.dtype, dims: [1], value: [0] } }),
};

/** Number of elements of x as a scalar of dtype `dtype`. */
export function sizeOf(x: Tensor, dtype: DType = 'float32'): Tensor {
  return x.graph.add('sizeOf', [x], {}, [], dtype);
}
OPS.sizeOf = { emit: (ctx, t) => ctx.node('Cast', [ctx.node('Size', [ctx.input(t, 0)])], { to: A.i(onnxType(t.dtype)) }) };

export function onnxType(d: DType): number {
  return { float32: 1, float64: 11, int32: 6, int64: 7, bool: 9 }[d];
}

// ---------------------------------------------------------------------------------------------
// Elementwise binary (numpy broadcasting)

function binary(op: string, a: Operand, b: Operand, outDtype?: DType): Tensor {
  const [ta, tb] = liftPair(a, b);
  if (ta.dtype !== tb.dtype) shapeError(op, `dtype mismatch ${ta.dtype} vs ${tb.dtype}`, ta.shape, tb.shape);
  const shape = broadcastShapes(op, ta.shape, tb.shape);
  return g0([ta]).add(op, [ta, tb], {}, shape, outDtype ?? ta.dtype);
}

/** Sum g over the axes along which `shape` was broadcast to g's shape. */
export function reduceTo(g: Tensor, shape: readonly Dim[]): Tensor {
  const lead = g.rank - shape.length;
  let r = g;
  if (lead > 0) r = sum(r, [...Array(lead).keys()], false);
  const axes: number[] = [];
  shape.forEach((d, i) => {
    if (d === 1 && r.shape[i] !== 1) axes.push(i);
  });
  if (axes.length) r = sum(r, axes, true);
  return r;
}

const simpleBinary = (onnx: string) => (ctx: EmitCtx, t: Tensor) => ctx.node(onnx, [ctx.input(t, 0), ctx.input(t, 1)]);

export const add = (a: Operand, b: Operand): Tensor => binary('add', a, b);
OPS.add = { emit: simpleBinary('Add'), grad: (t, g) => [reduceTo(g, t.inputs[0].shape), reduceTo(g, t.inputs[1].shape)] };

export const sub = (a: Operand, b: Operand): Tensor => binary('sub', a, b);
OPS.sub = { emit: simpleBinary('Sub'), grad: (t, g) => [reduceTo(g, t.inputs[0].shape), reduceTo(neg(g), t.inputs[1].shape)] };

export const mul = (a: Operand, b: Operand): Tensor => binary('mul', a, b);
OPS.mul = {
  emit: simpleBinary('Mul'),
  grad: (t, g) => [reduceTo(mul(g, t.inputs[1]), t.inputs[0].shape), reduceTo(mul(g, t.inputs[0]), t.inputs[1].shape)],
};

export const div = (a: Operand, b: Operand): Tensor => binary('div', a, b);
OPS.div = {
  emit: simpleBinary('Div'),
  grad: (t, g) => {
    const [a, b] = t.inputs;
    return [reduceTo(div(g, b), a.shape), reduceTo(neg(div(mul(g, t), b)), b.shape)];
  },
};

export const maximum = (a: Operand, b: Operand): Tensor => binary('maximum', a, b);
OPS.maximum = {
  emit: simpleBinary('Max'),
  grad: (t, g) => {
    const [a, b] = t.inputs;
    const pick = greaterEqual(a, b);
    return [reduceTo(where(pick, g, 0), a.shape), reduceTo(where(pick, 0, g), b.shape)];
  },
};

export const minimum = (a: Operand, b: Operand): Tensor => binary('minimum', a, b);
OPS.minimum = {
  emit: simpleBinary('Min'),
  grad: (t, g) => {
    const [a, b] = t.inputs;
    const pick = lessEqual(a, b);
    return [reduceTo(where(pick, g, 0), a.shape), reduceTo(where(pick, 0, g), b.shape)];
  },
};

/** x ** p for a constant exponent. */
export function pow(x: Tensor, p: number): Tensor {
  return x.graph.add('pow', [x], { p }, x.shape, x.dtype);
}
OPS.pow = {
  emit: (ctx, t) => ctx.node('Pow', [ctx.input(t, 0), ctx.scalar(t.attrs.p as number, t.dtype)]),
  grad: (t, g) => {
    const p = t.attrs.p as number;
    return [mul(g, mul(pow(t.inputs[0], p - 1), p))];
  },
};

// comparisons and logic (no gradients)
export const equal = (a: Operand, b: Operand): Tensor => binary('equal', a, b, 'bool');
export const less = (a: Operand, b: Operand): Tensor => binary('less', a, b, 'bool');
export const lessEqual = (a: Operand, b: Operand): Tensor => binary('lessEqual', a, b, 'bool');
export const greater = (a: Operand, b: Operand): Tensor => binary('greater', a, b, 'bool');
export const greaterEqual = (a: Operand, b: Operand): Tensor => binary('greaterEqual', a, b, 'bool');
export const and = (a: Tensor, b: Tensor): Tensor => binary('and', a, b, 'bool');
export const or = (a: Tensor, b: Tensor): Tensor => binary('or', a, b, 'bool');
OPS.equal = { emit: simpleBinary('Equal') };
OPS.less = { emit: simpleBinary('Less') };
OPS.lessEqual = { emit: simpleBinary('LessOrEqual') };
OPS.greater = { emit: simpleBinary('Greater') };
OPS.greaterEqual = { emit: simpleBinary('GreaterOrEqual') };
OPS.and = { emit: simpleBinary('And') };
OPS.or = { emit: simpleBinary('Or') };

export function not(x: Tensor): Tensor {
  return x.graph.add('not', [x], {}, x.shape, 'bool');
}
OPS.not = { emit: (ctx, t) => ctx.node('Not', [ctx.input(t, 0)]) };

/** cond ? a : b with broadcasting. */
export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  const [ta, tb] = liftPair(a, b);
  if (cond.dtype !== 'bool') shapeError('where', `condition must be bool, got ${cond.dtype}`, cond.shape);
  if (ta.dtype !== tb.dtype) shapeError('where', `dtype mismatch ${ta.dtype} vs ${tb.dtype}`, ta.shape, tb.shape);
  const shape = broadcastShapes('where', broadcastShapes('where', cond.shape, ta.shape), tb.shape);
  return cond.graph.add('where', [cond, ta, tb], {}, shape, ta.dtype);
}
OPS.where = {
  emit: (ctx, t) => ctx.node('Where', [ctx.input(t, 0), ctx.input(t, 1), ctx.input(t, 2)]),
  grad: (t, g) => {
    const [c, a, b] = t.inputs;
    return [null, reduceTo(where(c, g, 0), a.shape), reduceTo(where(c, 0, g), b.shape)];
  },
};

// ---------------------------------------------------------------------------------------------
// Elementwise unary

function unary(op: string, x: Tensor): Tensor {
  if (!isFloat(x.dtype) && op !== 'neg' && op !== 'abs') shapeError(op, `needs a float tensor, got ${x.dtype}`, x.shape);
  return x.graph.add(op, [x], {}, x.shape, x.dtype);
}
const simpleUnary = (onnx: string) => (ctx: EmitCtx, t: Tensor) => ctx.node(onnx, [ctx.input(t, 0)]);

export const neg = (x: Tensor): Tensor => unary('neg', x);
OPS.neg = { emit: simpleUnary('Neg'), grad: (_t, g) => [neg(g)] };
export const exp = (x: Tensor): Tensor => unary('exp', x);
OPS.exp = { emit: simpleUnary('Exp'), grad: (t, g) => [mul(g, t)] };
export const log = (x: Tensor): Tensor => unary('log', x);
OPS.log = { emit: simpleUnary('Log'), grad: (t, g) => [div(g, t.inputs[0])] };
export const sqrt = (x: Tensor): Tensor => unary('sqrt', x);
OPS.sqrt = { emit: simpleUnary('Sqrt'), grad: (t, g) => [div(mul(g, 0.5), t)] };
export const tanh = (x: Tensor): Tensor => unary('tanh', x);
OPS.tanh = { emit: simpleUnary('Tanh'), grad: (t, g) => [mul(g, sub(1, mul(t, t)))] };
export const erf = (x: Tensor): Tensor => unary('erf', x);
OPS.erf = {
  emit: simpleUnary('Erf'),
  grad: (t, g) => {
    const x = t.inputs[0];
    return [mul(g, mul(exp(neg(mul(x, x))), 2 / Math.sqrt(Math.PI)))];
  },
};
export const relu = (x: Tensor): Tensor => unary('relu', x);
OPS.relu = { emit: simpleUnary('Relu'), grad: (t, g) => [where(greater(t.inputs[0], 0), g, 0)] };
export const sigmoid = (x: Tensor): Tensor => unary('sigmoid', x);
OPS.sigmoid = { emit: simpleUnary('Sigmoid'), grad: (t, g) => [mul(g, mul(t, sub(1, t)))] };
export const abs = (x: Tensor): Tensor => unary('abs', x);
OPS.abs = { emit: simpleUnary('Abs'), grad: (t, g) => [where(greaterEqual(t.inputs[0], 0), g, neg(g))] };

export function cast(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x;
  return x.graph.add('cast', [x], { to: dtype }, x.shape, dtype);
}
OPS.cast = {
  emit: (ctx, t) => ctx.node('Cast', [ctx.input(t, 0)], { to: A.i(onnxType(t.dtype)) }),
  grad: (t, g) => [isFloat(t.inputs[0].dtype) ? cast(g, t.inputs[0].dtype) : null],
};

/**
 * A copy of x that ONNX Runtime computes only once every tensor of `tokens` exists (x
 * concatenated with an empty slice of each): an order the graph itself states. ONNX Runtime runs
 * nodes in a depth-first order from the graph outputs, which leaves side branches (a layer's
 * weight gradients) to the end of the step, keeping their inputs alive; and its optimizer's
 * common-subexpression elimination merges a recomputation with the forward nodes it repeats
 * unless the recomputation starts from a different value. See `grad` in autodiff.ts.
 */
export function after(x: Tensor, tokens: readonly Tensor[]): Tensor {
  if (tokens.length === 0) return x;
  return x.graph.add('after', [x, ...tokens], {}, x.shape, x.dtype);
}
OPS.after = {
  emit: (ctx, t) => {
    const flat = ctx.consti64([-1]);
    const none = ctx.consti64([0]);
    const empties = t.inputs.slice(1).map((tok, k) => {
      const e = ctx.node('Slice', [ctx.node('Reshape', [ctx.input(t, k + 1), flat]), none, none, none]);
      return tok.dtype === t.dtype ? e : ctx.node('Cast', [e], { to: A.i(onnxType(t.dtype)) });
    });
    const joined = ctx.node('Concat', [ctx.node('Reshape', [ctx.input(t, 0), flat]), ...empties], { axis: A.i(0) });
    return ctx.node('Reshape', [joined, ctx.node('Shape', [ctx.input(t, 0)])]);
  },
  grad: (t, g) => [g, ...t.inputs.slice(1).map(() => null)],
};

/** Identity in the forward pass; blocks gradients (used for the detached IPOT plan). */
export function stopGradient(x: Tensor): Tensor {
  return x.graph.add('stopGradient', [x], {}, x.shape, x.dtype);
}
OPS.stopGradient = { emit: simpleUnary('Identity'), grad: () => [null] };

// ---------------------------------------------------------------------------------------------
// Matrix product (numpy matmul semantics, rank >= 2)

export function matmul(a: Tensor, b: Tensor): Tensor {
  if (a.rank < 2 || b.rank < 2) shapeError('matmul', 'both operands need rank >= 2', a.shape, b.shape);
  if (a.dtype !== b.dtype) shapeError('matmul', `dtype mismatch ${a.dtype} vs ${b.dtype}`, a.shape, b.shape);
  const k1 = a.shape[a.rank - 1];
  const k2 = b.shape[b.rank - 2];
  if (dimsConflict(k1, k2)) shapeError('matmul', `inner dimensions differ (${k1} vs ${k2})`, a.shape, b.shape);
  const batch = broadcastShapes('matmul', a.shape.slice(0, -2), b.shape.slice(0, -2));
  return a.graph.add('matmul', [a, b], {}, [...batch, a.shape[a.rank - 2], b.shape[b.rank - 1]], a.dtype);
}
OPS.matmul = {
  emit: simpleBinary('MatMul'),
  grad: (t, g) => {
    const [a, b] = t.inputs;
    const ga = reduceTo(matmul(g, transposeLast2(b)), a.shape);
    // A batched input times a 2-D matrix (x @ W): the gradient of W is one GEMM over all rows,
    // not a batched product followed by a sum over the batch.
    if (b.rank === 2 && a.rank > 2) return [ga, gemm(flattenLead(a), flattenLead(g), { transA: true })];
    return [ga, reduceTo(matmul(transposeLast2(a), g), b.shape)];
  },
};

/** [..., K] -> [prod(...), K] (ONNX Flatten; no shape arithmetic needed at run time). */
export function flattenLead(x: Tensor): Tensor {
  if (x.rank === 2) return x;
  if (x.rank < 1) shapeError('flattenLead', 'needs rank >= 1', x.shape);
  return x.graph.add('flattenLead', [x], {}, [dimProduct(x.shape.slice(0, -1)), x.shape[x.rank - 1]], x.dtype);
}
OPS.flattenLead = {
  emit: (ctx, t) => ctx.node('Flatten', [ctx.input(t, 0)], { axis: A.i(Math.max(0, t.inputs[0].rank - 1)) }),
  grad: (t, g) => [reshapeAs(g, t.inputs[0])],
};

/** Inverse of flattenLead: [N, M] -> [...like.shape[:-1], M], read from `like` at run time. */
function restoreLead(y: Tensor, like: Tensor): Tensor {
  if (like.rank === 2) return y;
  return y.graph.add('restoreLead', [y, like], {}, [...like.shape.slice(0, -1), y.shape[1]], y.dtype);
}
OPS.restoreLead = {
  emit: (ctx, t) => {
    const lead = ctx.node('Shape', [ctx.input(t, 1)], { start: A.i(0), end: A.i(-1) });
    const last = ctx.dimOfValue(ctx.input(t, 0), 1);
    return ctx.node('Reshape', [ctx.input(t, 0), ctx.node('Concat', [lead, last], { axis: A.i(0) })]);
  },
  grad: (t, g) => [reshapeAs(g, t.inputs[0]), null],
};

export interface GemmOptions {
  transA?: boolean;
  transB?: boolean;
}

/** 2-D product op(a) @ op(b) (+ bias [n] added to every row), op = optional transpose: ONNX Gemm. */
export function gemm(a: Tensor, b: Tensor, opts: GemmOptions = {}, bias?: Tensor): Tensor {
  if (a.rank !== 2 || b.rank !== 2) shapeError('gemm', 'both operands need rank 2', a.shape, b.shape);
  if (a.dtype !== b.dtype) shapeError('gemm', `dtype mismatch ${a.dtype} vs ${b.dtype}`, a.shape, b.shape);
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const [m, k1] = transA ? [a.shape[1], a.shape[0]] : [a.shape[0], a.shape[1]];
  const [k2, n] = transB ? [b.shape[1], b.shape[0]] : [b.shape[0], b.shape[1]];
  if (dimsConflict(k1, k2)) shapeError('gemm', `inner dimensions differ (${k1} vs ${k2}; transA=${transA}, transB=${transB})`, a.shape, b.shape);
  if (bias && (bias.rank !== 1 || dimsConflict(bias.shape[0], n) || bias.dtype !== a.dtype)) shapeError('gemm', `bias must be ${a.dtype} [${n}]`, bias.shape, [m, n]);
  return a.graph.add('gemm', bias ? [a, b, bias] : [a, b], { transA, transB }, [m, n], a.dtype);
}
OPS.gemm = {
  emit: (ctx, t) =>
    ctx.node(
      'Gemm',
      t.inputs.map((_, i) => ctx.input(t, i)),
      { transA: A.i(t.attrs.transA ? 1 : 0), transB: A.i(t.attrs.transB ? 1 : 0) },
    ),
  grad: (t, g) => {
    const [a, b, bias] = t.inputs;
    const tA = t.attrs.transA as boolean;
    const tB = t.attrs.transB as boolean;
    // C = op(A) op(B): each input's gradient is again one GEMM with transpose flags, no Transpose nodes.
    let ga: Tensor;
    let gb: Tensor;
    if (!tA && !tB) [ga, gb] = [gemm(g, b, { transB: true }), gemm(a, g, { transA: true })];
    else if (!tA && tB) [ga, gb] = [gemm(g, b), gemm(g, a, { transA: true })];
    else if (tA && !tB) [ga, gb] = [gemm(b, g, { transB: true }), gemm(a, g)];
    else [ga, gb] = [gemm(b, g, { transA: true, transB: true }), gemm(g, a, { transA: true, transB: true })];
    return bias ? [ga, gb, sum(g, [0])] : [ga, gb];
  },
};

export function transposeLast2(x: Tensor): Tensor {
  const perm = [...Array(x.rank).keys()];
  perm[x.rank - 1] = x.rank - 2;
  perm[x.rank - 2] = x.rank - 1;
  return transpose(x, perm);
}

/** x @ W^T + b, PyTorch Linear convention (W is [out, in]). */
export function linear(x: Tensor, w: Tensor, b?: Tensor): Tensor {
  if (w.rank !== 2) shapeError('linear', 'weight must be [out, in]', x.shape, w.shape);
  if (dimsConflict(x.shape[x.rank - 1], w.shape[1])) shapeError('linear', `input features ${x.shape[x.rank - 1]} vs weight in-features ${w.shape[1]}`, x.shape, w.shape);
  if (b && (b.rank !== 1 || dimsConflict(b.shape[0], w.shape[0]))) shapeError('linear', `bias must be [${w.shape[0]}]`, w.shape, b.shape);
  // One GEMM over all leading positions: forward and both weight gradients stay single 2-D
  // products (no weight Transpose, no batched product summed over the batch).
  return restoreLead(gemm(flattenLead(x), w, { transB: true }, b), x);
}

// ---------------------------------------------------------------------------------------------
// Reductions

function reduceShape(op: string, x: Tensor, axes: number[], keepdims: boolean): { axes: number[]; shape: Dim[] } {
  const ax = axes.map((a) => normAxis(op, a, x.rank, x.shape)).sort((p, q) => p - q);
  const shape: Dim[] = [];
  x.shape.forEach((d, i) => {
    if (ax.includes(i)) {
      if (keepdims) shape.push(1);
    } else shape.push(d);
  });
  return { axes: ax, shape };
}

/** Undo a reduction's shape: put back the reduced axes and broadcast to the input's shape. */
function unreduce(g: Tensor, x: Tensor, axes: number[], keepdims: boolean): Tensor {
  const kept = keepdims ? g : unsqueeze(g, axes);
  return expandAs(kept, x);
}

const reduceEmit = (onnx: string) => (ctx: EmitCtx, t: Tensor) =>
  ctx.node(onnx, [ctx.input(t, 0), ctx.consti64(t.attrs.axes as number[])], { keepdims: A.i(t.attrs.keepdims ? 1 : 0) });

export function sum(x: Tensor, axes: number[], keepdims = false): Tensor {
  const r = reduceShape('sum', x, axes, keepdims);
  return x.graph.add('sum', [x], { axes: r.axes, keepdims }, r.shape, x.dtype);
}
OPS.sum = {
  emit: reduceEmit('ReduceSum'),
  grad: (t, g) => [unreduce(g, t.inputs[0], t.attrs.axes as number[], t.attrs.keepdims as boolean)],
};

export function mean(x: Tensor, axes: number[], keepdims = false): Tensor {
  const r = reduceShape('mean', x, axes, keepdims);
  return x.graph.add('mean', [x], { axes: r.axes, keepdims }, r.shape, x.dtype);
}
OPS.mean = {
  emit: reduceEmit('ReduceMean'),
  grad: (t, g) => {
    const x = t.inputs[0];
    const count = div(sizeOf(x, x.dtype), sizeOf(t, x.dtype));
    return [div(unreduce(g, x, t.attrs.axes as number[], t.attrs.keepdims as boolean), count)];
  },
};

export function max(x: Tensor, axes: number[], keepdims = false): Tensor {
  const r = reduceShape('max', x, axes, keepdims);
  return x.graph.add('max', [x], { axes: r.axes, keepdims }, r.shape, x.dtype);
}
OPS.max = {
  emit: reduceEmit('ReduceMax'),
  grad: (t, g) => {
    const x = t.inputs[0];
    const axes = t.attrs.axes as number[];
    const keep = t.attrs.keepdims as boolean;
    return [where(equal(x, unreduce(t, x, axes, keep)), unreduce(g, x, axes, keep), 0)];
  },
};

/** Sum of all elements as a scalar. */
export function sumAll(x: Tensor): Tensor {
  return sum(x, [...Array(x.rank).keys()], false);
}

export function meanAll(x: Tensor): Tensor {
  return mean(x, [...Array(x.rank).keys()], false);
}

// ---------------------------------------------------------------------------------------------
// Normalisations

export function softmax(x: Tensor, axis = -1): Tensor {
  const a = normAxis('softmax', axis, x.rank, x.shape);
  return x.graph.add('softmax', [x], { axis: a }, x.shape, x.dtype);
}
OPS.softmax = {
  emit: (ctx, t) => ctx.node('Softmax', [ctx.input(t, 0)], { axis: A.i(t.attrs.axis as number) }),
  grad: (t, g) => [mul(t, sub(g, sum(mul(g, t), [t.attrs.axis as number], true)))],
};

export function logSoftmax(x: Tensor, axis = -1): Tensor {
  const a = normAxis('logSoftmax', axis, x.rank, x.shape);
  return x.graph.add('logSoftmax', [x], { axis: a }, x.shape, x.dtype);
}
OPS.logSoftmax = {
  emit: (ctx, t) => ctx.node('LogSoftmax', [ctx.input(t, 0)], { axis: A.i(t.attrs.axis as number) }),
  grad: (t, g) => [sub(g, mul(exp(t), sum(g, [t.attrs.axis as number], true)))],
};

/** LayerNorm over the last axis: (x - mean) / sqrt(biased var + eps) * w + b. */
export function layerNorm(x: Tensor, w: Tensor, b: Tensor, eps = 1e-12): Tensor {
  const h = x.shape[x.rank - 1];
  if (w.rank !== 1 || b.rank !== 1 || dimsConflict(w.shape[0], h) || dimsConflict(b.shape[0], h))
    shapeError('layerNorm', 'weight and bias must be [hidden] matching the last axis', x.shape, w.shape);
  return x.graph.add('layerNorm', [x, w, b], { eps }, x.shape, x.dtype);
}
OPS.layerNorm = {
  emit: (ctx, t) =>
    ctx.node('LayerNormalization', [ctx.input(t, 0), ctx.input(t, 1), ctx.input(t, 2)], {
      axis: A.i(-1),
      epsilon: A.f(t.attrs.eps as number),
    }),
  grad: (t, g) => {
    const [x, w, b] = t.inputs;
    const eps = t.attrs.eps as number;
    const mu = mean(x, [-1], true);
    const xc = sub(x, mu);
    const rstd = div(1, sqrt(add(mean(mul(xc, xc), [-1], true), eps)));
    const xhat = mul(xc, rstd);
    const gxhat = mul(g, w);
    const gx = mul(rstd, sub(sub(gxhat, mean(gxhat, [-1], true)), mul(xhat, mean(mul(gxhat, xhat), [-1], true))));
    return [gx, reduceTo(mul(g, xhat), w.shape), reduceTo(g, b.shape)];
  },
};

// ---------------------------------------------------------------------------------------------
// Shape manipulation

/** Reshape; one dim may be -1 (inferred). */
export function reshape(x: Tensor, shape: readonly Dim[]): Tensor {
  const total = dimProduct(x.shape);
  const known = shape.filter((d) => d !== -1);
  const nInfer = shape.length - known.length;
  if (nInfer > 1) shapeError('reshape', 'more than one -1 in target shape', x.shape, shape);
  let out = [...shape];
  if (nInfer === 1) {
    const inferred = dimDiv(total, dimProduct(known)) ?? x.graph.derivedDim(total, dimProduct(known));
    out = shape.map((d) => (d === -1 ? inferred : d));
  } else if (typeof total === 'number' && typeof dimProduct(out) === 'number' && total !== dimProduct(out)) {
    shapeError('reshape', `element counts differ (${total} vs ${dimProduct(out)})`, x.shape, shape);
  }
  return x.graph.add('reshape', [x], { target: shape }, out, x.dtype);
}
OPS.reshape = {
  emit: (ctx, t) => ctx.node('Reshape', [ctx.input(t, 0), ctx.shapeOf(t.attrs.target as Dim[])]),
  grad: (t, g) => [reshapeAs(g, t.inputs[0])],
};

/** Reshape x to the (run-time) shape of `like`. */
export function reshapeAs(x: Tensor, like: Tensor): Tensor {
  return x.graph.add('reshapeAs', [x, like], {}, like.shape, x.dtype);
}
OPS.reshapeAs = {
  emit: (ctx, t) => ctx.node('Reshape', [ctx.input(t, 0), ctx.node('Shape', [ctx.input(t, 1)])]),
  grad: (t, g) => [reshapeAs(g, t.inputs[0]), null],
};

export function transpose(x: Tensor, perm: number[]): Tensor {
  if (perm.length !== x.rank || [...perm].sort().some((p, i) => p !== i)) shapeError('transpose', `bad permutation [${perm}]`, x.shape);
  return x.graph.add('transpose', [x], { perm }, perm.map((p) => x.shape[p]), x.dtype);
}
OPS.transpose = {
  emit: (ctx, t) => ctx.node('Transpose', [ctx.input(t, 0)], { perm: A.ints(t.attrs.perm as number[]) }),
  grad: (t, g) => {
    const perm = t.attrs.perm as number[];
    const inv = perm.map((_, i) => perm.indexOf(i));
    return [transpose(g, inv)];
  },
};

export function unsqueeze(x: Tensor, axes: number[]): Tensor {
  const rank = x.rank + axes.length;
  const ax = axes.map((a) => (a < 0 ? a + rank : a)).sort((p, q) => p - q);
  const shape: Dim[] = [];
  let j = 0;
  for (let i = 0; i < rank; i++) shape.push(ax.includes(i) ? 1 : x.shape[j++]);
  return x.graph.add('unsqueeze', [x], { axes: ax }, shape, x.dtype);
}
OPS.unsqueeze = {
  emit: (ctx, t) => ctx.node('Unsqueeze', [ctx.input(t, 0), ctx.consti64(t.attrs.axes as number[])]),
  grad: (t, g) => [reshapeAs(g, t.inputs[0])],
};

export function squeeze(x: Tensor, axes: number[]): Tensor {
  const ax = axes.map((a) => normAxis('squeeze', a, x.rank, x.shape));
  for (const a of ax) if (dimsConflict(x.shape[a], 1)) shapeError('squeeze', `axis ${a} has size ${x.shape[a]}, not 1`, x.shape);
  return x.graph.add('squeeze', [x], { axes: ax }, x.shape.filter((_, i) => !ax.includes(i)), x.dtype);
}
OPS.squeeze = {
  emit: (ctx, t) => ctx.node('Squeeze', [ctx.input(t, 0), ctx.consti64(t.attrs.axes as number[])]),
  grad: (t, g) => [reshapeAs(g, t.inputs[0])],
};

export function concat(xs: Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new Error('concat: no inputs');
  const r = xs[0].rank;
  const a = normAxis('concat', axis, r, xs[0].shape);
  for (const x of xs) {
    if (x.rank !== r) shapeError('concat', 'ranks differ', xs[0].shape, x.shape);
    if (x.dtype !== xs[0].dtype) shapeError('concat', `dtype mismatch ${xs[0].dtype} vs ${x.dtype}`, xs[0].shape, x.shape);
    x.shape.forEach((d, i) => {
      if (i !== a && dimsConflict(d, xs[0].shape[i])) shapeError('concat', `dimension ${i} differs`, xs[0].shape, x.shape);
    });
  }
  const shape = [...xs[0].shape];
  shape[a] = xs.map((x) => x.shape[a]).reduce((p, q) => dimAdd(p, q), 0 as Dim);
  return xs[0].graph.add('concat', xs, { axis: a }, shape, xs[0].dtype);
}
OPS.concat = {
  emit: (ctx, t) => ctx.node('Concat', t.inputs.map((_, i) => ctx.input(t, i)), { axis: A.i(t.attrs.axis as number) }),
  grad: (t, g) => t.inputs.map((_, i) => concatPart(g, t, i)),
};

/** The slice of a concat's gradient that belongs to its i-th input (offsets read at run time). */
function concatPart(g: Tensor, cat: Tensor, index: number): Tensor {
  return g.graph.add('concatPart', [g, ...cat.inputs], { axis: cat.attrs.axis, index }, cat.inputs[index].shape, g.dtype);
}
OPS.concatPart = {
  emit: (ctx, t) => {
    const axis = t.attrs.axis as number;
    const index = t.attrs.index as number;
    const sizes = t.inputs.slice(1).map((_, j) => ctx.dimOfValue(ctx.input(t, j + 1), axis));
    let start = ctx.consti64([0]);
    for (let j = 0; j < index; j++) start = ctx.node('Add', [start, sizes[j]]);
    const end = ctx.node('Add', [start, sizes[index]]);
    return ctx.node('Slice', [ctx.input(t, 0), start, end, ctx.consti64([axis])]);
  },
};

/** x[..., start:end, ...] along one axis; bounds may be symbolic dims. */
export function slice(x: Tensor, axis: number, start: Dim, end: Dim): Tensor {
  const a = normAxis('slice', axis, x.rank, x.shape);
  const shape = [...x.shape];
  shape[a] = dimSub(end, start);
  if (typeof shape[a] === 'number' && (shape[a] as number) < 0) shapeError('slice', `empty range ${start}:${end}`, x.shape);
  return x.graph.add('slice', [x], { axis: a, start, end }, shape, x.dtype);
}
OPS.slice = {
  emit: (ctx, t) =>
    ctx.node('Slice', [ctx.input(t, 0), ctx.dim(t.attrs.start as Dim), ctx.dim(t.attrs.end as Dim), ctx.consti64([t.attrs.axis as number])]),
  grad: (t, g) => [t.graph.add('sliceGrad', [g, t.inputs[0]], t.attrs, t.inputs[0].shape, g.dtype)],
};
OPS.sliceGrad = {
  // Pad the gradient of a slice back to the input's shape with zeros.
  emit: (ctx, t) => {
    const like = t.inputs[1];
    const axis = t.attrs.axis as number;
    const r = like.rank;
    const before: string[] = [];
    const after: string[] = [];
    for (let i = 0; i < r; i++) {
      if (i === axis) {
        before.push(ctx.dim(t.attrs.start as Dim));
        const len = ctx.dimOfValue(ctx.input(t, 1), axis);
        after.push(ctx.node('Sub', [len, ctx.dim(t.attrs.end as Dim)]));
      } else {
        before.push(ctx.consti64([0]));
        after.push(ctx.consti64([0]));
      }
    }
    const pads = ctx.node('Concat', [...before, ...after], { axis: A.i(0) });
    return ctx.node('Pad', [ctx.input(t, 0), pads]);
  },
};

export function split(x: Tensor, axis: number, sizes: Dim[]): Tensor[] {
  const out: Tensor[] = [];
  let start: Dim = 0;
  for (const s of sizes) {
    const end = dimAdd(start, s);
    out.push(slice(x, axis, start, end));
    start = end;
  }
  return out;
}

/** Broadcast x to a shape given by dims. */
export function expand(x: Tensor, shape: readonly Dim[]): Tensor {
  const out = broadcastShapes('expand', x.shape, shape);
  return x.graph.add('expand', [x], { target: shape }, out, x.dtype);
}
OPS.expand = {
  emit: (ctx, t) => ctx.node('Expand', [ctx.input(t, 0), ctx.shapeOf(t.attrs.target as Dim[])]),
  grad: (t, g) => [reduceTo(g, t.inputs[0].shape)],
};

/** Broadcast x to the run-time shape of `like`. */
export function expandAs(x: Tensor, like: Tensor): Tensor {
  const out = broadcastShapes('expandAs', x.shape, like.shape);
  return x.graph.add('expandAs', [x, like], {}, out, x.dtype);
}
OPS.expandAs = {
  emit: (ctx, t) => ctx.node('Expand', [ctx.input(t, 0), ctx.node('Shape', [ctx.input(t, 1)])]),
  grad: (t, g) => [reduceTo(g, t.inputs[0].shape), null],
};

// ---------------------------------------------------------------------------------------------
// Indexing

/** Rows of `table` picked by integer `indices` along axis 0 (embedding lookup): [...idx, ...table[1:]]. */
export function gather(table: Tensor, indices: Tensor): Tensor {
  if (indices.dtype !== 'int64' && indices.dtype !== 'int32') shapeError('gather', `indices must be int64/int32, got ${indices.dtype}`, table.shape, indices.shape);
  return table.graph.add('gather', [table, indices], {}, [...indices.shape, ...table.shape.slice(1)], table.dtype);
}
OPS.gather = {
  emit: (ctx, t) => ctx.node('Gather', [ctx.input(t, 0), ctx.input(t, 1)], { axis: A.i(0) }),
  grad: (t, g) => [scatterAddRows(zerosLike(t.inputs[0]), t.inputs[1], g), null],
};

/** base with updates[k] added to row indices[k] (duplicates accumulate): the gradient of gather. */
export function scatterAddRows(base: Tensor, indices: Tensor, updates: Tensor): Tensor {
  return base.graph.add('scatterAddRows', [base, indices, updates], {}, base.shape, base.dtype);
}
OPS.scatterAddRows = {
  emit: (ctx, t) =>
    ctx.node('ScatterND', [ctx.input(t, 0), ctx.node('Unsqueeze', [ctx.input(t, 1), ctx.consti64([-1])]), ctx.input(t, 2)], {
      reduction: A.s('add'),
    }),
  grad: (t, g) => [g, null, gather(g, t.inputs[1])],
};

/** torch.gather: out[i][j] = x[i][idx[i][j]] along `axis`. */
export function gatherElements(x: Tensor, indices: Tensor, axis: number): Tensor {
  const a = normAxis('gatherElements', axis, x.rank, x.shape);
  if (indices.rank !== x.rank) shapeError('gatherElements', 'indices must have the rank of the data', x.shape, indices.shape);
  return x.graph.add('gatherElements', [x, indices], { axis: a }, indices.shape, x.dtype);
}
OPS.gatherElements = {
  emit: (ctx, t) => ctx.node('GatherElements', [ctx.input(t, 0), ctx.input(t, 1)], { axis: A.i(t.attrs.axis as number) }),
  grad: (t, g) => [scatterAdd(zerosLike(t.inputs[0]), t.inputs[1], g, t.attrs.axis as number), null],
};

/** torch.scatter_add: base[..idx[i][j]..] += updates[i][j] along `axis`. */
export function scatterAdd(base: Tensor, indices: Tensor, updates: Tensor, axis: number): Tensor {
  const a = normAxis('scatterAdd', axis, base.rank, base.shape);
  if (indices.rank !== base.rank) shapeError('scatterAdd', 'indices must have the rank of the data', base.shape, indices.shape);
  return base.graph.add('scatterAdd', [base, indices, updates], { axis: a }, base.shape, base.dtype);
}
OPS.scatterAdd = {
  emit: (ctx, t) =>
    ctx.node('ScatterElements', [ctx.input(t, 0), ctx.input(t, 1), ctx.input(t, 2)], {
      axis: A.i(t.attrs.axis as number),
      reduction: A.s('add'),
    }),
  grad: (t, g) => [g, null, gatherElements(g, t.inputs[1], t.attrs.axis as number)],
};

/** One-hot encoding along a new last axis (float). */
export function oneHot(indices: Tensor, depth: number, dtype: DType = 'float32'): Tensor {
  const range = constant(indices.graph, [...Array(depth).keys()], indices.dtype, [depth]);
  return cast(equal(unsqueeze(indices, [-1]), range), dtype);
}

// ---------------------------------------------------------------------------------------------
// Composites used across the model

/** Exact GELU: x * 0.5 * (1 + erf(x / sqrt(2))). */
export function gelu(x: Tensor): Tensor {
  if (!isFloat(x.dtype)) shapeError('gelu', `needs a float tensor, got ${x.dtype}`, x.shape);
  return x.graph.add('gelu', [x], {}, x.shape, x.dtype);
}
OPS.gelu = {
  // Emitted as Div(x, sqrt 2) -> Erf -> Add 1 -> Mul with Mul(x, 0.5): the exact form ONNX
  // Runtime's GeluFusion recognises. Its intermediates have no other consumers (the gradient
  // rule below starts again from x), so training graphs get the one fused kernel too.
  emit: (ctx, t) => {
    const x = ctx.input(t, 0);
    const onePlusErf = ctx.node('Add', [ctx.node('Erf', [ctx.node('Div', [x, ctx.scalar(Math.SQRT2, t.dtype)])]), ctx.scalar(1, t.dtype)]);
    return ctx.node('Mul', [ctx.node('Mul', [x, ctx.scalar(0.5, t.dtype)]), onePlusErf]);
  },
  // gelu'(x) = Phi(x) + x phi(x), from x (which the backward keeps instead of the slope: same size).
  grad: (t, g) => {
    const x = t.inputs[0];
    const twicePhi = add(erf(mul(x, Math.SQRT1_2)), 1);
    const xDensity = mul(x, exp(mul(mul(x, x), -0.5))); // x phi(x) sqrt(2 pi)
    const twiceSlope = add(twicePhi, mul(xDensity, 2 / Math.sqrt(2 * Math.PI)));
    return [mul(mul(g, 0.5), twiceSlope)];
  },
};

/** Inverted dropout with a mask the runtime draws from (seed, step); identity when not training. */
export function dropout(x: Tensor, p: number, training: boolean): Tensor {
  if (!training || p <= 0) return x;
  return maskedScale(x, x.graph.dropoutMask(x, 1 - p), 1 / (1 - p));
}

/**
 * mask ? x * scale : 0 for a bool mask shaped like x. Its own gradient rule (the same op on the
 * gradient), so the backward keeps only the byte mask: the values are those of x times a float
 * mask of 0 / scale (the product rounds once either way).
 */
export function maskedScale(x: Tensor, mask: Tensor, scale: number): Tensor {
  if (mask.dtype !== 'bool') shapeError('maskedScale', `mask must be bool, got ${mask.dtype}`, x.shape, mask.shape);
  if (mask.rank !== x.rank || mask.shape.some((d, i) => dimsConflict(d, x.shape[i]))) shapeError('maskedScale', 'mask must be shaped like the input', x.shape, mask.shape);
  return x.graph.add('maskedScale', [x, mask], { scale }, x.shape, x.dtype);
}
OPS.maskedScale = {
  emit: (ctx, t) => ctx.node('Where', [ctx.input(t, 1), ctx.node('Mul', [ctx.input(t, 0), ctx.scalar(t.attrs.scale as number, t.dtype)]), ctx.scalar(0, t.dtype)]),
  grad: (t, g) => [maskedScale(g, t.inputs[1], t.attrs.scale as number), null],
};

/** Per-row cross entropy of logits [N, C] against integer targets [N]. */
export function crossEntropy(logits: Tensor, targets: Tensor): Tensor {
  const lp = logSoftmax(logits, -1);
  const picked = gatherElements(lp, unsqueeze(targets, [-1]), 1);
  return neg(squeeze(picked, [1]));
}

/** Elementwise binary cross-entropy with logits (numerically stable form). */
export function bceWithLogits(logits: Tensor, targets: Tensor): Tensor {
  // max(x,0) - x*t + log(1 + exp(-|x|))
  return add(sub(relu(logits), mul(logits, targets)), log(add(exp(neg(abs(logits))), 1)));
}

// ---------------------------------------------------------------------------------------------
// Vision ops (inference only: the region detector is never trained here, so no gradient rules)

/** Output length of a convolution or pooling window along one axis (floor, or ceil for Caffe pooling). */
export function windowOut(size: Dim, kernel: number, stride: number, pad: number, dilation = 1, ceil = false): Dim {
  // A size that depends on a symbolic input size gets a fresh symbol (ONNX infers it at run time).
  if (typeof size !== 'number') return freshDim('hw');
  const span = dilation * (kernel - 1) + 1;
  const n = (size + 2 * pad - span) / stride;
  return (ceil ? Math.ceil(n) : Math.floor(n)) + 1;
}

export interface Conv2dOptions {
  stride?: number;
  pad?: number;
  dilation?: number;
}

/** 2-D convolution of x [N, C, H, W] with w [O, C, kh, kw] (+ bias [O]), square stride/pad/dilation. */
export function conv2d(x: Tensor, w: Tensor, bias?: Tensor, opts: Conv2dOptions = {}): Tensor {
  const { stride = 1, pad = 0, dilation = 1 } = opts;
  if (x.rank !== 4 || w.rank !== 4) shapeError('conv2d', 'input and weight need rank 4 (NCHW, OIHW)', x.shape, w.shape);
  if (dimsConflict(x.shape[1], w.shape[1])) shapeError('conv2d', `input has ${x.shape[1]} channels, weight expects ${w.shape[1]}`, x.shape, w.shape);
  if (bias && (bias.rank !== 1 || dimsConflict(bias.shape[0], w.shape[0]))) shapeError('conv2d', 'bias must be [out channels]', w.shape, bias.shape);
  const [kh, kw] = [w.shape[2], w.shape[3]];
  if (typeof kh !== 'number' || typeof kw !== 'number') shapeError('conv2d', 'kernel size must be static', w.shape);
  const oh = windowOut(x.shape[2], kh, stride, pad, dilation);
  const ow = windowOut(x.shape[3], kw, stride, pad, dilation);
  return x.graph.add('conv2d', bias ? [x, w, bias] : [x, w], { stride, pad, dilation, kernel: [kh, kw] }, [x.shape[0], w.shape[0], oh, ow], x.dtype);
}
OPS.conv2d = {
  emit: (ctx, t) => {
    const { stride, pad, dilation, kernel } = t.attrs as { stride: number; pad: number; dilation: number; kernel: number[] };
    return ctx.node('Conv', t.inputs.map((_, i) => ctx.input(t, i)), {
      kernel_shape: A.ints(kernel),
      strides: A.ints([stride, stride]),
      pads: A.ints([pad, pad, pad, pad]),
      dilations: A.ints([dilation, dilation]),
    });
  },
};

/** Max pooling over square windows of x [N, C, H, W]; `ceil` rounds the output size up as Caffe does. */
export function maxPool2d(x: Tensor, kernel: number, stride: number, pad = 0, ceil = false): Tensor {
  if (x.rank !== 4) shapeError('maxPool2d', 'input needs rank 4 (NCHW)', x.shape);
  const oh = windowOut(x.shape[2], kernel, stride, pad, 1, ceil);
  const ow = windowOut(x.shape[3], kernel, stride, pad, 1, ceil);
  return x.graph.add('maxPool2d', [x], { kernel, stride, pad, ceil }, [x.shape[0], x.shape[1], oh, ow], x.dtype);
}
OPS.maxPool2d = {
  emit: (ctx, t) => {
    const { kernel, stride, pad, ceil } = t.attrs as { kernel: number; stride: number; pad: number; ceil: boolean };
    return ctx.node('MaxPool', [ctx.input(t, 0)], {
      kernel_shape: A.ints([kernel, kernel]),
      strides: A.ints([stride, stride]),
      pads: A.ints([pad, pad, pad, pad]),
      ceil_mode: A.i(ceil ? 1 : 0),
    });
  },
};

/**
 * RoI max pooling (Fast R-CNN's RoIPool) of x [N, C, H, W] over rois [R, 5] = (batch index, x1,
 * y1, x2, y2) in input pixels: coordinates times `spatialScale` rounded half away from zero,
 * inclusive ends, float32 bin edges; an empty bin gives 0. Output [R, C, pooled, pooled].
 */
export function maxRoiPool(x: Tensor, rois: Tensor, pooled: number, spatialScale: number): Tensor {
  if (x.rank !== 4) shapeError('maxRoiPool', 'feature map needs rank 4 (NCHW)', x.shape);
  if (rois.rank !== 2 || dimsConflict(rois.shape[1], 5)) shapeError('maxRoiPool', 'rois must be [R, 5] (batch index, x1, y1, x2, y2)', rois.shape);
  return x.graph.add('maxRoiPool', [x, rois], { pooled, spatialScale }, [rois.shape[0], x.shape[1], pooled, pooled], x.dtype);
}
OPS.maxRoiPool = {
  emit: (ctx, t) => {
    const { pooled, spatialScale } = t.attrs as { pooled: number; spatialScale: number };
    return ctx.node('MaxRoiPool', [ctx.input(t, 0), ctx.input(t, 1)], { pooled_shape: A.ints([pooled, pooled]), spatial_scale: A.f(spatialScale) });
  },
};

/** Index of the largest value along `axis` (the first one on ties), as int64; the axis is removed. */
export function argMax(x: Tensor, axis: number): Tensor {
  const a = normAxis('argMax', axis, x.rank, x.shape);
  return x.graph.add('argMax', [x], { axis: a }, x.shape.filter((_, i) => i !== a), 'int64');
}
OPS.argMax = {
  emit: (ctx, t) => ctx.node('ArgMax', [ctx.input(t, 0)], { axis: A.i(t.attrs.axis as number), keepdims: A.i(0), select_last_index: A.i(0) }),
};

// ---------------------------------------------------------------------------------------------
// Quantized linear layers (inference only: int8 weights are constants baked into the graph at
// build time, so there is nothing to differentiate and no gradient rule)

/** ONNX element type of int8 (TensorProto.INT8). */
export const ONNX_INT8 = 3;

/**
 * A Linear weight quantized symmetrically per output channel: `data` is int8 [in, out] (the
 * [K, N] layout of MatMul's B, i.e. the PyTorch [out, in] weight transposed) and
 * w[o, i] ~= data[i, o] * scale[o]. Zero points are 0.
 */
export interface QuantizedWeight {
  /** Name the initializers take (`<name>.int8`, `<name>.scale`): the official weight name. */
  name: string;
  inFeatures: number;
  outFeatures: number;
  data: Int8Array;
  scale: Float32Array;
}

/**
 * Quantize a PyTorch-layout weight [out, in] per output channel, symmetric int8: scale =
 * max|w[o, :]| / qmax, q = round(w / scale) clamped to [-qmax, qmax]. qmax 127 uses the full
 * int8 range (what ONNX Runtime's VNNI / ARM dot-product kernels need no headroom for).
 */
export function quantizeWeightPerChannel(name: string, w: Float32Array, outFeatures: number, inFeatures: number, qmax = 127): QuantizedWeight {
  if (w.length !== outFeatures * inFeatures) throw new Error(`quantizeWeightPerChannel: '${name}' has ${w.length} values, [${outFeatures}, ${inFeatures}] needs ${outFeatures * inFeatures}`);
  const data = new Int8Array(inFeatures * outFeatures);
  const scale = new Float32Array(outFeatures);
  for (let o = 0; o < outFeatures; o++) {
    let m = 0;
    const row = o * inFeatures;
    for (let i = 0; i < inFeatures; i++) {
      const a = Math.abs(w[row + i]);
      if (a > m) m = a;
      else if (!(a <= m)) m = NaN; // NaN: reported below
      if (Number.isNaN(m)) break;
    }
    if (!Number.isFinite(m)) throw new Error(`quantizeWeightPerChannel: '${name}' row ${o} holds a non-finite value`);
    const s = m > 0 ? m / qmax : 1;
    scale[o] = s;
    const inv = 1 / s;
    for (let i = 0; i < inFeatures; i++) {
      const q = Math.round(w[row + i] * inv);
      data[i * outFeatures + o] = q > qmax ? qmax : q < -qmax ? -qmax : q;
    }
  }
  return { name, inFeatures, outFeatures, data, scale };
}

/** Several quantized weights side by side along the output axis (per-channel scales make this exact). */
export function concatQuantized(name: string, parts: readonly QuantizedWeight[]): QuantizedWeight {
  const K = parts[0].inFeatures;
  if (parts.some((p) => p.inFeatures !== K)) throw new Error(`concatQuantized: '${name}' parts differ in input features`);
  const N = parts.reduce((s, p) => s + p.outFeatures, 0);
  const data = new Int8Array(K * N);
  const scale = new Float32Array(N);
  let off = 0;
  for (const p of parts) {
    for (let i = 0; i < K; i++) data.set(p.data.subarray(i * p.outFeatures, (i + 1) * p.outFeatures), i * N + off);
    scale.set(p.scale, off);
    off += p.outFeatures;
  }
  return { name, inFeatures: K, outFeatures: N, data, scale };
}

/**
 * x [..., in] @ dequant(W)^T + b with the activations quantized at run time (uint8 asymmetric)
 * and int8 weights: ONNX Runtime's com.microsoft DynamicQuantizeMatMul, an integer GEMM (VNNI
 * where the CPU has it) whose int32 result is scaled back to float32. Inference only.
 *
 * DynamicQuantizeMatMul takes one activation scale for the whole tensor, so every row (token) of
 * a batch is quantized with the step of the batch's widest range. `perRow` divides each row by its
 * largest magnitude first and multiplies the product's row by it again (exact in real arithmetic):
 * every row is then quantized over its own range, at the cost of a few elementwise passes.
 */
export function quantizedLinear(x: Tensor, w: QuantizedWeight, bias?: Tensor, perRow = false): Tensor {
  if (x.dtype !== 'float32') shapeError('quantizedLinear', `needs a float32 input, got ${x.dtype}`, x.shape);
  if (dimsConflict(x.shape[x.rank - 1], w.inFeatures)) shapeError('quantizedLinear', `input features ${x.shape[x.rank - 1]} vs weight in-features ${w.inFeatures} ('${w.name}')`, x.shape, [w.outFeatures, w.inFeatures]);
  if (bias && (bias.rank !== 1 || dimsConflict(bias.shape[0], w.outFeatures) || bias.dtype !== 'float32')) shapeError('quantizedLinear', `bias must be float32 [${w.outFeatures}]`, bias.shape);
  return x.graph.add('quantizedLinear', bias ? [x, bias] : [x], { weight: w, perRow }, [...x.shape.slice(0, -1), w.outFeatures], 'float32');
}
OPS.quantizedLinear = {
  emit: (ctx, t) => {
    const w = t.attrs.weight as QuantizedWeight;
    const b = ctx.initializer(`${w.name}.int8`, ONNX_INT8, [w.inFeatures, w.outFeatures], new Uint8Array(w.data.buffer, w.data.byteOffset, w.data.byteLength));
    const s = ctx.initializer(`${w.name}.scale`, onnxType('float32'), [w.outFeatures], new Uint8Array(w.scale.buffer, w.scale.byteOffset, w.scale.byteLength));
    const bias = t.inputs.length > 1 ? ctx.input(t, 1) : null;
    let x = ctx.input(t, 0);
    if (!t.attrs.perRow) return ctx.node('DynamicQuantizeMatMul', bias ? [x, b, s, '', bias] : [x, b, s], {}, 'com.microsoft'); // no zero point (symmetric)
    // Row magnitude from two reductions (no |x| tensor written); floored so that a zero row stays zero.
    const axis = ctx.consti64([-1]);
    const hi = ctx.node('ReduceMax', [x, axis], { keepdims: A.i(1) });
    const lo = ctx.node('ReduceMin', [x, axis], { keepdims: A.i(1) });
    const r = ctx.node('Max', [hi, ctx.node('Neg', [lo]), ctx.scalar(1e-30, 'float32')]);
    x = ctx.node('Mul', [x, ctx.node('Reciprocal', [r])]); // a multiply per element is cheaper than a divide
    const y = ctx.node('Mul', [ctx.node('DynamicQuantizeMatMul', [x, b, s], {}, 'com.microsoft'), r]);
    return bias ? ctx.node('Add', [y, bias]) : y;
  },
};

// ---------------------------------------------------------------------------------------------
// Fused attention (inference only: ONNX Runtime's contrib kernel has no gradient here)

/**
 * softmax(q k^T / sqrt(dh) + (1 - keyMask) * -10000) v per head, for q, k, v [B, T, heads * dh]
 * (already projected) and keyMask [B, T] (1 = attend, 0 = padding; any integer or bool type):
 * com.microsoft MultiHeadAttention, one kernel instead of the head split / transposes, the two
 * batched products, the mask addition and the softmax. Output [B, T, heads * dh]. `bias`
 * [3 * heads * dh] (the Q, K and V projections' biases, in that order) is added to q, k and v
 * inside the kernel when the projections were computed without it.
 */
export function fusedAttention(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor, heads: number, bias?: Tensor): Tensor {
  for (const [n, t] of [['k', k], ['v', v]] as const) {
    if (t.rank !== 3 || q.rank !== 3 || t.shape.some((d, i) => dimsConflict(d, q.shape[i]))) shapeError('fusedAttention', `${n} must be shaped like q [B, T, hidden]`, q.shape, t.shape);
  }
  const hidden = q.shape[2];
  if (typeof hidden === 'number' && hidden % heads !== 0) shapeError('fusedAttention', `hidden ${hidden} is not a multiple of ${heads} heads`, q.shape);
  if (keyMask.rank !== 2 || dimsConflict(keyMask.shape[0], q.shape[0]) || dimsConflict(keyMask.shape[1], q.shape[1])) shapeError('fusedAttention', 'key mask must be [B, T]', q.shape, keyMask.shape);
  if (bias && (bias.rank !== 1 || (typeof hidden === 'number' && dimsConflict(bias.shape[0], 3 * hidden)))) shapeError('fusedAttention', 'bias must be [3 * hidden] (Q, K, V)', q.shape, bias.shape);
  return q.graph.add('fusedAttention', bias ? [q, k, v, keyMask, bias] : [q, k, v, keyMask], { heads }, q.shape, q.dtype);
}
OPS.fusedAttention = {
  emit: (ctx, t) => {
    const mask = ctx.node('Cast', [ctx.input(t, 3)], { to: A.i(onnxType('int32')) });
    const bias = t.inputs.length > 4 ? ctx.input(t, 4) : '';
    return ctx.node('MultiHeadAttention', [ctx.input(t, 0), ctx.input(t, 1), ctx.input(t, 2), bias, mask], { num_heads: A.i(t.attrs.heads as number), mask_filter_value: A.f(-10000) }, 'com.microsoft');
  },
};

/**
 * LayerNorm(x + skip [+ bias]) over the last axis (rank 3 inputs of one shape): com.microsoft
 * SkipLayerNormalization, the residual addition (and a preceding Linear's bias) and the
 * normalisation in one pass. Inference only.
 */
export function skipLayerNorm(x: Tensor, skip: Tensor, w: Tensor, b: Tensor, eps = 1e-12, bias?: Tensor): Tensor {
  if (x.rank !== 3 || skip.rank !== 3 || x.shape.some((d, i) => dimsConflict(d, skip.shape[i]))) shapeError('skipLayerNorm', 'input and skip must both be [B, T, hidden]', x.shape, skip.shape);
  const h = x.shape[2];
  for (const t of bias ? [w, b, bias] : [w, b]) if (t.rank !== 1 || dimsConflict(t.shape[0], h)) shapeError('skipLayerNorm', 'weight, bias and the added bias must be [hidden] matching the last axis', x.shape, t.shape);
  return x.graph.add('skipLayerNorm', bias ? [x, skip, w, b, bias] : [x, skip, w, b], { eps }, x.shape, x.dtype);
}
OPS.skipLayerNorm = {
  emit: (ctx, t) => ctx.node('SkipLayerNormalization', t.inputs.map((_, i) => ctx.input(t, i)), { epsilon: A.f(t.attrs.eps as number) }, 'com.microsoft'),
};

export function describe(t: Tensor): string {
  return `${t.op}${fmtShape(t.shape)}`;
}

export { dimEq };
