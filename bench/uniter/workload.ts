/**
 * The synthetic inputs of the UNITER benchmark, made by the project's own data path: in-memory
 * text and image stores -> MlmDataset / ItmDataset (masking, ITM negatives) -> the official
 * collates. Each batch is written once as safetensors and read by both the engine worker and
 * the PyTorch baseline, so the two sides compute on identical inputs.
 *
 * Every caption has `wordpieces` wordpieces (plus [CLS] and [SEP]) and every image `regions`
 * regions of 2048-d BUTD-like features (non-negative, about 40% exact zeros).
 */
import { HostTensor, bool, f32 } from '../../src/engine/host.js';
import { readSafetensors, writeSafetensors } from '../../src/engine/safetensors.js';
import type { Batch, ImageRecord, TextRecord } from '../../src/data/types.js';
import { MemoryImageSource, MemoryTextSource } from '../../src/data/golden-batches.js';
import { ItmDataset, MlmDataset } from '../../src/data/datasets.js';
import { Rng } from '../../src/util/rng.js';
import type { AdamWOptions } from '../../src/pretrain/optimizer.js';

/** Training settings of the benchmark's step (the official pre-training values; lr is arbitrary). */
export const LEARNING_RATE = 5e-5;
export const GRAD_CLIP = 5;
export const ADAMW_OPTIONS: AdamWOptions = { betas: [0.9, 0.98], eps: 1e-6, weightDecay: 0.01 };

export const IMG_DIM = 2048;
export const IMG_LABEL_DIM = 1601;

export interface WorkloadShape {
  /** Examples (image-text pairs) in the batch. */
  examples: number;
  /** Regions per image. */
  regions: number;
  /** Wordpieces per caption, without [CLS] and [SEP]. */
  wordpieces: number;
}

/** mlm: masked text; itm: ITM with negatives and OT inputs (training); pairs: matched pairs to score. */
export type BatchKind = 'mlm' | 'itm' | 'pairs';

/** Name of a batch file: kind, examples x regions, wordpieces. */
export function batchKey(kind: BatchKind, s: WorkloadShape): string {
  return `${kind}_${s.examples}x${s.regions}_w${s.wordpieces}`;
}

/** Stores with one caption per example and one image per caption (captions i and images i pair up). */
function syntheticSources(s: WorkloadShape, rng: Rng): { txt: MemoryTextSource; img: MemoryImageSource } {
  const images = new Map<string, ImageRecord>();
  const captions: TextRecord[] = [];
  for (let i = 0; i < s.examples; i++) {
    const features = new Float32Array(s.regions * IMG_DIM);
    for (let k = 0; k < features.length; k++) features[k] = rng.uniform() < 0.4 ? 0 : rng.uniform() * 4;
    const normBb = new Float32Array(s.regions * 6);
    for (let r = 0; r < s.regions; r++) {
      const [x1, y1, w, h] = [rng.uniform() * 0.5, rng.uniform() * 0.5, rng.uniform() * 0.5, rng.uniform() * 0.5];
      normBb.set([x1, y1, x1 + w, y1 + h, w, h], r * 6);
    }
    const fname = `bench_${i}.npz`;
    images.set(fname, { nbb: s.regions, features, normBb });
    captions.push({ id: `cap_${i}`, input_ids: Array.from({ length: s.wordpieces }, () => rng.int(106, 28996)), img_fname: fname });
  }
  return { txt: new MemoryTextSource(captions), img: new MemoryImageSource(images, IMG_DIM, IMG_LABEL_DIM) };
}

/**
 * One collated batch of `s.examples` examples: MLM (15% of wordpieces masked, images intact),
 * ITM with the OT inputs of WRA (half the images swapped for another, label 0), or matched
 * pairs for scoring (ITM collate without OT inputs).
 */
export function makeBatch(kind: BatchKind, s: WorkloadShape, seed = 7): Batch {
  const least = kind === 'pairs' ? 1 : 2;
  if (!(s.examples >= least && s.regions >= 1 && s.wordpieces >= 1)) throw new Error(`bench workload: a ${kind} batch needs >= ${least} examples, >= 1 region and >= 1 wordpiece, got ${JSON.stringify(s)}`);
  const rng = new Rng(seed, 'bench-workload', kind);
  const { txt, img } = syntheticSources(s, rng.fork('stores'));
  const indices = Array.from({ length: s.examples }, (_, i) => i);
  if (kind === 'mlm') {
    const ds = new MlmDataset(txt, img);
    const masking = rng.fork('masking');
    return ds.collate(indices.map((i) => ds.get(i, masking)));
  }
  const training = kind === 'itm';
  const ds = new ItmDataset(txt, img, { negProb: training ? 0.5 : 0, ot: training });
  ds.newEpoch(rng.fork('negatives'));
  return ds.collate(indices.map((i) => ds.get(i)));
}

/** Tokens the encoder sees: rows x joint length (text + regions + padding). */
export function batchTokens(batch: Batch): number {
  const attn = batch.get('attn_masks');
  if (!attn) throw new Error('bench workload: batch has no attn_masks');
  return attn.shape[0] * attn.shape[1];
}

/**
 * IPOT inputs: a cosine cost [B, M, N] between random text and region embeddings (768-d) and
 * the padding masks; text lengths vary between M - 12 and M tokens, images use all N regions.
 */
export function makeIpotInputs(examples: number, txtTokens: number, regions: number, seed = 11): Map<string, HostTensor> {
  const rng = new Rng(seed, 'bench-ipot');
  const H = 768;
  const cost = new Float32Array(examples * txtTokens * regions);
  const txtPad = new Uint8Array(examples * txtTokens);
  const imgPad = new Uint8Array(examples * regions);
  const unit = (n: number) => {
    const vs: Float64Array[] = [];
    for (let i = 0; i < n; i++) {
      const v = new Float64Array(H);
      let norm = 0;
      for (let d = 0; d < H; d++) norm += (v[d] = rng.normal()) ** 2;
      norm = Math.sqrt(norm);
      for (let d = 0; d < H; d++) v[d] /= norm;
      vs.push(v);
    }
    return vs;
  };
  for (let b = 0; b < examples; b++) {
    const real = txtTokens - rng.int(0, Math.min(12, txtTokens - 1) + 1);
    const t = unit(txtTokens);
    const r = unit(regions);
    for (let i = 0; i < txtTokens; i++) {
      txtPad[b * txtTokens + i] = i >= real ? 1 : 0;
      for (let j = 0; j < regions; j++) {
        let dot = 0;
        for (let d = 0; d < H; d++) dot += t[i][d] * r[j][d];
        // Padded text is zero in the official cost (masked_fill before IPOT).
        cost[(b * txtTokens + i) * regions + j] = i >= real ? 0 : 1 - dot;
      }
    }
  }
  return new Map<string, HostTensor>([
    ['cost', f32([examples, txtTokens, regions], cost)],
    ['txt_pad', bool([examples, txtTokens], txtPad)],
    ['img_pad', bool([examples, regions], imgPad)],
  ]);
}

export function writeBatch(file: string, batch: Batch): void {
  writeSafetensors(file, batch, { written_by: 'bench/uniter/workload.ts' });
}

export function readBatch(file: string): Batch {
  return readSafetensors(file).tensors;
}
