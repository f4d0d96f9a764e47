/**
 * Reverse-mode automatic differentiation over the traced graph. Gradients are built as more
 * graph nodes (so the backward pass runs in the same ONNX session as the forward pass), only
 * for nodes that lie on a path from a requested input to the loss, and summed where a value is
 * used more than once (tied weights, residual connections). Segments of the trace (encoder
 * layers) order the backward pass so that ONNX Runtime frees each layer's activations as it
 * goes, and may be recomputed instead of kept (activation checkpointing); see `segment`.
 */
import { dimEq } from './dims.js';
import type { Graph, Segment, Tensor } from './graph.js';
import { OPS, add, after, concat, isFloat } from './ops.js';

/** Gradients of the scalar `loss` w.r.t. each of `wrt` (null where the loss does not depend on it). */
export function grad(loss: Tensor, wrt: readonly Tensor[]): Array<Tensor | null> {
  const graph = loss.graph;
  if (loss.rank !== 0) throw new Error(`grad: loss must be a scalar, got shape [${loss.shape}]`);
  // Nodes that depend on any requested input.
  const fromWrt = new Set<number>(wrt.map((t) => t.id));
  for (const n of graph.nodes) {
    if (n.id > loss.id) break;
    if (n.op !== 'stopGradient' && n.inputs.some((i) => fromWrt.has(i.id))) fromWrt.add(n.id);
  }
  // Nodes on the way to the loss.
  const toLoss = new Set<number>([loss.id]);
  for (let i = loss.id; i >= 0; i--) {
    const n = graph.nodes[i];
    if (!toLoss.has(n.id)) continue;
    for (const inp of n.inputs) toLoss.add(inp.id);
  }
  const relevant = (t: Tensor) => fromWrt.has(t.id) && toLoss.has(t.id) && isFloat(t.dtype);

  // Contributions are collected per value and combined when the value's own rule runs (all its
  // consumers come later in the trace, so all are known by then).
  const parts = new Map<number, Tensor[]>();
  const total = (id: number): Tensor | undefined => {
    const ps = parts.get(id);
    if (!ps) return undefined;
    const g = ps.length === 1 ? ps[0] : (tiledSlices(ps) ?? ps.reduce((a, b) => add(a, b)));
    parts.set(id, [g]);
    return g;
  };
  const backward = (node: Tensor) => {
    const g = total(node.id);
    if (!g || node.op === 'input' || node.op === 'const') return;
    if (!node.inputs.some(relevant)) return;
    const rule = OPS[node.op]?.grad;
    if (!rule) throw new Error(`grad: op '${node.op}' has no gradient rule (needed for ${node})`);
    const gs = rule(node, g);
    node.inputs.forEach((inp, k) => {
      const gi = gs[k];
      if (!gi || !relevant(inp)) return;
      const prev = parts.get(inp.id);
      if (prev) prev.push(gi);
      else parts.set(inp.id, [gi]);
    });
  };

  /**
   * The backward pass of a segment. With `recompute`: its forward nodes again, from a copy of its
   * input that exists only once the segment's output gradient does, then their rules on the
   * copies (the forward's own intermediates are then used by nothing after the segment). Then the
   * gradient leaves for the input only after every contribution the segment made to earlier
   * values (its parameters' gradients): ONNX Runtime would otherwise run those side branches at
   * the end of the step and keep their inputs, each layer's activations and output gradients,
   * alive until then.
   */
  const backwardSegment = (seg: Segment) => {
    const { input, start, output } = seg;
    for (let id = start; id < output.id; id++) {
      if (parts.has(id)) throw new Error(`grad: segment ${start}..${output.id} has a value used outside it (${graph.nodes[id]}); only its output may be`);
    }
    const before = new Map([...parts].map(([id, ps]) => [id, ps.length]));
    if (seg.recompute) {
      const gate = after(input, [total(output.id)!]);
      const copies = new Map<number, Tensor>([[input.id, gate]]);
      const order: Tensor[] = [gate];
      const like = (copy: Tensor, of: Tensor) => {
        if (fromWrt.has(of.id)) fromWrt.add(copy.id);
        if (toLoss.has(of.id)) toLoss.add(copy.id);
      };
      like(gate, input);
      for (let id = start; id <= output.id; id++) {
        const n = graph.nodes[id];
        if (n.op === 'input' || n.op === 'const') continue; // dropout masks and constants are shared, not recomputed
        const copy = graph.add(n.op, n.inputs.map((x) => copies.get(x.id) ?? x), n.attrs, n.shape, n.dtype);
        copies.set(id, copy);
        like(copy, n);
        order.push(copy);
      }
      parts.set(copies.get(output.id)!.id, parts.get(output.id)!);
      parts.delete(output.id);
      for (let k = order.length - 1; k >= 0; k--) backward(order[k]);
    } else {
      for (let id = output.id; id >= start; id--) backward(graph.nodes[id]);
    }
    const made: Tensor[] = [];
    // Earlier values, and the parameters first used inside the segment (graph inputs declared there).
    const outside = (id: number) => id !== input.id && (id < start || (id <= output.id && graph.nodes[id].op === 'input'));
    for (const [id, ps] of parts) if (outside(id)) made.push(...ps.slice(before.get(id) ?? 0));
    const g = total(input.id);
    if (g && made.length) parts.set(input.id, [after(g, made)]);
  };

  const segments = new Map(graph.segments.filter((r) => r.output.id <= loss.id).map((r) => [r.output.id, r]));
  parts.set(loss.id, [onesScalar(loss)]);
  for (let i = loss.id; i >= 0; i--) {
    const seg = segments.get(i);
    if (seg && parts.has(i)) {
      backwardSegment(seg);
      i = seg.start; // the segment's own nodes are done
    } else backward(graph.nodes[i]);
  }
  return wrt.map((t) => total(t.id) ?? null);
}

/**
 * `body(x)` as a segment of the trace (see Segment): in the backward pass, its parameters'
 * gradients are complete before the gradient moves on to x. With `recompute` (activation
 * checkpointing) its intermediates are recomputed from x in the backward pass instead of kept
 * from the forward: one segment's activations alive at a time instead of all of them, for one
 * more forward of the segment. Only the result may be used outside the body; segments do not nest.
 */
export function segment(x: Tensor, body: (x: Tensor) => Tensor, opts: { recompute: boolean }): Tensor {
  const graph = x.graph;
  if (openSegments.has(graph)) throw new Error('segment: segments do not nest');
  const start = graph.nodes.length;
  openSegments.add(graph);
  let output: Tensor;
  try {
    output = body(x);
  } finally {
    openSegments.delete(graph);
  }
  if (output.id >= start) graph.segments.push({ input: x, start, output, recompute: opts.recompute });
  return output;
}

/** Activation checkpointing: a segment recomputed in the backward pass. */
export function checkpoint(x: Tensor, body: (x: Tensor) => Tensor): Tensor {
  return segment(x, body, { recompute: true });
}

/** Graphs whose trace is inside a segment's body now. */
const openSegments = new WeakSet<Graph>();

/**
 * Gradients of slices that tile their input along one axis (e.g. Q, K and V cut from one fused
 * projection) sum to the concatenation of the slices' gradients: one copy instead of a
 * zero-padded tensor per slice and the additions between them. Null when `ps` is not that.
 */
function tiledSlices(ps: Tensor[]): Tensor | null {
  if (!ps.every((p) => p.op === 'sliceGrad' && p.inputs[1] === ps[0].inputs[1] && p.attrs.axis === ps[0].attrs.axis)) return null;
  const axis = ps[0].attrs.axis as number;
  const like = ps[0].inputs[1];
  const byStart = [...ps].sort((a, b) => startOf(a) - startOf(b));
  if (byStart.some((p) => typeof p.attrs.start !== 'number' || typeof p.attrs.end !== 'number')) return null;
  let at = 0;
  for (const p of byStart) {
    if (p.attrs.start !== at) return null;
    at = p.attrs.end as number;
  }
  if (!dimEq(at, like.shape[axis])) return null;
  return concat(byStart.map((p) => p.inputs[0]), axis);
}

const startOf = (p: Tensor): number => (typeof p.attrs.start === 'number' ? p.attrs.start : Number.NaN);

function onesScalar(like: Tensor): Tensor {
  return like.graph.add('const', [], { values: [1], dims: [] }, [], like.dtype);
}
