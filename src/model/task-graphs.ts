/**
 * Task graphs: for each pre-training task and downstream head, the forward pass, the outputs
 * with their official names, the loss with the official reduction and, on request, the
 * gradients of every parameter. `prepareFeeds` turns an official batch into graph feeds,
 * computing on the host the few index tensors that stand in for masked_select.
 */
import {
  Dim,
  Graph,
  Tensor,
  add,
  cast,
  dimAdd,
  div,
  equal,
  expand,
  gatherElements,
  grad,
  greater,
  linear,
  logSoftmax,
  max,
  mean,
  meanAll,
  mul,
  reshape,
  scalar,
  scatterAdd,
  slice,
  squeeze,
  sub,
  sum,
  sumAll,
  unsqueeze,
  where,
} from '../engine/index.js';
import { HostTensor, bool, f32, i64, toNumbers } from '../engine/host.js';
import type { Batch } from '../data/types.js';
import { batchLengths } from '../data/collate.js';
import type { UniterConfig } from './config.js';
import { HeadName, HeadOptions, ParamSpec, allSpecs } from './params.js';
import {
  Int8Source,
  Params,
  Precision,
  declareInputs,
  klDivElementwise,
  losses,
  mlmHead,
  mlpHead,
  mrcHead,
  mrfrHead,
  nlvr2PairedAttnHead,
  otDistance,
  otSplit,
  pooler,
  selectPositions,
  uniterForward,
} from './uniter.js';

export const PRETRAIN_TASKS = ['mlm', 'mrfr', 'mrc', 'mrckl', 'itm'] as const;
export const DOWNSTREAM_TASKS = ['vqa', 've', 'nlvr2_paired', 'nlvr2_paired_attn', 'nlvr2_triplet', 're_mlp1', 're_mlp2', 'retrieval', 'vcr'] as const;
export type PretrainTask = (typeof PRETRAIN_TASKS)[number];
export type DownstreamTask = (typeof DOWNSTREAM_TASKS)[number];
export type TaskName = PretrainTask | DownstreamTask;

export interface OtOptions {
  beta: number;
  iterations: number;
  lambda: number;
}

export const DEFAULT_OT: OtOptions = { beta: 0.5, iterations: 50, lambda: 0.1 };

export interface TaskOptions extends HeadOptions {
  training: boolean;
  /** Build gradients of the loss w.r.t. every parameter. */
  grads: boolean;
  /** Output intermediates (embeddings, layers, head inputs) for parity checks. */
  capture?: boolean;
  /** ITM with word-region alignment; null disables OT. */
  ot?: OtOptions | null;
  /** Rows per caption in a retrieval batch (1 positive + negatives). */
  sampleSize?: number;
  /** Only score (no targets, no loss): inference graphs. */
  inference?: boolean;
  /** Region masking input for tasks that do not mask regions by default (joint-masking ablation). */
  imgMasks?: boolean;
  /**
   * Referring expressions trained with the official "rank" loss instead of "cls": hinge with this
   * margin on sigmoid scores of the target against one negative region per example (the
   * highest-scoring other region, or a random one; chosen on the host, fed as re_neg_ix/re_hard).
   */
  reRankMargin?: number | null;
  /**
   * Inference graphs only: 'int8' quantizes the encoder's linear layers (see int8Quantized in
   * uniter.ts); their weights are then constants of the graph, read from the Int8Source given to
   * buildTaskGraph. Default float32.
   */
  precision?: Precision;
  /** Inference graphs: false keeps the composite attention (for A/B measurements); default fused. */
  fusedAttention?: boolean;
  /** Only these outputs (official names); default every output of the task. */
  outputs?: readonly string[];
  /**
   * Gradient graphs: recompute each encoder layer's forward in the backward pass instead of
   * keeping its intermediates (activation checkpointing; config `checkpoint_activations`).
   */
  checkpointActivations?: boolean;
}

export function headOf(task: TaskName): HeadName {
  if ((PRETRAIN_TASKS as readonly string[]).includes(task)) return 'pretrain';
  return task as HeadName;
}

export interface TaskGraph {
  graph: Graph;
  outputs: Record<string, Tensor>;
  specs: ParamSpec[];
  /** Parameters the graph reads, by primary name. */
  params: string[];
}

export function buildTaskGraph(cfg: UniterConfig, task: TaskName, opts: TaskOptions, int8?: Int8Source): TaskGraph {
  const head = headOf(task);
  const specs = allSpecs(cfg, head, opts);
  const precision = opts.precision ?? 'float32';
  if (precision !== 'float32' && precision !== 'int8') throw new Error(`precision must be 'float32' or 'int8', got '${String(precision)}'`);
  if (precision === 'int8') {
    if (opts.grads || opts.training || !opts.inference) throw new Error(`task ${task}: int8 is for inference graphs only (no training, no gradients, no loss)`);
    if (!int8) throw new Error(`task ${task}: an int8 graph bakes its quantized weights in; pass the weights to quantize`);
  }
  const g = new Graph(`uniter_${task}${precision === 'int8' ? '_int8' : ''}`);
  const P = new Params(g, specs, precision === 'int8' ? int8 : undefined);
  const mrm = task === 'mrfr' || task === 'mrc' || task === 'mrckl';
  const inp = declareInputs(g, cfg, {
    imgMasks: mrm || !!opts.imgMasks,
    imgTypes: task.startsWith('nlvr2'),
    txtTypes: task === 'vcr',
  });
  const capture = opts.capture ? new Map<string, Tensor>() : undefined;
  // Inference graphs use ONNX Runtime's fused attention kernel (not when capturing intermediates).
  const fused = !!opts.inference && !opts.training && !opts.grads && !capture && opts.fusedAttention !== false;
  const seq = uniterForward(P, cfg, inp, { training: opts.training, gradients: opts.grads, capture, fusedAttention: fused, checkpointLayers: opts.checkpointActivations });
  const out: Record<string, Tensor> = { sequence_output: seq };
  let loss: Tensor | null = null;
  const infer = !!opts.inference;

  switch (task) {
    case 'mlm': {
      const positions = g.input('mlm_positions', 'int64', ['n_masked']);
      const h = selectPositions(slice(seq, 1, 0, 'Lt'), positions);
      const logits = mlmHead(P, h);
      out.prediction_scores = logits;
      capture?.set('mlm_head_input', h);
      if (!infer) {
        const labels = g.input('mlm_labels', 'int64', ['n_masked']);
        const perToken = losses.crossEntropy(logits, labels);
        out.loss_per_token = perToken;
        loss = mean(perToken, [0]);
      }
      break;
    }
    case 'mrfr': {
      const positions = g.input('mrm_positions', 'int64', ['n_masked']);
      const h = selectPositions(seq, positions);
      const pred = mrfrHead(P, h);
      out.prediction_feat = pred;
      capture?.set('mrfr_head_input', h);
      if (!infer) {
        const target = g.input('feat_targets', 'float32', ['n_masked', cfg.img_dim]);
        const el = losses.mse(pred, target);
        out.loss_elementwise = el;
        loss = meanAll(el);
      }
      break;
    }
    case 'mrc':
    case 'mrckl': {
      const positions = g.input('mrm_positions', 'int64', ['n_masked']);
      const h = selectPositions(seq, positions);
      const logits = mrcHead(P, h);
      out.prediction_logits = logits;
      capture?.set('mrc_head_input', h);
      if (!infer) {
        if (task === 'mrc') {
          const hard = g.input('mrc_hard_targets', 'int64', ['n_masked']);
          const per = losses.crossEntropy(logits, hard);
          out.loss_per_region = per;
          loss = mean(per, [0]);
        } else {
          const soft = g.input('label_targets', 'float32', ['n_masked', cfg.img_label_dim]);
          const lp = logSoftmax(logits, -1);
          out.log_probs = lp;
          const el = klDivElementwise(lp, soft);
          out.loss_elementwise = el;
          loss = meanAll(el);
        }
      }
      break;
    }
    case 'itm': {
      const pooled = pooler(P, seq);
      out.pooled_output = pooled;
      const itm = linear(pooled, P.get('itm_output.weight'), P.get('itm_output.bias'));
      out.itm_scores = itm;
      if (!infer) {
        const targets = g.input('targets', 'int64', ['B']);
        const per = losses.crossEntropy(itm, targets);
        out.itm_loss_per_example = per;
        const itmLoss = mean(per, [0]);
        out.itm_loss = itmLoss;
        loss = itmLoss;
        if (opts.ot) {
          const scatter = g.input('ot_inputs.ot_scatter', 'int64', ['B', 'Lj']);
          const txtPad = g.input('ot_inputs.txt_pad', 'bool', ['B', 'Lt']);
          const imgPad = g.input('ot_inputs.img_pad', 'bool', ['B', 'N']);
          const { txt, img } = otSplit(seq, scatter, 'Lt', 'N');
          capture?.set('ot_txt_emb', txt);
          capture?.set('ot_img_emb', img);
          const ot = otDistance(txt, img, txtPad, imgPad, opts.ot.beta, opts.ot.iterations);
          out.ot_cost = ot.cost;
          out.ot_T = ot.plan;
          out.ot_dist = ot.distance;
          const pos = cast(equal(targets, scalar(g, 1, 'int64')), 'float32');
          const sign = sub(mul(pos, 2), 1); // +1 for matched pairs, -1 for mismatched
          const otLoss = div(sumAll(mul(ot.distance, sign)), sumAll(add(mul(pos, 0), 1)));
          out.ot_loss = otLoss;
          loss = add(itmLoss, mul(otLoss, opts.ot.lambda));
        }
      }
      break;
    }
    case 'vqa':
    case 've': {
      const pooled = pooler(P, seq);
      out.pooled_output = pooled;
      const scores = mlpHead(P, 'vqa_output', pooled, 'gelu');
      out.answer_scores = scores;
      if (!infer) {
        const A = scores.shape[1] as number;
        const targets = g.input('targets', 'float32', ['B', A]);
        const el = losses.bceWithLogits(scores, targets);
        out.loss_elementwise = el;
        loss = mul(meanAll(el), A);
      }
      break;
    }
    case 'nlvr2_paired':
    case 'nlvr2_triplet':
    case 'nlvr2_paired_attn': {
      let scores: Tensor;
      if (task === 'nlvr2_paired_attn') {
        scores = nlvr2PairedAttnHead(P, cfg, seq, inp.attn_masks, opts.training, capture);
      } else {
        const pooled = pooler(P, seq);
        out.pooled_output = pooled;
        const x = task === 'nlvr2_paired' ? reshape(pooled, [-1, 2 * cfg.hidden_size]) : pooled;
        scores = linear(x, P.get('nlvr2_output.weight'), P.get('nlvr2_output.bias'));
      }
      out.answer_scores = scores;
      if (!infer) {
        const targets = g.input('targets', 'int64', ['n_statements']);
        const per = losses.crossEntropy(scores, targets);
        out.loss_per_example = per;
        loss = mean(per, [0]);
      }
      break;
    }
    case 're_mlp1':
    case 're_mlp2': {
      // image_hidden = seq[i, tl_i : tl_i + nbb_i], zero-padded. Training gathers it with
      // host-computed positions; inference graphs derive it from the official batch fields alone.
      const objMasks = g.input('obj_masks', 'bool', ['B', 'N']);
      const valid = unsqueeze(cast(greater(scalar(g, 1, 'float32'), cast(objMasks, 'float32')), 'float32'), [-1]);
      let regions: Tensor;
      if (infer) regions = regionRows(seq, inp.gather_index, inp.attn_masks, inp.input_ids.shape[1], inp.img_feat.shape[1]);
      else {
        const imgPositions = g.input('re_img_positions', 'int64', ['B', 'N']);
        regions = gatherElements(seq, expand(unsqueeze(imgPositions, [-1]), ['B', 'N', cfg.hidden_size]), 1);
      }
      const imageHidden = mul(regions, valid);
      out.image_hidden = imageHidden;
      const raw =
        task === 're_mlp1'
          ? linear(imageHidden, P.get('re_output.weight'), P.get('re_output.bias'))
          : reMlp2(P, imageHidden);
      const scores = where(objMasks, -1e4, squeeze(raw, [2]));
      out.scores = scores;
      if (!infer) {
        const targets = g.input('re_targets', 'int64', ['B']);
        let per: Tensor;
        if (opts.reRankMargin != null) {
          // Official "rank": the hard negative is the best-scoring region other than the target
          // (padded regions sit at -1e4), the easy one a random real region other than the target.
          const isTarget = g.input('re_target_mask', 'bool', ['B', 'N']);
          const hard = g.input('re_hard', 'bool', ['B']);
          const randomIx = g.input('re_neg_ix', 'int64', ['B']);
          const pos = gatherElements(scores, unsqueeze(targets, [1]), 1);
          const hardNeg = max(where(isTarget, -1e9, scores), [1], true);
          const randomNeg = gatherElements(scores, unsqueeze(randomIx, [1]), 1);
          const neg = where(unsqueeze(hard, [1]), hardNeg, randomNeg);
          per = squeeze(losses.rankHinge(pos, neg, opts.reRankMargin), [1]);
        } else per = losses.crossEntropy(scores, targets);
        out.loss_per_example = per;
        loss = sum(per, [0]);
      }
      break;
    }
    case 'retrieval': {
      const pooled = pooler(P, seq);
      out.pooled_output = pooled;
      const rank = linear(pooled, P.get('rank_output.weight'), P.get('rank_output.bias'));
      out.rank_scores = rank;
      if (!infer) {
        const S = opts.sampleSize ?? 3;
        const grouped = reshape(rank, [-1, S]);
        const pos = slice(grouped, 1, 0, 1);
        const negs = slice(grouped, 1, 1, S);
        const per = losses.rankHinge(pos, negs, 0.2);
        out.loss_per_pair = per;
        loss = meanAll(per);
      }
      break;
    }
    case 'vcr': {
      const pooled = pooler(P, seq);
      out.pooled_output = pooled;
      const scores = mlpHead(P, 'vcr_output', pooled, 'relu');
      out.answer_scores = scores;
      if (!infer) {
        const targets = g.input('targets', 'int64', ['B']);
        const per = losses.crossEntropy(scores, targets);
        out.loss_per_example = per;
        loss = mean(per, [0]);
      }
      break;
    }
  }
  if (loss) out.loss = loss;
  if (capture) for (const [k, v] of capture) out[k] = v;
  if (opts.outputs) {
    for (const name of Object.keys(out)) if (!opts.outputs.includes(name)) delete out[name];
    const missing = opts.outputs.filter((n) => !(n in out));
    if (missing.length) throw new Error(`task ${task}: no output(s) ${missing.join(', ')}`);
  }
  const params = [...P.used.keys()];
  if (opts.grads) {
    if (!loss) throw new Error(`task ${task}: gradients need a loss (inference graphs have none)`);
    const ts = params.map((n) => P.used.get(n)!);
    const gs = grad(loss, ts);
    gs.forEach((gt, i) => {
      if (gt) out[`grad.${params[i]}`] = gt;
    });
  }
  return { graph: g, outputs: out, specs, params };
}

/**
 * The encoder outputs of the regions, in region order [B, N, H]: gather_index read backwards.
 * Slot j of row i came from position gather_index[i, j] of cat(text [Lt], regions [N]), so adding
 * each live slot (attn_masks 1) at that position and keeping positions Lt.. recovers
 * seq[i, tl_i + k] for k < nbb_i; padding slots are zeroed first, so they add nothing.
 */
function regionRows(seq: Tensor, gatherIndex: Tensor, attnMasks: Tensor, Lt: Dim, N: Dim): Tensor {
  const [B, Lj, H] = seq.shape;
  const live = mul(seq, unsqueeze(cast(attnMasks, 'float32'), [-1]));
  const width = dimAdd(Lt, N);
  const byPosition = scatterAdd(expand(scalar(seq.graph, 0), [B, width, H]), expand(unsqueeze(gatherIndex, [-1]), [B, Lj, H]), live, 1);
  return slice(byPosition, 1, Lt, width);
}

/** re_output for mlp=2: Linear(H, H) -> GELU -> LayerNorm -> Linear(H, 1). */
function reMlp2(P: Params, x: Tensor): Tensor {
  return mlpHead(P, 're_output', x, 'gelu');
}

// ---------------------------------------------------------------------------------------------
// Feeds

/** Graph feeds for a task from an official batch (plus host-computed index tensors). */
export function prepareFeeds(task: TaskName, batch: Batch, opts: { inference?: boolean; reRank?: boolean } = {}): Map<string, HostTensor> {
  const feeds = new Map<string, HostTensor>();
  const need = (name: string): HostTensor => {
    const t = batch.get(name);
    if (!t) throw new Error(`batch for task '${task}' lacks field '${name}'`);
    return t;
  };
  for (const k of ['input_ids', 'position_ids', 'img_feat', 'img_pos_feat', 'attn_masks', 'gather_index']) feeds.set(k, need(k));
  if (task === 'mrfr' || task === 'mrc' || task === 'mrckl' || batch.has('img_masks')) feeds.set('img_masks', need('img_masks'));
  if (task.startsWith('nlvr2')) feeds.set('img_type_ids', need('img_type_ids'));
  if (task === 'vcr') feeds.set('txt_type_ids', need('txt_type_ids'));
  const inf = !!opts.inference;
  switch (task) {
    case 'mlm': {
      const labels = need('txt_labels');
      const vals = toNumbers(labels);
      const pos: number[] = [];
      const lab: number[] = [];
      vals.forEach((v, i) => {
        if (v !== -1) {
          pos.push(i);
          lab.push(v);
        }
      });
      feeds.set('mlm_positions', i64([pos.length], pos));
      if (!inf) feeds.set('mlm_labels', i64([lab.length], lab));
      break;
    }
    case 'mrfr':
    case 'mrc':
    case 'mrckl': {
      const tgt = need('img_mask_tgt');
      const pos: number[] = [];
      tgt.data.forEach((v, i) => {
        if (Number(v)) pos.push(i);
      });
      feeds.set('mrm_positions', i64([pos.length], pos));
      if (inf) break;
      if (task === 'mrfr') feeds.set('feat_targets', need('feat_targets'));
      else {
        const soft = need('label_targets');
        if (task === 'mrckl') feeds.set('label_targets', soft);
        else feeds.set('mrc_hard_targets', hardTargets(soft));
      }
      break;
    }
    case 'itm':
      if (inf) break;
      feeds.set('targets', need('targets'));
      for (const k of ['ot_inputs.ot_scatter', 'ot_inputs.txt_pad', 'ot_inputs.img_pad']) if (batch.has(k)) feeds.set(k, need(k));
      break;
    case 'vqa':
    case 've':
    case 'nlvr2_paired':
    case 'nlvr2_paired_attn':
    case 'nlvr2_triplet':
    case 'vcr':
      if (!inf) feeds.set('targets', need('targets'));
      break;
    case 're_mlp1':
    case 're_mlp2': {
      const obj = need('obj_masks');
      feeds.set('obj_masks', obj);
      if (inf) break; // inference graphs find the regions from gather_index themselves
      const [B, N] = obj.shape;
      const { txtLens } = batchLengths(batch);
      const Lj = need('attn_masks').shape[1];
      const pos: number[] = [];
      for (let b = 0; b < B; b++) for (let k = 0; k < N; k++) pos.push(Math.min(txtLens[b] + k, Lj - 1));
      feeds.set('re_img_positions', i64([B, N], pos));
      const targets = toNumbers(need('targets'));
      feeds.set('re_targets', i64([B], targets));
      if (opts.reRank) {
        feeds.set('re_neg_ix', need('re_neg_ix'));
        feeds.set('re_hard', need('re_hard'));
        const isTarget = new Array<boolean>(B * N).fill(false);
        targets.forEach((t, b) => (isTarget[b * N + t] = true));
        feeds.set('re_target_mask', bool([B, N], isTarget));
      }
      break;
    }
    case 'retrieval':
      break;
  }
  return feeds;
}

/** argmax over columns 1.. of the soft labels, + 1 (the MRC hard target; background excluded). */
export function hardTargets(soft: HostTensor): HostTensor {
  const [n, C] = soft.shape;
  const out: number[] = [];
  const d = soft.data as Float32Array;
  for (let i = 0; i < n; i++) {
    let best = 1;
    for (let c = 2; c < C; c++) if (d[i * C + c] > d[i * C + best]) best = c;
    out.push(best);
  }
  return i64([n], out);
}

export { bool, f32 };
