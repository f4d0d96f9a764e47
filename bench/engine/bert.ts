/**
 * A BERT encoder stack written with the engine, as the benchmark's workload: post-LN layers
 * with exact (erf) GELU, LayerNorm eps 1e-12 and an additive key mask (1 - mask) * -10000,
 * parameters named as in Hugging Face BERT (`encoder.layer.0.attention.self.query.weight`).
 * `torch_baseline.py` computes the same thing in PyTorch.
 */
import {
  Graph,
  HostTensor,
  Tensor,
  add,
  f32,
  gelu,
  grad,
  layerNorm,
  linear,
  matmul,
  mul,
  reshape,
  softmax,
  sub,
  sumAll,
  transpose,
  unsqueeze,
} from '../../src/engine/index.js';
import { Rng } from '../../src/util/rng.js';

export interface BertConfig {
  layers: number;
  hidden: number;
  heads: number;
  intermediate: number;
  eps: number;
}

export const BERT_BASE: BertConfig = { layers: 12, hidden: 768, heads: 12, intermediate: 3072, eps: 1e-12 };

/** Parameter names and shapes, in a fixed order. */
export function bertParamShapes(cfg: BertConfig): Array<[string, number[]]> {
  const H = cfg.hidden;
  const I = cfg.intermediate;
  const out: Array<[string, number[]]> = [];
  for (let l = 0; l < cfg.layers; l++) {
    const p = `encoder.layer.${l}`;
    for (const proj of ['query', 'key', 'value']) {
      out.push([`${p}.attention.self.${proj}.weight`, [H, H]], [`${p}.attention.self.${proj}.bias`, [H]]);
    }
    out.push(
      [`${p}.attention.output.dense.weight`, [H, H]],
      [`${p}.attention.output.dense.bias`, [H]],
      [`${p}.attention.output.LayerNorm.weight`, [H]],
      [`${p}.attention.output.LayerNorm.bias`, [H]],
      [`${p}.intermediate.dense.weight`, [I, H]],
      [`${p}.intermediate.dense.bias`, [I]],
      [`${p}.output.dense.weight`, [H, I]],
      [`${p}.output.dense.bias`, [H]],
      [`${p}.output.LayerNorm.weight`, [H]],
      [`${p}.output.LayerNorm.bias`, [H]],
    );
  }
  return out;
}

export interface BertGraph {
  graph: Graph;
  params: Map<string, Tensor>;
  /** Final hidden states [B, T, hidden]. */
  output: Tensor;
  /** sum(output * projection): a scalar whose gradient reaches every weight. */
  loss: Tensor;
}

/**
 * Inputs: `hidden_states` [B, T, H] (the embedding output), `attention_mask` [B, T] (1 = token,
 * 0 = padding) and `projection` [B, T, H] for the loss.
 */
export function buildBert(cfg: BertConfig): BertGraph {
  const g = new Graph('bert_encoder');
  const H = cfg.hidden;
  const nh = cfg.heads;
  const dh = H / nh;
  if (!Number.isInteger(dh)) throw new Error(`hidden ${H} is not divisible by ${nh} heads`);
  const params = new Map<string, Tensor>();
  for (const [name, shape] of bertParamShapes(cfg)) params.set(name, g.param(name, shape));
  const P = (name: string) => params.get(name)!;

  let x = g.input('hidden_states', 'float32', ['B', 'T', H]);
  const mask = g.input('attention_mask', 'float32', ['B', 'T']);
  // [B, 1, 1, T]: added to every query row of every head.
  const keyBias = unsqueeze(mul(sub(1, mask), -10000), [1, 2]);
  const heads = (t: Tensor) => transpose(reshape(t, ['B', 'T', nh, dh]), [0, 2, 1, 3]);

  for (let l = 0; l < cfg.layers; l++) {
    const p = `encoder.layer.${l}`;
    const q = heads(linear(x, P(`${p}.attention.self.query.weight`), P(`${p}.attention.self.query.bias`)));
    const k = heads(linear(x, P(`${p}.attention.self.key.weight`), P(`${p}.attention.self.key.bias`)));
    const v = heads(linear(x, P(`${p}.attention.self.value.weight`), P(`${p}.attention.self.value.bias`)));
    const scores = add(mul(matmul(q, transpose(k, [0, 1, 3, 2])), 1 / Math.sqrt(dh)), keyBias);
    const context = reshape(transpose(matmul(softmax(scores, -1), v), [0, 2, 1, 3]), ['B', 'T', H]);
    const attended = layerNorm(
      add(linear(context, P(`${p}.attention.output.dense.weight`), P(`${p}.attention.output.dense.bias`)), x),
      P(`${p}.attention.output.LayerNorm.weight`),
      P(`${p}.attention.output.LayerNorm.bias`),
      cfg.eps,
    );
    const inter = gelu(linear(attended, P(`${p}.intermediate.dense.weight`), P(`${p}.intermediate.dense.bias`)));
    x = layerNorm(
      add(linear(inter, P(`${p}.output.dense.weight`), P(`${p}.output.dense.bias`)), attended),
      P(`${p}.output.LayerNorm.weight`),
      P(`${p}.output.LayerNorm.bias`),
      cfg.eps,
    );
  }
  const projection = g.input('projection', 'float32', ['B', 'T', H]);
  return { graph: g, params, output: x, loss: sumAll(mul(x, projection)) };
}

/** Gradient tensors of the loss w.r.t. every parameter, keyed `grad:<param name>`. */
export function bertGradOutputs(b: BertGraph): Record<string, Tensor> {
  const names = [...b.params.keys()];
  const grads = grad(
    b.loss,
    names.map((n) => b.params.get(n)!),
  );
  const out: Record<string, Tensor> = {};
  names.forEach((n, i) => {
    const gr = grads[i];
    if (!gr) throw new Error(`parameter ${n} gets no gradient`);
    out[`grad:${n}`] = gr;
  });
  return out;
}

/** BERT-style initial values: N(0, 0.02) weights, zero biases, LayerNorm (1, 0). */
export function initBertParams(cfg: BertConfig, seed: number): Map<string, HostTensor> {
  const rng = new Rng(seed, 'bert-params');
  const out = new Map<string, HostTensor>();
  for (const [name, shape] of bertParamShapes(cfg)) {
    const t = f32(shape);
    const data = t.data as Float32Array;
    if (name.endsWith('LayerNorm.weight')) data.fill(1);
    else if (name.endsWith('.weight')) rng.fillNormal(data, 0, 0.02);
    out.set(name, t);
  }
  return out;
}

/** Token lengths for the padded batch: a few full rows, the rest shorter (at least 1). */
export function sequenceLengths(batch: number, seq: number): number[] {
  const fractions = [1, 0.94, 0.78, 1, 0.5, 0.7, 1, 0.86];
  return Array.from({ length: batch }, (_, i) => Math.max(1, Math.round(seq * fractions[i % fractions.length])));
}

export function bertInputs(cfg: BertConfig, batch: number, seq: number, seed: number): Map<string, HostTensor> {
  const rng = new Rng(seed, 'bert-inputs');
  const hidden = f32([batch, seq, cfg.hidden]);
  rng.fillNormal(hidden.data as Float32Array);
  const projection = f32([batch, seq, cfg.hidden]);
  rng.fillNormal(projection.data as Float32Array, 0, 1 / Math.sqrt(cfg.hidden));
  const mask = f32([batch, seq]);
  sequenceLengths(batch, seq).forEach((len, b) => (mask.data as Float32Array).fill(1, b * seq, b * seq + len));
  return new Map([
    ['hidden_states', hidden],
    ['attention_mask', mask],
    ['projection', projection],
  ]);
}
