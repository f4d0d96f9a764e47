/**
 * Emission of a traced graph as an ONNX model (opset 18). Graph inputs keep their names
 * (parameters use the official state_dict names), symbolic dims become ONNX dim_params, and
 * dims needed as values (reshape targets, slice bounds) are computed from `Shape` ops on the
 * inputs they are bound to, so one model serves every batch and sequence size.
 */
import { Dim, dimTerms } from './dims.js';
import type { Graph, Tensor } from './graph.js';
import { DType, HostTensor } from './host.js';
import { EmitCtx, OPS, OnnxAttr, onnxType } from './ops.js';
import { PbWriter } from './protobuf.js';

export const OPSET = 18;

/** Versions of the non-default operator domains the emitter may use. */
export const CONTRIB_OPSET: Readonly<Record<string, number>> = { 'com.microsoft': 1 };

interface NodeRec {
  op: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, OnnxAttr>;
  domain?: string;
}

function tensorProto(name: string, dtype: DType, dims: readonly number[], data: ArrayLike<number> | HostTensor['data']): PbWriter {
  const w = new PbWriter();
  for (const d of dims) w.int(1, d);
  w.int(2, onnxType(dtype));
  w.string(8, name);
  let raw: Uint8Array;
  if (ArrayBuffer.isView(data)) {
    raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  } else {
    const vals = Array.from(data as ArrayLike<number>);
    switch (dtype) {
      case 'float32':
        raw = new Uint8Array(Float32Array.from(vals).buffer);
        break;
      case 'float64':
        raw = new Uint8Array(Float64Array.from(vals).buffer);
        break;
      case 'int32':
        raw = new Uint8Array(Int32Array.from(vals).buffer);
        break;
      case 'int64':
        raw = new Uint8Array(BigInt64Array.from(vals.map((v) => BigInt(v))).buffer);
        break;
      case 'bool':
        raw = Uint8Array.from(vals.map((v) => (v ? 1 : 0)));
        break;
    }
  }
  w.bytes(9, raw);
  return w;
}

function attrProto(name: string, a: OnnxAttr): PbWriter {
  const w = new PbWriter().string(1, name);
  switch (a.kind) {
    case 'f':
      return w.float(2, a.value).int(20, 1);
    case 'i':
      return w.int(3, a.value).int(20, 2);
    case 's':
      return w.bytes(4, new TextEncoder().encode(a.value)).int(20, 3);
    case 't':
      return w.message(5, tensorProto('', a.dtype, a.dims, a.value)).int(20, 4);
    case 'floats':
      for (const v of a.value) w.float(7, v);
      return w.int(20, 6);
    case 'ints':
      for (const v of a.value) w.int(8, v);
      return w.int(20, 7);
  }
}

function valueInfo(name: string, dtype: DType, shape: readonly Dim[]): PbWriter {
  const shp = new PbWriter();
  for (const d of shape) {
    const dim = new PbWriter();
    if (typeof d === 'number') dim.int(1, d);
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(d)) dim.string(2, d);
    shp.message(1, dim);
  }
  const tt = new PbWriter().int(1, onnxType(dtype)).message(2, shp);
  const tp = new PbWriter().message(1, tt);
  return new PbWriter().string(1, name).message(2, tp);
}

export interface EmitOptions {
  /** Inputs to bake in as initializers (ONNX export with weights inside). */
  initializers?: Map<string, HostTensor>;
  name?: string;
}

export interface EmittedModel {
  bytes: Uint8Array;
  /** Graph inputs the model expects at run time, in order. */
  inputs: Array<{ name: string; dtype: DType; shape: readonly Dim[]; role: string }>;
  outputs: string[];
}

/** Emit the part of `graph` needed to compute `outputs` (name -> tensor). */
export function emitOnnx(graph: Graph, outputs: Record<string, Tensor>, opts: EmitOptions = {}): EmittedModel {
  const needed = new Set<number>();
  const stack = Object.values(outputs).map((t) => t.id);
  while (stack.length) {
    const id = stack.pop()!;
    if (needed.has(id)) continue;
    needed.add(id);
    for (const inp of graph.nodes[id].inputs) stack.push(inp.id);
  }
  // Inputs that dims are read from must be present too.
  const nodes: NodeRec[] = [];
  const initializers: PbWriter[] = [];
  const names = new Map<number, string>();
  const constCache = new Map<string, string>();
  const dimCache = new Map<string, string>();
  let counter = 0;
  const usedInputs = new Set<string>();
  const initNames = new Set<string>();

  const fresh = (hint: string) => `${hint}_${counter++}`;
  const emitNode = (op: string, inputs: string[], attrs: Record<string, OnnxAttr> = {}, domain?: string): string => {
    const out = fresh(op);
    nodes.push({ op, inputs, outputs: [out], attrs, domain });
    return out;
  };
  const constTensor = (dtype: DType, dims: number[], values: ArrayLike<number>): string => {
    const key = `${dtype}|${dims}|${Array.from(values).join(',')}`;
    const hit = constCache.get(key);
    if (hit) return hit;
    const name = fresh('const');
    initializers.push(tensorProto(name, dtype, dims, values));
    constCache.set(key, name);
    return name;
  };
  const symbolValue = (sym: string): string => {
    const hit = dimCache.get(sym);
    if (hit) return hit;
    const derived = graph.derivedDims.get(sym);
    if (derived) {
      const v = emitNode('Div', [ctx.dim(derived.num), ctx.dim(derived.den)]);
      dimCache.set(sym, v);
      return v;
    }
    const src = graph.dimSources.get(sym);
    if (!src) throw new Error(`emitOnnx: dimension symbol '${sym}' is not bound to any graph input`);
    usedInputs.add(src.input);
    const v = emitNode('Shape', [src.input], { start: { kind: 'i', value: src.axis }, end: { kind: 'i', value: src.axis + 1 } });
    dimCache.set(sym, v);
    return v;
  };
  const ctx: EmitCtx = {
    input: (t, i) => names.get(t.inputs[i].id)!,
    node: emitNode,
    scalar: (value, dtype) => constTensor(dtype, [], [value]),
    constTensor,
    consti64: (values) => constTensor('int64', [values.length], values),
    dim: (d: Dim) => {
      if (typeof d === 'number') return constTensor('int64', [1], [d]);
      const key = `dim:${d}`;
      const hit = dimCache.get(key);
      if (hit) return hit;
      let acc: string | null = null;
      for (const term of dimTerms(d)) {
        let v: string | null = term.c === 1 && term.syms.length ? null : constTensor('int64', [1], [term.c]);
        for (const s of term.syms) v = v ? emitNode('Mul', [v, symbolValue(s)]) : symbolValue(s);
        acc = acc ? emitNode('Add', [acc, v!]) : v;
      }
      const out = acc ?? constTensor('int64', [1], [0]);
      dimCache.set(key, out);
      return out;
    },
    shapeOf: (dims) => {
      if (dims.every((d) => typeof d === 'number')) return constTensor('int64', [dims.length], dims as number[]);
      return emitNode('Concat', dims.map((d) => ctx.dim(d)), { axis: { kind: 'i', value: 0 } });
    },
    dimOfValue: (value, axis) =>
      emitNode('Shape', [value], { start: { kind: 'i', value: axis }, end: { kind: 'i', value: axis + 1 } }),
    initializer: (name, elemType, dims, raw) => {
      let unique = name;
      while (initNames.has(unique) || graph.inputs.has(unique)) unique = fresh(name);
      initNames.add(unique);
      const w = new PbWriter();
      for (const d of dims) w.int(1, d);
      w.int(2, elemType).string(8, unique).bytes(9, raw);
      initializers.push(w);
      return unique;
    },
  };

  for (const t of graph.nodes) {
    if (!needed.has(t.id)) continue;
    if (t.op === 'input') {
      const name = t.attrs.name as string;
      names.set(t.id, name);
      usedInputs.add(name);
      continue;
    }
    const def = OPS[t.op];
    if (!def) throw new Error(`emitOnnx: unknown op '${t.op}'`);
    names.set(t.id, def.emit(ctx, t));
  }

  const outNames: string[] = [];
  for (const [name, t] of Object.entries(outputs)) {
    nodes.push({ op: 'Identity', inputs: [names.get(t.id)!], outputs: [name], attrs: {} });
    outNames.push(name);
  }

  const g = new PbWriter();
  for (const n of nodes) {
    const nw = new PbWriter();
    for (const i of n.inputs) nw.string(1, i);
    for (const o of n.outputs) nw.string(2, o);
    nw.string(4, n.op);
    for (const [k, a] of Object.entries(n.attrs)) nw.message(5, attrProto(k, a));
    if (n.domain) nw.string(7, n.domain);
    g.message(1, nw);
  }
  g.string(2, opts.name ?? graph.name);
  const inputs: EmittedModel['inputs'] = [];
  for (const [name, t] of graph.inputs) {
    if (!usedInputs.has(name)) continue;
    const init = opts.initializers?.get(name);
    if (init) {
      initializers.push(tensorProto(name, init.dtype, init.shape, init.data));
      continue;
    }
    inputs.push({ name, dtype: t.dtype, shape: t.shape, role: t.attrs.role as string });
  }
  for (const init of initializers) g.message(5, init);
  for (const i of inputs) g.message(11, valueInfo(i.name, i.dtype, i.shape));
  for (const [name, t] of Object.entries(outputs)) g.message(12, valueInfo(name, t.dtype, t.shape));

  const model = new PbWriter().int(1, 8).string(2, 'uniter-ts').message(7, g);
  model.message(8, new PbWriter().string(1, '').int(2, OPSET));
  // Contrib ops (com.microsoft: the quantized linear layers) need their domain imported.
  const domains = new Set(nodes.map((n) => n.domain).filter((d): d is string => !!d));
  for (const d of domains) model.message(8, new PbWriter().string(1, d).int(2, CONTRIB_OPSET[d] ?? 1));
  return { bytes: model.finish(), inputs, outputs: outNames };
}
