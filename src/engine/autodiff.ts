/**
 * Reverse-mode automatic differentiation over the traced graph. Gradients are built as more
 * graph nodes (so the backward pass runs in the same ONNX session as the forward pass), only
 * for nodes that lie on a path from a requested input to the loss, and summed where a value is
 * used more than once (tied weights, residual connections).
 */
import { dimEq } from './dims.js';
import type { Tensor } from './graph.js';
import { OPS, add, concat, isFloat } from './ops.js';

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
  parts.set(loss.id, [onesScalar(loss)]);
  const lastNode = loss.id;
  for (let i = lastNode; i >= 0; i--) {
    const node = graph.nodes[i];
    const g = total(node.id);
    if (!g || node.op === 'input' || node.op === 'const') continue;
    if (!node.inputs.some(relevant)) continue;
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
  }
  return wrt.map((t) => total(t.id) ?? null);
}

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
