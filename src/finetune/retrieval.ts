/**
 * Image-text retrieval (official `model/itm.py`, `train_itm.py`, `train_itm_hard_negatives.py`,
 * `inf_itm.py`, `utils/itm_eval.py`; spec 4.5).
 *
 * Model: the UNITER body + `rank_output` Linear(H -> 1) on the pooled [CLS]. Before fine-tuning
 * (and for zero-shot scoring) `rank_output` is initialised from row 1 ("matched") of the
 * pre-trained `itm_output`, so the pre-trained model ranks by its ITM "match" logit.
 *
 * Training, both with the hinge loss max(0, 0.2 + sigmoid(s_neg) - sigmoid(s_pos)):
 * - hard negatives (the paper's main setting): per caption, sample `negativeSize` images (not its
 *   own), score caption x (own + sampled) in eval mode without gradients, keep the
 *   `hardNegSize` best-scored negatives and train on (1 + hardNegSize) rows; symmetrically per
 *   caption's image, sample `negativeSize` captions not describing it, keep the hardest, train.
 *   Both directions every step; each direction's loss is the mean over its hinge terms and the
 *   step's captions (the official code divides each caption's mean by train_batch_size and
 *   accumulates over that many captions: the same gradient).
 * - plain: per caption the rows (caption, own image), (caption, random image), (random caption,
 *   own image) (official ItmRankDataset with negative_size 1): two hinge terms per caption.
 *
 * Evaluation scores every caption against every gallery image (a full score matrix, kept in
 * float32 where the official evaluator stores float16) and reports R@1/5/10 both ways
 * (recall.ts). Every pair is a full forward pass of the single-stream model, so the cost grows
 * with captions x images (bench/retrieval-scaling.ts). The matrix is filled block by block:
 * images sorted by region count (as the official evaluator, so padding stays small) are cut
 * into groups whose features are read and padded once; each forward pass pairs a few captions
 * (sorted by length) with a whole group, copying the padded rows out of the block into a
 * reused buffer instead of collating every pair from scratch.
 */
import { f32, i64 } from '../engine/host.js';
import type { DropoutSeed } from '../engine/runtime.js';
import type { Batch, ImageSource, TextSource } from '../data/types.js';
import { type ImageFeatures, loadImage, sampleNegatives, ItmRankDataset } from '../data/datasets.js';
import { collateRows, gatherIndex, type SeqRow } from '../data/collate.js';
import { BERT_BASE_CASED_IDS, type SpecialIds } from '../data/masking.js';
import { ExampleCountSampler } from '../data/sampler.js';
import type { UniterRunner } from '../model/runner.js';
import { initRankOutput } from '../model/surgery.js';
import { Rng } from '../util/rng.js';
import type { Evaluation, FinetuneSettings, MicroStep, SurgeryHooks, TrainBatchSource } from './trainer.js';
import { recipe } from './defaults.js';
import { splitOf, type EvalSplit, type TaskDefinition, type TaskOptionValues } from './task-registry.js';
import { type RetrievalMetrics, type ScoreMatrix, metricsFromRanks, retrievalRanks } from './recall.js';

// ---------------------------------------------------------------------------------------------
// Galleries

/** A retrieval split: captions (each naming its image in `img_fname`) and the image store. */
export interface RetrievalSplit {
  txt: TextSource;
  img: ImageSource;
  /** Caption ids to use (default: all of `txt`). */
  txtIds?: readonly string[];
}

/** A split resolved to its ground truth (official txt2img / img2txts). */
export interface Gallery {
  txt: TextSource;
  img: ImageSource;
  txtIds: string[];
  /** Distinct images of the captions, in first-appearance order (official img2txts keys). */
  imgIds: string[];
  txt2img: Map<string, string>;
  img2txts: Map<string, string[]>;
}

/** The caption's image name, with an error naming the caption when the record has none. */
function captionImage(txt: TextSource, id: string): string {
  const f = txt.get(id).img_fname;
  if (typeof f !== 'string' || f.length === 0) throw new Error(`retrieval: caption '${id}': field 'img_fname': expected one image name, got ${JSON.stringify(f)}`);
  return f;
}

export function buildGallery(split: RetrievalSplit, opts: { maxImages?: number } = {}): Gallery {
  const all = split.txtIds ? [...split.txtIds] : split.txt.ids();
  if (all.length === 0) throw new Error('retrieval: the split has no captions');
  const txt2img = new Map<string, string>();
  const img2txts = new Map<string, string[]>();
  for (const id of all) {
    const im = captionImage(split.txt, id);
    if (!split.img.has(im)) throw new Error(`retrieval: caption '${id}': image '${im}' is not in the image store`);
    txt2img.set(id, im);
    const list = img2txts.get(im);
    if (list) list.push(id);
    else img2txts.set(im, [id]);
  }
  let imgIds = [...img2txts.keys()];
  if (opts.maxImages !== undefined) {
    if (!(Number.isInteger(opts.maxImages) && opts.maxImages >= 1)) throw new Error(`retrieval: maxImages must be a positive integer, got ${opts.maxImages}`);
    imgIds = imgIds.slice(0, opts.maxImages);
  }
  const kept = new Set(imgIds);
  const txtIds = all.filter((id) => kept.has(txt2img.get(id)!));
  for (const k of [...img2txts.keys()]) if (!kept.has(k)) img2txts.delete(k);
  return { txt: split.txt, img: split.img, txtIds, imgIds, txt2img, img2txts };
}

// ---------------------------------------------------------------------------------------------
// Batches of (caption, image) pairs

/**
 * Reusable storage for the big image tensors of pair batches. Fresh multi-megabyte arrays are
 * costly to touch the first time (page faults: measured ~4 ms per MB on the 2-core machine,
 * more than the copies themselves), so scoring loops keep one scratch and overwrite it.
 */
export class PairScratch {
  private readonly slots = new Map<string, Float32Array>();

  /** A view of `len` floats of the named slot; its previous contents are undefined. */
  take(slot: string, len: number): Float32Array {
    let buf = this.slots.get(slot);
    if (!buf || buf.length < len) {
      buf = new Float32Array(len);
      this.slots.set(slot, buf);
    }
    return buf.subarray(0, len);
  }
}

/** Images padded to a common region count once, to be paired with many captions. */
export interface ImageBlock {
  nbbs: number[];
  maxNbb: number;
  imgDim: number;
  /** [G, maxNbb, imgDim] zero-padded features. */
  feat: Float32Array;
  /** [G, maxNbb, 7] zero-padded position features. */
  pos: Float32Array;
}

/** Pad images into one block (in `scratch` when given: valid until the scratch's next use). */
export function imageBlock(images: readonly ImageFeatures[], imgDim: number, scratch?: PairScratch): ImageBlock {
  if (images.length === 0) throw new Error('imageBlock: no images');
  const nbbs = images.map((im) => im.nbb);
  const maxNbb = Math.max(...nbbs);
  const featLen = images.length * maxNbb * imgDim;
  const posLen = images.length * maxNbb * 7;
  const feat = scratch ? scratch.take('block.feat', featLen).fill(0) : new Float32Array(featLen);
  const pos = scratch ? scratch.take('block.pos', posLen).fill(0) : new Float32Array(posLen);
  images.forEach((im, g) => {
    if (im.feat.length !== im.nbb * imgDim) throw new Error(`imageBlock: image ${g} has ${im.feat.length} feature values, expected ${im.nbb} x ${imgDim}`);
    if (im.pos.length !== im.nbb * 7) throw new Error(`imageBlock: image ${g} has ${im.pos.length} position values, expected ${im.nbb} x 7`);
    feat.set(im.feat, g * maxNbb * imgDim);
    pos.set(im.pos, g * maxNbb * 7);
  });
  return { nbbs, maxNbb, imgDim, feat, pos };
}

/**
 * The batch of the given (caption index, image index) rows over `captions` and an image block,
 * in the official layout: the same fields and values collateRows gives for those rows. With a
 * `scratch`, img_feat / img_pos_feat view the scratch and stay valid only until its next use.
 */
export function pairBatch(captions: readonly (readonly number[])[], block: ImageBlock, pairs: ReadonlyArray<readonly [number, number]>, scratch?: PairScratch): Batch {
  const B = pairs.length;
  if (B === 0) throw new Error('pairBatch: no pairs');
  const { imgDim, nbbs } = block;
  let maxTl = 0;
  let maxNbb = 0;
  let jointLen = 0;
  for (const [c, g] of pairs) {
    const cap = captions[c];
    if (!cap || cap.length === 0) throw new Error(`pairBatch: caption ${c} ${cap ? 'has no token ids' : `is out of range (${captions.length} captions)`}`);
    if (!(g >= 0 && g < nbbs.length)) throw new Error(`pairBatch: image ${g} is out of range (${nbbs.length} images)`);
    maxTl = Math.max(maxTl, cap.length);
    maxNbb = Math.max(maxNbb, nbbs[g]);
    jointLen = Math.max(jointLen, cap.length + nbbs[g]);
  }
  const rowFeat = maxNbb * imgDim;
  const feat = scratch ? scratch.take('rows.feat', B * rowFeat) : new Float32Array(B * rowFeat);
  const pos = scratch ? scratch.take('rows.pos', B * maxNbb * 7) : new Float32Array(B * maxNbb * 7);
  const ids = new BigInt64Array(B * maxTl);
  const attn = new BigInt64Array(B * jointLen);
  const rowTl: number[] = [];
  const rowNbb: number[] = [];
  pairs.forEach(([c, g], r) => {
    // Block rows past an image's regions are zero, so copying maxNbb rows pads as well.
    const from = g * block.maxNbb;
    feat.set(block.feat.subarray(from * imgDim, from * imgDim + rowFeat), r * rowFeat);
    pos.set(block.pos.subarray(from * 7, (from + maxNbb) * 7), r * maxNbb * 7);
    const cap = captions[c];
    for (let j = 0; j < cap.length; j++) ids[r * maxTl + j] = BigInt(cap[j]);
    attn.fill(1n, r * jointLen, r * jointLen + cap.length + nbbs[g]);
    rowTl.push(cap.length);
    rowNbb.push(nbbs[g]);
  });
  const batch: Batch = new Map();
  batch.set('input_ids', i64([B, maxTl], ids));
  batch.set('position_ids', i64([1, maxTl], Array.from({ length: maxTl }, (_, j) => j)));
  batch.set('img_feat', f32([B, maxNbb, imgDim], feat));
  batch.set('img_pos_feat', f32([B, maxNbb, 7], pos));
  batch.set('attn_masks', i64([B, jointLen], attn));
  batch.set('gather_index', gatherIndex(rowTl, rowNbb, maxTl, jointLen));
  return batch;
}

/** Every (caption, image) pair, caption-major: row c * G + g. */
export function crossPairBatch(captions: readonly (readonly number[])[], block: ImageBlock, scratch?: PairScratch): Batch {
  const G = block.nbbs.length;
  const pairs: Array<[number, number]> = [];
  for (let c = 0; c < captions.length; c++) for (let g = 0; g < G; g++) pairs.push([c, g]);
  return pairBatch(captions, block, pairs, scratch);
}

/** [CLS] caption [SEP] of a record, checking the token ids. */
function captionIds(txt: TextSource, id: string, special: SpecialIds): number[] {
  const v = txt.get(id).input_ids as unknown;
  if (!Array.isArray(v) && !(ArrayBuffer.isView(v) && !(v instanceof DataView))) throw new Error(`retrieval: caption '${id}': field 'input_ids': expected a list of token ids`);
  const ids = Array.from(v as ArrayLike<number>, Number);
  if (ids.length === 0) throw new Error(`retrieval: caption '${id}': field 'input_ids': empty caption`);
  for (const t of ids) if (!Number.isInteger(t) || t < 0) throw new Error(`retrieval: caption '${id}': field 'input_ids': invalid token id ${t}`);
  return [special.cls, ...ids, special.sep];
}

function readImage(img: ImageSource, fname: string, captionId: string): ImageFeatures {
  return loadImage(img, fname, { task: 'retrieval', id: captionId, field: 'img_fname' });
}

// ---------------------------------------------------------------------------------------------
// Scoring

export interface ScoringOptions {
  /** Images whose features are held and paired in one block (official inf_minibatch_size 400). */
  imagesPerGroup?: number;
  /** Upper bound on (caption, image) rows per forward pass. */
  rowsPerBatch?: number;
  specialIds?: SpecialIds;
  /** Called after each forward pass with the pairs scored so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

export const DEFAULT_SCORING: Required<Omit<ScoringOptions, 'onProgress' | 'specialIds'>> = { imagesPerGroup: 100, rowsPerBatch: 200 };

export interface ScoredGallery extends ScoreMatrix {
  seconds: number;
  forwardPasses: number;
  pairs: number;
}

/** rank_output scores of arbitrary (caption, image) rows, in eval mode. */
async function scoreRows(runner: UniterRunner, batch: Batch): Promise<Float32Array> {
  const out = await runner.run('retrieval', batch, { training: false, grads: false, inference: true });
  const s = out.get('rank_scores');
  if (!s) throw new Error("retrieval: the scoring graph returned no 'rank_scores'");
  return s.data as Float32Array;
}

/**
 * Eval-mode scores of an arbitrary list of (caption, image) pairs, `rowsPerBatch` pairs per
 * forward pass; captions and images repeated within a pass are padded into the batch once.
 */
export async function scorePairs(runner: UniterRunner, pairs: ReadonlyArray<{ caption: readonly number[]; image: ImageFeatures }>, imgDim: number, rowsPerBatch: number, scratch = new PairScratch()): Promise<Float32Array> {
  if (!(Number.isInteger(rowsPerBatch) && rowsPerBatch >= 1)) throw new Error(`retrieval scoring: rowsPerBatch must be a positive integer, got ${rowsPerBatch}`);
  const out = new Float32Array(pairs.length);
  for (let p0 = 0; p0 < pairs.length; p0 += rowsPerBatch) {
    const chunk = pairs.slice(p0, p0 + rowsPerBatch);
    const capIndex = new Map<readonly number[], number>();
    const imgIndex = new Map<ImageFeatures, number>();
    const index = chunk.map(({ caption, image }): [number, number] => {
      if (!capIndex.has(caption)) capIndex.set(caption, capIndex.size);
      if (!imgIndex.has(image)) imgIndex.set(image, imgIndex.size);
      return [capIndex.get(caption)!, imgIndex.get(image)!];
    });
    const block = imageBlock([...imgIndex.keys()], imgDim, scratch);
    out.set(await scoreRows(runner, pairBatch([...capIndex.keys()], block, index, scratch)), p0);
  }
  return out;
}

/** The full caption x image score matrix of a gallery (rows: gallery.txtIds, columns: gallery.imgIds). */
export async function scoreGallery(runner: UniterRunner, gallery: Gallery, opts: ScoringOptions = {}): Promise<ScoredGallery> {
  const t0 = performance.now();
  const G = opts.imagesPerGroup ?? DEFAULT_SCORING.imagesPerGroup;
  const maxRows = opts.rowsPerBatch ?? DEFAULT_SCORING.rowsPerBatch;
  if (!(Number.isInteger(G) && G >= 1)) throw new Error(`retrieval scoring: imagesPerGroup must be a positive integer, got ${G}`);
  if (!(Number.isInteger(maxRows) && maxRows >= 1)) throw new Error(`retrieval scoring: rowsPerBatch must be a positive integer, got ${maxRows}`);
  const special = opts.specialIds ?? BERT_BASE_CASED_IDS;
  const { img, txtIds, imgIds } = gallery;
  const ni = imgIds.length;
  const nt = txtIds.length;
  const scores = new Float32Array(nt * ni);
  const firstCaption = new Map<string, string>();
  for (const t of txtIds) if (!firstCaption.has(gallery.txt2img.get(t)!)) firstCaption.set(gallery.txt2img.get(t)!, t);
  // Columns ordered by region count, captions by length: less padding per forward pass.
  const imgOrder = imgIds.map((_, j) => j).sort((a, b) => img.nbb(imgIds[a]) - img.nbb(imgIds[b]) || a - b);
  const captions = txtIds.map((id) => captionIds(gallery.txt, id, special));
  const txtOrder = txtIds.map((_, t) => t).sort((a, b) => captions[a].length - captions[b].length || a - b);
  const scratch = new PairScratch();
  let passes = 0;
  let done = 0;
  for (let g0 = 0; g0 < ni; g0 += G) {
    const group = imgOrder.slice(g0, g0 + G);
    const feats = group.map((j) => readImage(img, imgIds[j], firstCaption.get(imgIds[j]) ?? imgIds[j]));
    // Split the group when a single caption against it would exceed the row budget.
    for (let s0 = 0; s0 < group.length; s0 += maxRows) {
      const sub = group.slice(s0, s0 + maxRows);
      const block = imageBlock(feats.slice(s0, s0 + maxRows), img.imgDim, scratch);
      const perPass = Math.max(1, Math.floor(maxRows / sub.length));
      for (let c0 = 0; c0 < nt; c0 += perPass) {
        const caps = txtOrder.slice(c0, c0 + perPass);
        const s = await scoreRows(runner, crossPairBatch(caps.map((t) => captions[t]), block, scratch));
        passes++;
        caps.forEach((t, c) => sub.forEach((j, g) => (scores[t * ni + j] = s[c * sub.length + g])));
        done += caps.length * sub.length;
        opts.onProgress?.(done, nt * ni);
      }
    }
  }
  return { txtIds, imgIds, scores, seconds: (performance.now() - t0) / 1000, forwardPasses: passes, pairs: nt * ni };
}

export interface RetrievalEvaluation {
  metrics: RetrievalMetrics;
  /** 0-based rank of each caption's image (gallery.txtIds order) and of each image's best caption (gallery.imgIds order). */
  ranks: { imageRanks: number[]; textRanks: number[] };
  captions: number;
  images: number;
  pairs: number;
  seconds: number;
  pairsPerSecond: number;
}

/** Score the whole gallery and compute R@K both ways. */
export async function evaluateRetrieval(runner: UniterRunner, gallery: Gallery, opts: ScoringOptions = {}): Promise<RetrievalEvaluation> {
  const m = await scoreGallery(runner, gallery, opts);
  const ranks = retrievalRanks(m, gallery.txt2img);
  return {
    metrics: metricsFromRanks(ranks),
    ranks,
    captions: m.txtIds.length,
    images: m.imgIds.length,
    pairs: m.pairs,
    seconds: m.seconds,
    pairsPerSecond: m.pairs / Math.max(m.seconds, 1e-9),
  };
}

// ---------------------------------------------------------------------------------------------
// Model weights

/**
 * Checkpoint surgery for retrieval: rank_output := itm_output row 1 when the checkpoint has an
 * ITM head but no rank_output (a pre-trained model: fine-tuning start and zero-shot scoring).
 * A checkpoint that already has rank_output (a fine-tuned retrieval model) keeps it. The
 * official scripts differ only for such checkpoints: the trainers re-initialise rank_output
 * unconditionally, and inf_itm.py's test `'rank_output' not in checkpoint` looks for a key that
 * never exists (keys are 'rank_output.weight'...), so it re-initialises fine-tuned models too.
 * Without itm_output, rank_output keeps its fresh initialisation (the official code would copy
 * a freshly initialised itm_output row: equally random).
 */
export function retrievalHooks(record?: (from: RankOutputSource) => void): SurgeryHooks {
  return {
    adaptSource(source) {
      const hasItm = source.has('itm_output.weight') && source.has('itm_output.bias');
      const hasRank = source.has('rank_output.weight') && source.has('rank_output.bias');
      if (hasItm && !hasRank) initRankOutput(source);
      record?.(hasRank ? 'checkpoint' : hasItm ? 'itm_output' : 'fresh');
    },
  };
}

/** Where the rank_output weights came from. */
export type RankOutputSource = 'itm_output' | 'checkpoint' | 'fresh';

// ---------------------------------------------------------------------------------------------
// Training

export type RetrievalMode = 'hard_negatives' | 'plain';

export interface RetrievalTrainOptions {
  mode: RetrievalMode;
  /** Captions per micro-step (official: HN train_batch_size 8 by accumulation; plain 40 per GPU). */
  captionsPerStep: number;
  /** Hard negatives: negatives sampled per caption and per image before mining (official 399). */
  negativeSize: number;
  /** Hard negatives: hardest negatives kept per direction (official 31). */
  hardNegSize: number;
  seed: number;
  /** Training captions with more wordpieces are left out (official 60). */
  maxTxtLen: number;
  scoring?: ScoringOptions;
  specialIds?: SpecialIds;
}

/** Official hard-negative configuration (train-itm-*-hn.json). */
export const OFFICIAL_HARD_NEGATIVES = { mode: 'hard_negatives', captionsPerStep: 8, negativeSize: 399, hardNegSize: 31 } as const;

/**
 * Sizes for the synthetic world on 2 cores: 8 captions per step as the official recipe, but 15
 * sampled and 3 kept negatives per direction (a step scores 256 pairs and trains on 64 rows,
 * instead of 6400 and 512), which keeps a default run to a few minutes.
 */
export const WORLD_HARD_NEGATIVES = { mode: 'hard_negatives', captionsPerStep: 8, negativeSize: 15, hardNegSize: 3 } as const;

/**
 * The training captions and their per-step draws: shuffled every epoch, `captionsPerStep` per
 * micro-step, the last incomplete group dropped (official DataLoader shuffle + drop_last). The
 * negatives of a step come from an Rng keyed by (seed, epoch, position), so a resumed run draws
 * the same ones.
 */
export class RetrievalCaptionStream implements TrainBatchSource {
  readonly ids: readonly string[];
  readonly dropped: number;
  private readonly sampler: ExampleCountSampler;
  private plainDataset: ItmRankDataset | null = null;

  constructor(
    private readonly split: RetrievalSplit,
    private readonly opts: Pick<RetrievalTrainOptions, 'captionsPerStep' | 'seed' | 'maxTxtLen' | 'specialIds'>,
  ) {
    const all = split.txtIds ? [...split.txtIds] : split.txt.ids();
    const kept = all.filter((id) => opts.maxTxtLen < 0 || split.txt.len(id) <= opts.maxTxtLen);
    this.ids = kept;
    this.dropped = all.length - kept.length;
    if (!(Number.isInteger(opts.captionsPerStep) && opts.captionsPerStep >= 1)) throw new Error(`retrieval: captionsPerStep must be a positive integer, got ${opts.captionsPerStep}`);
    if (kept.length < opts.captionsPerStep) throw new Error(`retrieval: ${kept.length} training captions (after the max_txt_len ${opts.maxTxtLen} filter) cannot fill one step of ${opts.captionsPerStep}`);
    const lens = kept.map((id) => split.txt.len(id));
    this.sampler = new ExampleCountSampler({ txtLens: () => lens, lens: () => lens }, { batchSize: opts.captionsPerStep, shuffle: true, dropLast: true }, new Rng(opts.seed, 'sampler', 'retrieval'));
  }

  /** The next step's captions and the Rng its negatives are drawn from. */
  nextCaptions(): { ids: string[]; rng: Rng } {
    const { indices, rng } = this.nextIndices();
    return { ids: indices.map((i) => this.ids[i]), rng };
  }

  private nextIndices(): { indices: number[]; rng: Rng } {
    const indices = this.sampler.next();
    return { indices, rng: new Rng(this.opts.seed, 'retrieval-negatives', this.sampler.epoch, this.sampler.position - 1) };
  }

  /** Plain fine-tuning batch: per caption (pos), (neg image), (neg caption); sample_size 3. */
  next(): { batch: Batch; examples: number } {
    // The dataset's ids are this stream's ids, so sampler indices address it directly.
    this.plainDataset ??= new ItmRankDataset(this.split.txt, this.split.img, { ids: this.ids, negSize: 1, specialIds: this.opts.specialIds });
    const ds = this.plainDataset;
    const { indices, rng } = this.nextIndices();
    return { batch: ds.collate(indices.map((i) => ds.get(i, rng))), examples: indices.length };
  }

  state(): unknown {
    return this.sampler.state();
  }

  restore(state: unknown): void {
    this.sampler.restore(state as ReturnType<ExampleCountSampler['state']>);
  }
}

/** Indices of the k largest scores (earlier index first on ties). */
export function topKIndices(scores: ArrayLike<number>, k: number): number[] {
  if (!(Number.isInteger(k) && k >= 0 && k <= scores.length)) throw new Error(`topKIndices: k must be in 0..${scores.length}, got ${k}`);
  const order = Array.from({ length: scores.length }, (_, i) => i);
  order.sort((a, b) => scores[b] - scores[a] || a - b);
  return order.slice(0, k);
}

/** What mining chose for one caption of a step (names, for inspection and tests). */
export interface MinedCaption {
  caption: string;
  /** Its image first, then the hardest sampled images (best-scored first). */
  images: string[];
  /** The caption itself first, then the hardest sampled captions of other images. */
  captions: string[];
}

/** The rows of one hard-negative step: per caption (1 + hardNegSize) rows in each direction. */
export interface MinedStep {
  chosen: MinedCaption[];
  /** caption -> images rows, grouped per caption, positive first. */
  textRows: SeqRow[];
  /** image -> captions rows, grouped per caption, positive first. */
  imageRows: SeqRow[];
}

/**
 * Hard-negative mining and training (official UniterForImageTextRetrievalHardNeg with the
 * ItmRankDatasetHardNegFrom{Text,Image} datasets): per caption, score it against its image and
 * `negativeSize` sampled images in eval mode (no dropout, no gradients), keep the
 * `hardNegSize` best-scored; likewise its image against the caption and `negativeSize`
 * sampled captions of other images. Then one training pass per direction over all the step's
 * rows; the two losses and their gradients are summed.
 */
export class HardNegativeMiner {
  private readonly scratch = new PairScratch();
  private readonly special: SpecialIds;
  private readonly txt2img = new Map<string, string>();
  private readonly img2txts = new Map<string, string[]>();
  private readonly imagePool: string[];

  constructor(
    private readonly split: RetrievalSplit,
    private readonly stream: RetrievalCaptionStream,
    private readonly opts: RetrievalTrainOptions,
  ) {
    this.special = opts.specialIds ?? BERT_BASE_CASED_IDS;
    const { negativeSize: N, hardNegSize: K } = opts;
    if (!(Number.isInteger(K) && K >= 1)) throw new Error(`retrieval: hardNegSize must be a positive integer, got ${K}`);
    if (!(Number.isInteger(N) && N >= K)) throw new Error(`retrieval: negativeSize (${N}) must be an integer >= hardNegSize (${K})`);
    // Official pools: every image of the txt_db (img2txts keys) and the kept captions.
    for (const id of split.txtIds ?? split.txt.ids()) {
      const im = captionImage(split.txt, id);
      this.txt2img.set(id, im);
      const l = this.img2txts.get(im);
      if (l) l.push(id);
      else this.img2txts.set(im, [id]);
    }
    this.imagePool = [...this.img2txts.keys()];
    if (this.imagePool.length - 1 < N) throw new Error(`retrieval: negativeSize ${N} needs at least ${N + 1} training images, the split has ${this.imagePool.length}`);
  }

  private image(fname: string, captionId: string): ImageFeatures {
    return readImage(this.split.img, fname, captionId);
  }

  /**
   * Mine both directions for the given captions, drawing the sampled negatives from `rng` (per
   * caption: its negative images, then its negative captions). Each direction's candidates of
   * all captions are scored together, `rowsPerBatch` pairs per pass.
   */
  async mine(runner: UniterRunner, ids: readonly string[], rng: Rng): Promise<MinedStep> {
    const K = this.opts.hardNegSize;
    const S = this.opts.negativeSize + 1;
    const drawn = ids.map((id) => {
      const gt = this.txt2img.get(id);
      if (gt === undefined) throw new Error(`retrieval: caption '${id}' is not in the training split`);
      const images = [gt, ...sampleNegatives(this.imagePool, [gt], this.opts.negativeSize, rng, `retrieval caption '${id}': negative images`)];
      const captions = [id, ...sampleNegatives(this.stream.ids, this.img2txts.get(gt)!, this.opts.negativeSize, rng, `retrieval caption '${id}': negative captions of image '${gt}'`)];
      return { id, images, captions };
    });
    // Each image and caption is read once per step even when drawn for several captions.
    const feats = new Map<string, ImageFeatures>();
    const feat = (f: string, by: string) => {
      let v = feats.get(f);
      if (!v) feats.set(f, (v = this.image(f, by)));
      return v;
    };
    const tokens = new Map<string, number[]>();
    const tok = (t: string) => {
      let v = tokens.get(t);
      if (!v) tokens.set(t, (v = captionIds(this.split.txt, t, this.special)));
      return v;
    };
    const rows = this.opts.scoring?.rowsPerBatch ?? DEFAULT_SCORING.rowsPerBatch;
    const imgDim = this.split.img.imgDim;
    const textPairs = drawn.flatMap((d) => d.images.map((f) => ({ caption: tok(d.id), image: feat(f, d.id) })));
    const imagePairs = drawn.flatMap((d) => d.captions.map((t) => ({ caption: tok(t), image: feat(d.images[0], d.id) })));
    const textScores = await scorePairs(runner, textPairs, imgDim, rows, this.scratch);
    const imageScores = await scorePairs(runner, imagePairs, imgDim, rows, this.scratch);

    const out: MinedStep = { chosen: [], textRows: [], imageRows: [] };
    drawn.forEach((d, c) => {
      const hardImgs = [0, ...topKIndices(textScores.subarray(c * S + 1, (c + 1) * S), K).map((j) => j + 1)];
      const hardTxts = [0, ...topKIndices(imageScores.subarray(c * S + 1, (c + 1) * S), K).map((j) => j + 1)];
      for (const j of hardImgs) {
        const im = feat(d.images[j], d.id);
        out.textRows.push({ inputIds: tok(d.id), imgFeat: im.feat, imgPosFeat: im.pos, nbb: im.nbb });
      }
      const own = feat(d.images[0], d.id);
      for (const j of hardTxts) out.imageRows.push({ inputIds: tok(d.captions[j]), imgFeat: own.feat, imgPosFeat: own.pos, nbb: own.nbb });
      out.chosen.push({ caption: d.id, images: hardImgs.map((j) => d.images[j]), captions: hardTxts.map((j) => d.captions[j]) });
    });
    return out;
  }

  /** The trainer's micro-step: the next captions, mined, then one training pass per direction. */
  async microStep(runner: UniterRunner, dropout: DropoutSeed): Promise<MicroStep> {
    const { ids, rng } = this.stream.nextCaptions();
    const mined = await this.mine(runner, ids, rng);
    const sampleSize = this.opts.hardNegSize + 1;
    const grads = new Map<string, Float32Array>();
    let loss = 0;
    let tokens = 0;
    // Dropout streams 2s and 2s+1 keep the two passes of micro-step s distinct from every other pass.
    for (const [k, rows] of [mined.textRows, mined.imageRows].entries()) {
      const { batch } = collateRows(rows);
      const out = await runner.run('retrieval', batch, { training: true, grads: true, sampleSize, dropout: { seed: dropout.seed, step: 2 * dropout.step + k } });
      loss += Number(out.get('loss')!.data[0]);
      const attn = batch.get('attn_masks')!;
      tokens += attn.shape[0] * attn.shape[1];
      for (const [name, v] of out) {
        if (!name.startsWith('grad.')) continue;
        const g = v.data as Float32Array;
        const prev = grads.get(name.slice(5));
        if (!prev) grads.set(name.slice(5), g);
        else for (let i = 0; i < g.length; i++) prev[i] += g[i];
      }
    }
    return { loss, grads, tokens };
  }
}

// ---------------------------------------------------------------------------------------------
// The task for `uniter finetune` / `uniter evaluate`

/**
 * Evaluate one split: metrics (recalls, gallery size, speed) and a results file with each
 * caption's ground-truth image rank and each image's best ground-truth caption rank (0-based).
 */
export async function evaluateRetrievalSplit(runner: UniterRunner, split: RetrievalSplit, splitName: EvalSplit, tag: string, opts: ScoringOptions & { maxImages?: number } = {}): Promise<Evaluation> {
  const gallery = buildGallery(split, { maxImages: opts.maxImages });
  const ev = await evaluateRetrieval(runner, gallery, opts);
  const results = {
    metrics: ev.metrics,
    captions: ev.captions,
    images: ev.images,
    seconds: ev.seconds,
    pairs_per_second: ev.pairsPerSecond,
    image_rank: Object.fromEntries(gallery.txtIds.map((t, i) => [t, ev.ranks.imageRanks[i]])),
    text_rank: Object.fromEntries(gallery.imgIds.map((im, j) => [im, ev.ranks.textRanks[j]])),
  };
  return {
    metrics: { [splitName]: { ...ev.metrics } },
    examples: { [splitName]: ev.captions },
    files: [{ name: `retrieval_${splitName}_results_${tag}.json`, content: JSON.stringify(results) + '\n' }],
  };
}

/**
 * Gallery cap of the validations during training on the synthetic world: the default world's val
 * and test splits have 200 images and 1000 captions each (200k pairs: 10+ minutes per split on
 * 2 cores with the tiny model); the first 50 images and their 250 captions (12.5k pairs) keep a
 * validation to about a minute. `uniter evaluate` scores whole splits.
 */
export const WORLD_EVAL_MAX_IMAGES = 50;

export interface RetrievalTaskOptions {
  hardNegatives: boolean;
  negativeSize: number;
  hardNegSize: number;
  /** Images per scoring block (official inf_minibatch_size). */
  imagesPerGroup: number;
  /** Cap on val/test gallery images during training (null: the whole split). */
  evalMaxImages: number | null;
}

/**
 * Config-file options (official names where the official configs have them) and their defaults
 * for the synthetic world. The settings' batch sizes count what the official retrieval configs
 * count: train_batch_size = captions per micro-step (HN 8, plain 40); val_batch_size = (caption,
 * image) pairs per scoring pass (officially one caption x inf_minibatch_size images).
 */
export const RETRIEVAL_OPTION_DEFAULTS = {
  hard_negatives: true,
  negative_size: WORLD_HARD_NEGATIVES.negativeSize,
  hard_neg_size: WORLD_HARD_NEGATIVES.hardNegSize,
  inf_minibatch_size: DEFAULT_SCORING.imagesPerGroup,
  eval_max_images: WORLD_EVAL_MAX_IMAGES,
} as const;

export function retrievalOptions(options: TaskOptionValues, source: string): RetrievalTaskOptions {
  const o = { ...RETRIEVAL_OPTION_DEFAULTS, ...options } as Record<string, unknown>;
  const posInt = (k: string): number => {
    const v = o[k];
    if (!(typeof v === 'number' && Number.isInteger(v) && v >= 1)) throw new Error(`${source}: retrieval option '${k}' must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  if (typeof o.hard_negatives !== 'boolean') throw new Error(`${source}: retrieval option 'hard_negatives' must be true or false, got ${JSON.stringify(o.hard_negatives)}`);
  const r: RetrievalTaskOptions = {
    hardNegatives: o.hard_negatives,
    negativeSize: posInt('negative_size'),
    hardNegSize: posInt('hard_neg_size'),
    imagesPerGroup: posInt('inf_minibatch_size'),
    evalMaxImages: o.eval_max_images === null ? null : posInt('eval_max_images'),
  };
  if (r.hardNegatives && r.hardNegSize > r.negativeSize) throw new Error(`${source}: retrieval option 'hard_neg_size' (${r.hardNegSize}) exceeds 'negative_size' (${r.negativeSize})`);
  return r;
}

export const RETRIEVAL_WORLD_STEPS = 200;
/** The pre-training peak rate (the official 5e-5 is for base models at 5000 steps). */
export const RETRIEVAL_WORLD_LR = 5e-4;

/**
 * Defaults on the synthetic world (tiny model, 2 cores): the official hard-negative recipe's
 * shape (8 captions per step, AdamW (0.9, 0.98), weight decay 0.01, clip 2.0, 10% warm-up,
 * linear decay) with fewer sampled negatives (WORLD_HARD_NEGATIVES) and steps; validation
 * twice on a gallery of WORLD_EVAL_MAX_IMAGES images.
 */
export function retrievalDefaultSettings(steps = RETRIEVAL_WORLD_STEPS): FinetuneSettings {
  const every = Math.max(1, Math.round(steps / 2));
  return recipe(steps, {
    trainBatchTokens: WORLD_HARD_NEGATIVES.captionsPerStep,
    valBatchSize: DEFAULT_SCORING.rowsPerBatch,
    learningRate: RETRIEVAL_WORLD_LR,
    validEvery: every,
    saveEvery: every,
  });
}

export const retrievalTask: TaskDefinition = {
  name: 'retrieval',
  summary: 'image-text retrieval (hinge on rank scores, hard negatives; IR/TR R@1/5/10)',
  worldPrefix: 'itm',
  optionDefaults: { ...RETRIEVAL_OPTION_DEFAULTS },
  defaultSettings: retrievalDefaultSettings,
  checkOptions: (options, source) => void retrievalOptions(options, source),
  plan: (base) => ({ cfg: base, head: 'retrieval', headOptions: {}, hooks: retrievalHooks() }),
  // train_batch_size counts captions, each trained on sampleSize rows; val_batch_size counts rows.
  batchRows(settings, options) {
    const o = retrievalOptions(options, 'retrieval options');
    return { train: settings.trainBatchTokens * (o.hardNegatives ? o.hardNegSize + 1 : 3), val: settings.valBatchSize };
  },
  job({ data, settings, options }) {
    const o = retrievalOptions(options, 'retrieval options');
    if (data.train.length !== 1) throw new Error(`retrieval: expected one training txt_db, got ${data.train.length}`);
    const train: RetrievalSplit = { txt: data.train[0].txt, img: data.train[0].img };
    const scoring: ScoringOptions = { imagesPerGroup: o.imagesPerGroup, rowsPerBatch: settings.valBatchSize };
    const captionsPerStep = settings.trainBatchTokens;
    const stream = new RetrievalCaptionStream(train, { captionsPerStep, seed: settings.seed, maxTxtLen: settings.maxTxtLen });
    const trainOpts: RetrievalTrainOptions = {
      mode: o.hardNegatives ? 'hard_negatives' : 'plain',
      captionsPerStep,
      negativeSize: o.negativeSize,
      hardNegSize: o.hardNegSize,
      seed: settings.seed,
      maxTxtLen: settings.maxTxtLen,
      scoring,
    };
    const miner = o.hardNegatives ? new HardNegativeMiner(train, stream, trainOpts) : null;
    const evalOpts = { ...scoring, maxImages: o.evalMaxImages ?? undefined };
    return {
      name: 'retrieval',
      graphTask: 'retrieval',
      graphOptions: { sampleSize: o.hardNegatives ? o.hardNegSize + 1 : 3 },
      isHeadParam: (n) => n.startsWith('rank_output.'),
      selectMetric: 'r_mean',
      train: stream,
      microStep: miner ? (runner, dropout) => miner.microStep(runner, dropout) : undefined,
      async evaluate(runner, { final, tag }) {
        const out: Evaluation = { metrics: {}, files: [] };
        // As the official trainers: val at every validation, val and test at the end.
        for (const split of (final && data.test ? ['val', 'test'] : ['val']) as EvalSplit[]) {
          const s = splitOf(data, split, 'retrieval');
          const ev = await evaluateRetrievalSplit(runner, { txt: s.txt, img: s.img }, split, tag, evalOpts);
          Object.assign(out.metrics, ev.metrics);
          out.examples = { ...out.examples, ...ev.examples };
          out.files!.push(...(ev.files ?? []));
        }
        return out;
      },
    };
  },
  /**
   * The whole split (the official protocol: every caption against every image of the split). A
   * pre-trained model without rank_output is scored zero-shot: rank_output := itm_output row 1.
   */
  evaluate(runner, ctx) {
    if (!runner.params.has('rank_output.weight') && runner.params.has('itm_output.weight')) initRankOutput(runner.params);
    const o = retrievalOptions(ctx.options ?? {}, 'retrieval options');
    const s = splitOf(ctx.data, ctx.split, 'retrieval');
    return evaluateRetrievalSplit(runner, { txt: s.txt, img: s.img }, ctx.split, ctx.tag, { rowsPerBatch: ctx.batchSize, imagesPerGroup: o.imagesPerGroup, onProgress: ctx.onProgress });
  },
};
