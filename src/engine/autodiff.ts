/**
 * Reverse-mode automatic differentiation over the traced graph. Gradients are built as more
 * graph nodes (so the backward pass runs in the same ONNX session as the forward pass), only
 * for nodes that lie on a path from a requested input to the loss, and summed where a value is
 * used more than once (tied weights, residual connections).
 */
import type { Tensor } from './graph.js';
import { OPS, add, isFloat } from './ops.js';

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

  const grads = new Map<number, Tensor>();
  grads.set(loss.id, onesScalar(loss));
  const lastNode = loss.id;
  for (let i = lastNode; i >= 0; i--) {
    const node = graph.nodes[i];
    const g = grads.get(node.id);
    if (!g || node.op === 'input' || node.op === 'const') continue;
    if (!node.inputs.some(relevant)) continue;
    const rule = OPS[node.op]?.grad;
    if (!rule) throw new Error(`grad: op '${node.op}' has no gradient rule (needed for ${node})`);
    const gs = rule(node, g);
    node.inputs.forEach((inp, k) => {
      const gi = gs[k];
      if (!gi || !relevant(inp)) return;
      const prev = grads.get(inp.id);
      grads.set(inp.id, prev ? add(prev, gi) : gi);
    });
  }
  return wrt.map((t) => grads.get(t.id) ?? null);
}

function onesScalar(like: Tensor): Tensor {
  return like.graph.add('const', [], { values: [1], dims: [] }, [], like.dtype);
}
