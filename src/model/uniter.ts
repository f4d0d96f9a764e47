/**
 * UNITER, top to bottom: text and image embeddings, the compact text-then-regions sequence
 * built with `gather_index`, the post-LN BERT encoder, the pooler, every pre-training head and
 * loss, the downstream heads, and word-region alignment by IPOT. Functions here build traced
 * graphs (see src/engine); `task-graphs.ts` compiles and runs them.
 */
import {
  Dim,
  Graph,
  Tensor,
  add,
  bceWithLogits,
  cast,
  concat,
  constant,
  crossEntropy,
  div,
  dropout,
  erf,
  exp,
  expand,
  gather,
  gatherElements,
  gelu,
  fusedAttention,
  skipLayerNorm,
  gemm,
  greater,
  layerNorm,
  linear,
  log,
  logSoftmax,
  matmul,
  maximum,
  mean,
  meanAll,
  mul,
  neg,
  not,
  or,
  relu,
  reshape,
  scalar,
  segment,
  scatterAdd,
  sigmoid,
  slice,
  softmax,
  sqrt,
  squeeze,
  stopGradient,
  sub,
  sum,
  sumAll,
  tanh,
  transpose,
  transposeLast2,
  unsqueeze,
  where,
} from '../engine/index.js';
import type { HostTensor } from '../engine/host.js';
import { QuantizedWeight, concatQuantized, quantizeWeightPerChannel, quantizedLinear } from '../engine/ops.js';
import type { UniterConfig } from './config.js';
import { ParamSpec, TIES } from './params.js';

/** Numeric precision of an inference graph's linear layers. */
export type Precision = 'float32' | 'int8';
export const PRECISIONS: readonly Precision[] = ['float32', 'int8'];

/**
 * Weights an int8 graph quantizes at build time (the int8 tensors become constants of the
 * graph), with a cache so that graphs built again from the same weights reuse them.
 */
export interface Int8Source {
  weights: ReadonlyMap<string, HostTensor>;
  cache?: Map<string, QuantizedWeight>;
}

/**
 * The Linear weights an int8 graph quantizes: the six of every encoder layer (Q, K, V, the
 * attention output, the FFN's two), which hold ~99% of an inference's multiply-adds at base size.
 * Embeddings (img_linear, pos_linear, the lookup tables), every LayerNorm, softmax, the pooler
 * and the task heads stay float32: they are cheap, and the heads' last layers decide the scores.
 */
export function int8Quantized(weightName: string): boolean {
  return /^uniter\.encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$/.test(weightName);
}

/**
 * Whether a quantized Linear scales its activations per row (token) instead of once per tensor:
 * all but the FFN's first (intermediate.dense). With one scale per batch the ITM probabilities of
 * held-out pairs moved up to 0.021 from float32 (mostly through the Q/K/V product, whose errors
 * the attention softmax amplifies); per row everywhere 0.007, per row but for intermediate.dense
 * 0.009, which saves about two thirds of the per-row passes' cost (issue 19, docs/benchmarks.md).
 */
export function int8PerRow(weightName: string): boolean {
  return int8Quantized(weightName) && !weightName.endsWith('.intermediate.dense.weight');
}

/** Parameter lookup by official name (tied aliases resolve to their primary tensor). */
export class Params {
  private readonly shapes = new Map<string, number[]>();
  readonly used = new Map<string, Tensor>();

  constructor(
    readonly graph: Graph,
    specs: ParamSpec[],
    /** Set for int8 graphs: where the weights to quantize come from. */
    readonly int8?: Int8Source,
  ) {
    for (const s of specs) this.shapes.set(s.name, s.shape);
  }

  /** The int8 form of a Linear weight when this graph quantizes it, else null. */
  quantized(weightName: string): QuantizedWeight | null {
    if (!this.int8 || !int8Quantized(weightName)) return null;
    const hit = this.int8.cache?.get(weightName);
    if (hit) return hit;
    const shape = this.shapes.get(weightName);
    const w = this.int8.weights.get(weightName);
    if (!shape || !w) throw new Error(`int8 graph: no weights for '${weightName}' to quantize`);
    if (w.dtype !== 'float32' || w.shape.join() !== shape.join()) throw new Error(`int8 graph: '${weightName}' is ${w.dtype} [${w.shape}], the model needs float32 [${shape}]`);
    const q = quantizeWeightPerChannel(weightName, w.data as Float32Array, shape[0], shape[1]);
    this.int8.cache?.set(weightName, q);
    return q;
  }

  get(name: string): Tensor {
    const primary = TIES[name] ?? name;
    const hit = this.used.get(primary);
    if (hit) return hit;
    const shape = this.shapes.get(primary);
    if (!shape) throw new Error(`model: no parameter named '${primary}' in this configuration`);
    const t = this.graph.param(primary, shape);
    this.used.set(primary, t);
    return t;
  }

  has(name: string): boolean {
    return this.shapes.has(TIES[name] ?? name);
  }
}

export interface ForwardOptions {
  training: boolean;
  /** The graph will be differentiated: project Q, K and V with one fused GEMM (see fusedQkv). */
  gradients?: boolean;
  /** Capture intermediate tensors (embeddings, each layer) for parity checks. */
  capture?: Map<string, Tensor>;
  /**
   * Collects each layer's attention probabilities [B, heads, Lj, Lj] (before dropout), in layer
   * order: inference graphs that show what the model attended to ask for them; training graphs
   * leave this unset and are unchanged.
   */
  attentions?: Tensor[];
  /**
   * Inference graphs: ONNX Runtime's fused transformer kernels (com.microsoft): attention as one
   * MultiHeadAttention (not when collecting attentions) and residual + LayerNorm as one
   * SkipLayerNormalization. Ignored when training or differentiating.
   */
  fusedAttention?: boolean;
  /**
   * Activation checkpointing: each encoder layer's intermediates are recomputed in the backward
   * pass from the layer's input instead of kept from the forward (see `checkpoint` in the
   * engine). Only graphs that are differentiated are affected.
   */
  checkpointLayers?: boolean;
}

/** The key mask of a batch in both forms: additive [B, 1, 1, Lj] and attn_masks [B, Lj] itself. */
interface KeyMask {
  additive: Tensor;
  keys: Tensor;
}

/** Graph inputs of one UNITER forward pass (official batch names). */
export interface UniterInputs {
  input_ids: Tensor; // int64 [B, Lt]
  position_ids: Tensor; // int64 [1, Lt]
  img_feat: Tensor; // f32 [B, N, img_dim]
  img_pos_feat: Tensor; // f32 [B, N, 7]
  attn_masks: Tensor; // int64 [B, Lj]
  gather_index: Tensor; // int64 [B, Lj]
  img_masks?: Tensor; // bool [B, N]
  img_type_ids?: Tensor; // int64 [B, N]
  txt_type_ids?: Tensor; // int64 [B, Lt]
}

export function declareInputs(g: Graph, cfg: UniterConfig, opts: { imgMasks?: boolean; imgTypes?: boolean; txtTypes?: boolean } = {}): UniterInputs {
  const inp: UniterInputs = {
    input_ids: g.input('input_ids', 'int64', ['B', 'Lt']),
    position_ids: g.input('position_ids', 'int64', [1, 'Lt']),
    img_feat: g.input('img_feat', 'float32', ['B', 'N', cfg.img_dim]),
    img_pos_feat: g.input('img_pos_feat', 'float32', ['B', 'N', 7]),
    attn_masks: g.input('attn_masks', 'int64', ['B', 'Lj']),
    gather_index: g.input('gather_index', 'int64', ['B', 'Lj']),
  };
  if (opts.imgMasks) inp.img_masks = g.input('img_masks', 'bool', ['B', 'N']);
  if (opts.imgTypes) inp.img_type_ids = g.input('img_type_ids', 'int64', ['B', 'N']);
  if (opts.txtTypes) inp.txt_type_ids = g.input('txt_type_ids', 'int64', ['B', 'Lt']);
  return inp;
}

const LN_EPS = 1e-12;

function ln(P: Params, prefix: string, x: Tensor): Tensor {
  return layerNorm(x, P.get(`${prefix}.weight`), P.get(`${prefix}.bias`), LN_EPS);
}

/** LayerNorm(x + residual): one fused SkipLayerNormalization in fused inference graphs. */
function addLn(P: Params, prefix: string, x: Tensor, residual: Tensor, opts: ForwardOptions): Tensor {
  if (opts.fusedAttention && !opts.training && !opts.gradients) return skipLayerNorm(x, residual, P.get(`${prefix}.weight`), P.get(`${prefix}.bias`), LN_EPS);
  return ln(P, prefix, add(x, residual));
}

/**
 * LayerNorm(Linear(x) + residual). In fused int8 graphs the Linear's bias is added inside
 * SkipLayerNormalization instead of after the per-row rescaling (one pass less over the output).
 * Inference (no dropout) only.
 */
function denseAddLn(P: Params, densePrefix: string, lnPrefix: string, x: Tensor, residual: Tensor, opts: ForwardOptions): Tensor {
  const q = P.quantized(`${densePrefix}.weight`);
  if (q && opts.fusedAttention && !opts.training && !opts.gradients) {
    return skipLayerNorm(quantizedLinear(x, q, undefined, int8PerRow(`${densePrefix}.weight`)), residual, P.get(`${lnPrefix}.weight`), P.get(`${lnPrefix}.bias`), LN_EPS, P.get(`${densePrefix}.bias`));
  }
  return addLn(P, lnPrefix, dense(P, densePrefix, x), residual, opts);
}

function dense(P: Params, prefix: string, x: Tensor): Tensor {
  const bias = P.has(`${prefix}.bias`) ? P.get(`${prefix}.bias`) : undefined;
  const q = P.quantized(`${prefix}.weight`);
  if (q) return quantizedLinear(x, q, bias, int8PerRow(`${prefix}.weight`));
  return linear(x, P.get(`${prefix}.weight`), bias);
}

/** Embedding lookup whose padding row (id 0) gets no gradient from the lookup, as padding_idx=0. */
function lookupWithPadding(table: Tensor, ids: Tensor): Tensor {
  const rows = gather(table, ids);
  const isPad = unsqueeze(greater(scalar(ids.graph, 1, 'int64'), ids), [-1]);
  return where(isPad, stopGradient(rows), rows);
}

/** Row `row` of a [R, H] table as a [1, H] tensor (a default token type). */
function tableRow(table: Tensor, row: number): Tensor {
  return slice(table, 0, row, row + 1);
}

export function textEmbeddings(P: Params, cfg: UniterConfig, inp: UniterInputs, opts: ForwardOptions): Tensor {
  const words = lookupWithPadding(P.get('uniter.embeddings.word_embeddings.weight'), inp.input_ids);
  const pos = gather(P.get('uniter.embeddings.position_embeddings.weight'), inp.position_ids);
  const typeTable = P.get('uniter.embeddings.token_type_embeddings.weight');
  const types = inp.txt_type_ids ? gather(typeTable, inp.txt_type_ids) : tableRow(typeTable, 0);
  const e = ln(P, 'uniter.embeddings.LayerNorm', add(add(words, pos), types));
  return dropout(e, cfg.hidden_dropout_prob, opts.training);
}

export function imageEmbeddings(P: Params, cfg: UniterConfig, inp: UniterInputs, opts: ForwardOptions): Tensor {
  let feat = inp.img_feat;
  if (inp.img_masks) {
    // Masked regions arrive zeroed; they become the learned [MASK] feature (row 1). Row 0 counts as zero.
    const maskRow = tableRow(P.get('uniter.img_embeddings.mask_embedding.weight'), 1);
    feat = add(feat, mul(unsqueeze(cast(inp.img_masks, 'float32'), [-1]), maskRow));
  }
  const im = ln(P, 'uniter.img_embeddings.img_layer_norm', dense(P, 'uniter.img_embeddings.img_linear', feat));
  const pos = ln(P, 'uniter.img_embeddings.pos_layer_norm', dense(P, 'uniter.img_embeddings.pos_linear', inp.img_pos_feat));
  const typeTable = P.get('uniter.embeddings.token_type_embeddings.weight');
  const types = inp.img_type_ids ? gather(typeTable, inp.img_type_ids) : tableRow(typeTable, 1);
  const e = ln(P, 'uniter.img_embeddings.LayerNorm', add(add(im, pos), types));
  return dropout(e, cfg.hidden_dropout_prob, opts.training);
}

function selfAttention(P: Params, cfg: UniterConfig, prefix: string, x: Tensor, mask: KeyMask, opts: ForwardOptions): Tensor {
  const heads = cfg.num_attention_heads;
  const dh = cfg.hidden_size / heads;
  const [B, T] = x.shape;
  if (opts.fusedAttention && !opts.training && !opts.gradients && !opts.attentions) {
    // Projections as [B, T, H] (int8: one product, then three slices), the rest in one kernel.
    let q: Tensor, k: Tensor, v: Tensor;
    let bias: Tensor | undefined;
    if (P.int8) {
      // The biases are added inside the attention kernel rather than after the per-row rescaling.
      const H = cfg.hidden_size;
      const qkv = int8QkvProjection(P, prefix, x, false);
      [q, k, v] = [0, 1, 2].map((i) => slice(qkv, 2, i * H, (i + 1) * H));
      bias = qkvBias(P, prefix);
    } else [q, k, v] = ['query', 'key', 'value'].map((n) => dense(P, `${prefix}.self.${n}`, x));
    const ctx = fusedAttention(q, k, v, mask.keys, heads, bias);
    return denseAddLn(P, `${prefix}.output.dense`, `${prefix}.output.LayerNorm`, ctx, x, opts);
  }
  let q: Tensor, k: Tensor, v: Tensor;
  if (opts.gradients) {
    [q, k, v] = fusedQkv(P, prefix, x, heads, dh);
  } else if (P.int8) {
    [q, k, v] = int8Qkv(P, prefix, x, heads, dh);
  } else {
    const split = (t: Tensor) => transpose(reshape(t, [B, T, heads, dh]), [0, 2, 1, 3]);
    q = split(dense(P, `${prefix}.self.query`, x));
    k = split(dense(P, `${prefix}.self.key`, x));
    v = split(dense(P, `${prefix}.self.value`, x));
  }
  const scores = add(div(matmul(q, transposeLast2(k)), Math.sqrt(dh)), mask.additive);
  const attention = softmax(scores, -1);
  opts.attentions?.push(attention);
  const probs = dropout(attention, cfg.attention_probs_dropout_prob, opts.training);
  const ctx = reshape(transpose(matmul(probs, v), [0, 2, 1, 3]), [B, T, cfg.hidden_size]);
  const out = dropout(dense(P, `${prefix}.output.dense`, ctx), cfg.hidden_dropout_prob, opts.training);
  return ln(P, `${prefix}.output.LayerNorm`, add(out, x));
}

/**
 * Q, K and V [B, heads, T, dh] from one GEMM over the three official weights concatenated in the
 * graph (the parameters keep their names). For training graphs: the backward then runs one
 * input-gradient GEMM and one weight-gradient GEMM instead of three each plus two additions, and
 * the three head gradients are joined by one concat (see tiledSlices in autodiff). Inference
 * graphs keep three projections: there the per-run weight concat would cost more than it saves.
 */
function fusedQkv(P: Params, prefix: string, x: Tensor, heads: number, dh: number): [Tensor, Tensor, Tensor] {
  const names = ['query', 'key', 'value'].map((n) => `${prefix}.self.${n}`);
  const w = concat(names.map((n) => P.get(`${n}.weight`)), 0);
  const b = concat(names.map((n) => P.get(`${n}.bias`)), 0);
  const [B, T] = x.shape;
  // [B, T, 3H] -> [3, B, heads, T, dh]: one transpose for all three.
  const qkv = transpose(reshape(linear(x, w, b), [B, T, 3, heads, dh]), [2, 0, 3, 1, 4]);
  const part = (i: number) => squeeze(slice(qkv, 0, i, i + 1), [0]);
  return [part(0), part(1), part(2)];
}

/**
 * Int8 graphs: Q, K and V from one integer GEMM over the three quantized weights side by side
 * (joined at build time, so the activations are quantized once instead of three times).
 */
function int8Qkv(P: Params, prefix: string, x: Tensor, heads: number, dh: number): [Tensor, Tensor, Tensor] {
  const [B, T] = x.shape;
  const qkv = transpose(reshape(int8QkvProjection(P, prefix, x), [B, T, 3, heads, dh]), [2, 0, 3, 1, 4]);
  const part = (i: number) => squeeze(slice(qkv, 0, i, i + 1), [0]);
  return [part(0), part(1), part(2)];
}

/** [B, T, 3H]: x @ [Wq; Wk; Wv]^T (+ [bq; bk; bv] when `withBias`) as one int8 product. */
function int8QkvProjection(P: Params, prefix: string, x: Tensor, withBias = true): Tensor {
  const names = ['query', 'key', 'value'].map((n) => `${prefix}.self.${n}`);
  const parts = names.map((n) => P.quantized(`${n}.weight`));
  if (parts.some((p) => !p)) throw new Error(`int8 graph: ${prefix} Q/K/V weights are not all quantized`);
  const w = concatQuantized(`${prefix}.self.qkv.weight`, parts as QuantizedWeight[]);
  return quantizedLinear(x, w, withBias ? qkvBias(P, prefix) : undefined, int8PerRow(`${names[0]}.weight`));
}

/** [bq; bk; bv] of one attention layer. */
function qkvBias(P: Params, prefix: string): Tensor {
  return concat(['query', 'key', 'value'].map((n) => P.get(`${prefix}.self.${n}.bias`)), 0);
}

function encoderLayer(P: Params, cfg: UniterConfig, l: number, x: Tensor, mask: KeyMask, opts: ForwardOptions): Tensor {
  const p = `uniter.encoder.layer.${l}`;
  const a = selfAttention(P, cfg, `${p}.attention`, x, mask, opts);
  const inter = dense(P, `${p}.intermediate.dense`, a);
  const h = gelu(inter);
  if (!opts.training) return denseAddLn(P, `${p}.output.dense`, `${p}.output.LayerNorm`, h, a, opts);
  const o = dropout(dense(P, `${p}.output.dense`, h), cfg.hidden_dropout_prob, opts.training);
  return addLn(P, `${p}.output.LayerNorm`, o, a, opts);
}

/** The encoder input: [text, regions, padding] per row, gathered from cat(text, image) by gather_index. */
export function joinSequence(txt: Tensor, img: Tensor, gatherIndex: Tensor, hidden: number): Tensor {
  const both = concat([txt, img], 1);
  const idx = expand(unsqueeze(gatherIndex, [-1]), [gatherIndex.shape[0], gatherIndex.shape[1], hidden]);
  return gatherElements(both, idx, 1);
}

/** Additive key mask: (1 - attn_masks) * -10000, shaped [B, 1, 1, Lj]. */
export function extendedMask(attnMasks: Tensor): Tensor {
  const m = cast(attnMasks, 'float32');
  return unsqueeze(mul(sub(1, m), -10000), [1, 2]);
}

/** UniterModel.forward: the last layer's output [B, Lj, H]. */
export function uniterForward(P: Params, cfg: UniterConfig, inp: UniterInputs, opts: ForwardOptions): Tensor {
  const txt = textEmbeddings(P, cfg, inp, opts);
  const img = imageEmbeddings(P, cfg, inp, opts);
  let x = joinSequence(txt, img, inp.gather_index, cfg.hidden_size);
  opts.capture?.set('txt_emb', txt);
  opts.capture?.set('img_emb', img);
  opts.capture?.set('embedding_output', x);
  const mask: KeyMask = { additive: extendedMask(inp.attn_masks), keys: inp.attn_masks };
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    // In gradient graphs each layer is a segment: its backward finishes its weight gradients before moving on (and recomputes its forward when checkpointing).
    x = opts.gradients ? segment(x, (h) => encoderLayer(P, cfg, l, h, mask, opts), { recompute: !!opts.checkpointLayers }) : encoderLayer(P, cfg, l, x, mask, opts);
    opts.capture?.set(`encoder_layer_${l}`, x);
  }
  return x;
}

/** tanh(Linear(seq[:, 0])). */
export function pooler(P: Params, seq: Tensor): Tensor {
  const cls = squeeze(slice(seq, 1, 0, 1), [1]);
  return tanh(dense(P, 'uniter.pooler.dense', cls));
}

/** Rows of a [B, L, H] sequence at flat positions (row * L + col) -> [n, H]. */
export function selectPositions(seq: Tensor, flatPositions: Tensor): Tensor {
  const flat = reshape(seq, [-1, seq.shape[2]]);
  return gather(flat, flatPositions);
}

// ---------------------------------------------------------------------------------------------
// Pre-training heads

/** Linear -> GELU -> LayerNorm, the transform shared by the MLM, MRFR and MRC heads. */
function transformHead(P: Params, densePrefix: string, lnPrefix: string, x: Tensor): Tensor {
  return ln(P, lnPrefix, gelu(dense(P, densePrefix, x)));
}

/** MLM logits for the selected hidden states [n, H] -> [n, vocab] (decoder tied to word embeddings). */
export function mlmHead(P: Params, h: Tensor): Tensor {
  const t = transformHead(P, 'cls.predictions.transform.dense', 'cls.predictions.transform.LayerNorm', h);
  return gemm(t, P.get('cls.predictions.decoder.weight'), { transB: true }, P.get('cls.predictions.bias'));
}

/** MRFR prediction [n, img_dim]: output projection tied to img_linear.weight, used transposed. */
export function mrfrHead(P: Params, h: Tensor): Tensor {
  const t = transformHead(P, 'feat_regress.net.0', 'feat_regress.net.2', h);
  return add(matmul(t, P.get('feat_regress.weight')), P.get('feat_regress.bias'));
}

export function mrcHead(P: Params, h: Tensor): Tensor {
  const t = transformHead(P, 'region_classifier.net.0', 'region_classifier.net.2', h);
  return dense(P, 'region_classifier.net.3', t);
}

/** KL(target || softmax(logits)) elementwise, 0 where the target is 0 (F.kl_div reduction none). */
export function klDivElementwise(logProbs: Tensor, target: Tensor): Tensor {
  const positive = greater(target, 0);
  const safeT = where(positive, target, 1);
  return where(positive, mul(target, sub(log(safeT), logProbs)), 0);
}

// ---------------------------------------------------------------------------------------------
// Word-region alignment: cosine cost and IPOT (detached), as model/ot.py

export interface OtResult {
  txtEmb: Tensor;
  imgEmb: Tensor;
  cost: Tensor; // [B, M, N]
  plan: Tensor; // [B, N, M]
  distance: Tensor; // [B]
}

/** Cost 1 - cos with F.normalize(eps=1e-5), zero where either side is padding. */
export function cosineCost(txt: Tensor, img: Tensor, jointPad: Tensor): Tensor {
  const normed = (x: Tensor) => div(x, maximum(sqrt(sum(mul(x, x), [-1], true)), 1e-5));
  const cos = matmul(normed(txt), transposeLast2(normed(img)));
  return where(jointPad, 0, sub(1, cos));
}

/** The IPOT plan [B, N, M] for cost [B, M, N] (no gradient flows through it). */
export function ipot(cost: Tensor, txtPad: Tensor, imgPad: Tensor, beta: number, iterations: number): Tensor {
  const C = stopGradient(cost);
  const txtPadF = cast(txtPad, 'float32'); // [B, M]
  const imgPadF = cast(imgPad, 'float32'); // [B, N]
  const m = sub(sizeAlong(txtPadF), sum(txtPadF, [1])); // [B]
  const n = sub(sizeAlong(imgPadF), sum(imgPadF, [1]));
  const jointPadT = transpose(or(unsqueeze(txtPad, [-1]), unsqueeze(imgPad, [-2])), [0, 2, 1]); // [B, N, M]
  const keep = cast(not(jointPadT), 'float32');
  const A = mul(exp(div(transpose(C, [0, 2, 1]), -beta)), keep);
  let T = keep; // ones, zero at joint padding
  let sigma = mul(div(1, unsqueeze(m, [1])), sub(1, txtPadF)); // [B, M]
  sigma = unsqueeze(sigma, [-1]); // [B, M, 1]
  const mB = unsqueeze(m, [1, 2]);
  const nB = unsqueeze(n, [1, 2]);
  const xMask = unsqueeze(mul(txtPadF, 1e4), [1]); // [B, 1, M]
  const yMask = unsqueeze(mul(imgPadF, 1e4), [1]); // [B, 1, N]
  for (let it = 0; it < iterations; it++) {
    const Q = mul(A, T); // [B, N, M]
    const delta = div(1, add(mul(nB, transpose(matmul(Q, sigma), [0, 2, 1])), yMask)); // [B, 1, N]
    const sigmaRow = div(1, add(mul(mB, matmul(delta, Q)), xMask)); // [B, 1, M]
    T = mul(mul(transpose(delta, [0, 2, 1]), Q), sigmaRow);
    sigma = transpose(sigmaRow, [0, 2, 1]);
  }
  return stopGradient(mul(T, keep));
}

/** Size of axis 1 of a [B, K] tensor as a float scalar broadcastable against [B]. */
function sizeAlong(x: Tensor): Tensor {
  return sum(add(mul(x, 0), 1), [1]);
}

export function otDistance(txt: Tensor, img: Tensor, txtPad: Tensor, imgPad: Tensor, beta: number, iterations: number): Omit<OtResult, 'txtEmb' | 'imgEmb'> {
  const jointPad = or(unsqueeze(txtPad, [-1]), unsqueeze(imgPad, [-2]));
  const cost = cosineCost(txt, img, jointPad);
  const plan = ipot(cost, txtPad, imgPad, beta, iterations);
  // trace(C @ T) = sum_ij C[i, j] * T[j, i]
  const distance = sum(mul(cost, transpose(plan, [0, 2, 1])), [1, 2]);
  return { cost, plan, distance };
}

/** Text and image halves of the sequence for OT, exactly as the official ot_scatter scatter. */
export function otSplit(seq: Tensor, otScatter: Tensor, Lt: Dim, N: Dim): { txt: Tensor; img: Tensor } {
  const [B, Lj, H] = seq.shape;
  const width = (Lt as string) + '+' + String(Lj);
  const zeros = expand(scalar(seq.graph, 0), [B, width, H]);
  const idx = expand(unsqueeze(otScatter, [-1]), [B, Lj, H]);
  const ctx = scatterAdd(zeros, idx, seq, 1);
  return { txt: slice(ctx, 1, 0, Lt), img: slice(ctx, 1, Lt, `${Lt}+${N}`) };
}

// ---------------------------------------------------------------------------------------------
// Downstream heads

/** Linear(H, 2H) -> act -> LayerNorm(2H) -> Linear(2H, out): VQA/VE (GELU) and VCR (ReLU). */
export function mlpHead(P: Params, prefix: string, x: Tensor, act: 'gelu' | 'relu'): Tensor {
  const h = dense(P, `${prefix}.0`, x);
  return dense(P, `${prefix}.3`, ln(P, `${prefix}.2`, act === 'gelu' ? gelu(h) : relu(h)));
}

/** Multi-head attention as torch.nn.MultiheadAttention (batch-first math; key padding -> -inf). */
function multiheadAttention(P: Params, cfg: UniterConfig, prefix: string, query: Tensor, key: Tensor, keyPad: Tensor, training: boolean): Tensor {
  const H = cfg.hidden_size;
  const heads = cfg.num_attention_heads;
  const dh = H / heads;
  const W = P.get(`${prefix}.in_proj_weight`);
  const b = P.get(`${prefix}.in_proj_bias`);
  const proj = (x: Tensor, i: number) => linear(x, slice(W, 0, i * H, (i + 1) * H), slice(b, 0, i * H, (i + 1) * H));
  const [n, Lq] = query.shape;
  const Lk = key.shape[1];
  const split = (t: Tensor, L: Dim) => transpose(reshape(t, [n, L, heads, dh]), [0, 2, 1, 3]);
  const q = split(mul(proj(query, 0), 1 / Math.sqrt(dh)), Lq);
  const k = split(proj(key, 1), Lk);
  const v = split(proj(key, 2), Lk);
  const scores = where(unsqueeze(keyPad, [1, 2]), -Infinity, matmul(q, transposeLast2(k)));
  const probs = dropout(softmax(scores, -1), cfg.attention_probs_dropout_prob, training);
  const ctx = reshape(transpose(matmul(probs, v), [0, 2, 1, 3]), [n, Lq, H]);
  return dense(P, `${prefix}.out_proj`, ctx);
}

function attentionPool(P: Params, cfg: UniterConfig, x: Tensor, pad: Tensor, training: boolean): Tensor {
  const score = add(squeeze(relu(dense(P, 'attn_pool.fc.0', x)), [-1]), mul(cast(pad, 'float32'), -1e4));
  const w = dropout(softmax(score, 1), cfg.attention_probs_dropout_prob, training);
  return squeeze(matmul(unsqueeze(w, [1]), x), [1]);
}

/** NLVR2 paired-attn head over the sequence outputs of the 2n rows -> [n, 2]. */
export function nlvr2PairedAttnHead(P: Params, cfg: UniterConfig, seq: Tensor, attnMasks: Tensor, training: boolean, capture?: Map<string, Tensor>): Tensor {
  const [, Lj, H] = seq.shape;
  const pairs = reshape(seq, [-1, 2, Lj, H]);
  const left = squeeze(slice(pairs, 1, 0, 1), [1]);
  const right = squeeze(slice(pairs, 1, 1, 2), [1]);
  const padPairs = reshape(not(greater(attnMasks, scalar(seq.graph, 0, 'int64'))), [-1, 2, Lj]);
  const leftPad = squeeze(slice(padPairs, 1, 0, 1), [1]);
  const rightPad = squeeze(slice(padPairs, 1, 1, 2), [1]);
  const l2r = multiheadAttention(P, cfg, 'attn1', left, right, rightPad, training);
  const r2l = multiheadAttention(P, cfg, 'attn2', right, left, leftPad, training);
  const fc = (x: Tensor) => dropout(relu(dense(P, 'fc.0', x)), cfg.hidden_dropout_prob, training);
  const leftOut = fc(concat([l2r, left], -1));
  const rightOut = fc(concat([r2l, right], -1));
  const lp = attentionPool(P, cfg, leftOut, leftPad, training);
  const rp = attentionPool(P, cfg, rightOut, rightPad, training);
  if (capture) {
    capture.set('attn1_output', transpose(l2r, [1, 0, 2]));
    capture.set('attn2_output', transpose(r2l, [1, 0, 2]));
    capture.set('fc_left', transpose(leftOut, [1, 0, 2]));
    capture.set('fc_right', transpose(rightOut, [1, 0, 2]));
    capture.set('attn_pool_left', lp);
    capture.set('attn_pool_right', rp);
  }
  return dense(P, 'nlvr2_output', concat([lp, rp], -1));
}

export const losses = {
  crossEntropy,
  bceWithLogits,
  mse: (pred: Tensor, target: Tensor) => {
    const d = sub(pred, target);
    return mul(d, d);
  },
  /** Hinge on sigmoid scores: max(0, margin + sigma(neg) - sigma(pos)). */
  rankHinge: (pos: Tensor, negs: Tensor, margin: number) => relu(add(sub(sigmoid(negs), sigmoid(pos)), margin)),
};

export { constant, logSoftmax, mean, meanAll, neg, sumAll };
