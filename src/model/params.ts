/**
 * Parameters by official state_dict name: which exist for a configuration and a set of heads,
 * their shapes, their initialization (as the official `init_weights`: Linear/Embedding weights
 * ~ N(0, initializer_range), biases 0, LayerNorm (1, 0)), and the two weight ties.
 */
import type { HostTensor } from '../engine/host.js';
import { Rng } from '../util/rng.js';
import type { UniterConfig } from './config.js';

export type Init = 'normal' | 'zeros' | 'ones' | 'xavier';

export interface ParamSpec {
  name: string;
  shape: number[];
  init: Init;
}

/** alias -> primary: the alias is the same tensor as the primary and is never stored twice. */
export const TIES: Record<string, string> = {
  'cls.predictions.decoder.weight': 'uniter.embeddings.word_embeddings.weight',
  'feat_regress.weight': 'uniter.img_embeddings.img_linear.weight',
};

export type HeadName =
  | 'pretrain'
  | 'vqa'
  | 've'
  | 'nlvr2_paired'
  | 'nlvr2_paired_attn'
  | 'nlvr2_triplet'
  | 're_mlp1'
  | 're_mlp2'
  | 'retrieval'
  | 'vcr';

export interface HeadOptions {
  /** Output width of the VQA head (number of answers); VE uses 3. */
  numAnswers?: number;
}

function linear(name: string, out: number, inp: number, bias = true): ParamSpec[] {
  const s: ParamSpec[] = [{ name: `${name}.weight`, shape: [out, inp], init: 'normal' }];
  if (bias) s.push({ name: `${name}.bias`, shape: [out], init: 'zeros' });
  return s;
}

function layerNorm(name: string, h: number): ParamSpec[] {
  return [
    { name: `${name}.weight`, shape: [h], init: 'ones' },
    { name: `${name}.bias`, shape: [h], init: 'zeros' },
  ];
}

/** The UniterModel body: embeddings, image embeddings, encoder, pooler. */
export function bodySpecs(cfg: UniterConfig): ParamSpec[] {
  const H = cfg.hidden_size;
  const s: ParamSpec[] = [
    { name: 'uniter.embeddings.word_embeddings.weight', shape: [cfg.vocab_size, H], init: 'normal' },
    { name: 'uniter.embeddings.position_embeddings.weight', shape: [cfg.max_position_embeddings, H], init: 'normal' },
    { name: 'uniter.embeddings.token_type_embeddings.weight', shape: [cfg.type_vocab_size, H], init: 'normal' },
    ...layerNorm('uniter.embeddings.LayerNorm', H),
    ...linear('uniter.img_embeddings.img_linear', H, cfg.img_dim),
    ...layerNorm('uniter.img_embeddings.img_layer_norm', H),
    ...layerNorm('uniter.img_embeddings.pos_layer_norm', H),
    ...linear('uniter.img_embeddings.pos_linear', H, 7),
    { name: 'uniter.img_embeddings.mask_embedding.weight', shape: [2, cfg.img_dim], init: 'normal' },
    ...layerNorm('uniter.img_embeddings.LayerNorm', H),
  ];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `uniter.encoder.layer.${l}`;
    s.push(
      ...linear(`${p}.attention.self.query`, H, H),
      ...linear(`${p}.attention.self.key`, H, H),
      ...linear(`${p}.attention.self.value`, H, H),
      ...linear(`${p}.attention.output.dense`, H, H),
      ...layerNorm(`${p}.attention.output.LayerNorm`, H),
      ...linear(`${p}.intermediate.dense`, cfg.intermediate_size, H),
      ...linear(`${p}.output.dense`, H, cfg.intermediate_size),
      ...layerNorm(`${p}.output.LayerNorm`, H),
    );
  }
  s.push(...linear('uniter.pooler.dense', H, H));
  return s;
}

export function headSpecs(cfg: UniterConfig, head: HeadName, opts: HeadOptions = {}): ParamSpec[] {
  const H = cfg.hidden_size;
  switch (head) {
    case 'pretrain':
      return [
        { name: 'cls.predictions.bias', shape: [cfg.vocab_size], init: 'zeros' },
        ...linear('cls.predictions.transform.dense', H, H),
        ...layerNorm('cls.predictions.transform.LayerNorm', H),
        { name: 'feat_regress.bias', shape: [cfg.img_dim], init: 'zeros' },
        ...linear('feat_regress.net.0', H, H),
        ...layerNorm('feat_regress.net.2', H),
        ...linear('region_classifier.net.0', H, H),
        ...layerNorm('region_classifier.net.2', H),
        ...linear('region_classifier.net.3', cfg.img_label_dim, H),
        ...linear('itm_output', 2, H),
      ];
    case 'vqa':
    case 've': {
      const A = head === 've' ? 3 : opts.numAnswers ?? 3129;
      return [...linear('vqa_output.0', 2 * H, H), ...layerNorm('vqa_output.2', 2 * H), ...linear('vqa_output.3', A, 2 * H)];
    }
    case 'nlvr2_paired':
      return linear('nlvr2_output', 2, 2 * H);
    case 'nlvr2_triplet':
      return linear('nlvr2_output', 2, H);
    case 'nlvr2_paired_attn':
      return [
        { name: 'attn1.in_proj_weight', shape: [3 * H, H], init: 'xavier' },
        { name: 'attn1.in_proj_bias', shape: [3 * H], init: 'zeros' },
        ...linear('attn1.out_proj', H, H),
        { name: 'attn2.in_proj_weight', shape: [3 * H, H], init: 'xavier' },
        { name: 'attn2.in_proj_bias', shape: [3 * H], init: 'zeros' },
        ...linear('attn2.out_proj', H, H),
        ...linear('fc.0', H, 2 * H),
        ...linear('attn_pool.fc.0', 1, H),
        ...linear('nlvr2_output', 2, 2 * H),
      ];
    case 're_mlp1':
      return linear('re_output', 1, H);
    case 're_mlp2':
      return [...linear('re_output.0', H, H), ...layerNorm('re_output.2', H), ...linear('re_output.3', 1, H)];
    case 'retrieval':
      return linear('rank_output', 1, H);
    case 'vcr':
      return [...linear('vcr_output.0', 2 * H, H), ...layerNorm('vcr_output.2', 2 * H), ...linear('vcr_output.3', 2, 2 * H)];
  }
}

/** Token-type rows a head needs (NLVR2 uses 3: text, left image, right image; VCR 4). */
export function typeVocabFor(head: HeadName, cfg: UniterConfig): number {
  if (head.startsWith('nlvr2')) return Math.max(3, cfg.type_vocab_size);
  if (head === 'vcr') return Math.max(4, cfg.type_vocab_size);
  return cfg.type_vocab_size;
}

export function allSpecs(cfg: UniterConfig, head: HeadName, opts: HeadOptions = {}): ParamSpec[] {
  const tv = typeVocabFor(head, cfg);
  const body = bodySpecs({ ...cfg, type_vocab_size: tv });
  return [...body, ...headSpecs(cfg, head, opts)];
}

/** Fresh parameters with the official initialization. */
export function initParams(specs: ParamSpec[], std: number, seed: number): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const rng = new Rng(seed, 'init', s.name);
    if (s.init === 'normal') rng.fillNormal(data, 0, std);
    else if (s.init === 'ones') data.fill(1);
    else if (s.init === 'xavier') {
      const [fo, fi] = [s.shape[0], s.shape[1]];
      const a = Math.sqrt(6 / (fi + fo / 3)); // in_proj is three [H, H] blocks: xavier over one block
      for (let i = 0; i < n; i++) data[i] = (rng.uniform() * 2 - 1) * a;
    }
    out.set(s.name, { dtype: 'float32', shape: [...s.shape], data });
  }
  return out;
}
