/**
 * Referring expression comprehension (official `model/re.py`, `data/re.py`, `train_re.py`,
 * `inf_re.py`; spec 4.6).
 *
 * Input `[CLS] expression [SEP]` + the image's regions; `re_output` (Linear(H -> 1), or with
 * mlp = 2 Linear -> GELU -> LayerNorm -> Linear) scores every region's output, padded regions
 * at -1e4. Training uses the ground-truth boxes (one region per annotation, in the image's
 * `ann_ids` order), target = the referred annotation's index, loss = cross-entropy over regions
 * SUMMED over the batch (official "cls" loss; option train_loss "rank" gives the official hinge
 * with margin 0.2 on sigmoid scores against the hardest other region in hard_ratio 0.3 of the
 * examples and a random other real region in the rest, also summed), batches of a fixed number of examples (official
 * 128) taken in txt_db order: the official per-epoch shuffle never reaches the dataset's id
 * list, so by default this loader does not shuffle either (option `shuffle` turns it on).
 *
 * Evaluation: the predicted region is the argmax; its pixel box comes back from the 7-d position
 * feature and the image size in images.json; a prediction is right when its IoU with the
 * expression's `bbox` exceeds 0.5 (official inclusive-pixel IoU, iou.ts). Reported on the
 * ground-truth boxes and, when a detection store is given, on detected boxes (the paper's "d"
 * numbers, e.g. RefCOCO+ val^d in the Meta-Sum).
 *
 * Side files of an RE txt_db (official ReTxtTokLmdb): images.json [{id, ann_ids, width,
 * height, file_name?, det_file_name?}], refs.json [{ref_id, sent_ids, ...}] (example order).
 */
import type { Batch, ImageSource, TextRecord, TextSource } from '../data/types.js';
import { bool, i64, toNumbers } from '../engine/host.js';
import { ReDataset, type ReImageInfo } from '../data/datasets.js';
import type { ReExample } from '../data/collate.js';
import { ExampleCountSampler, TaskLoader } from '../data/sampler.js';
import type { SpecialIds } from '../data/masking.js';
import type { UniterRunner } from '../model/runner.js';
import { Rng } from '../util/rng.js';
import { argmaxRows } from './metrics.js';
import { computeIoU, isCorrectGrounding, regionBoxXywh, type XywhBox } from './iou.js';
import { loaderSource, splitOf, type EvalSplit, type SplitData, type TaskData, type TaskDefinition, type TaskOptionValues } from './task-registry.js';
import type { Evaluation, FinetuneSettings, TrainBatchSource } from './trainer.js';
import { recipe } from './defaults.js';

export type ReBoxes = 'gt' | 'det';
export type ReGraphTask = 're_mlp1' | 're_mlp2';

/** One image of images.json, checked. */
export interface ReImageEntry extends ReImageInfo {
  id: number;
  width: number;
  height: number;
  /** Image key in the GT-box store (default: the official visual_grounding_coco_gt_{id:012}.npz). */
  file_name?: string;
  /** Image key in the detection store (default: the official visual_grounding_det_coco_{id:012}.npz). */
  det_file_name?: string;
}

/** Parse images.json (a list of image entries); errors name the source, entry and field. */
export function parseReImages(raw: unknown, source: string): Map<number, ReImageEntry> {
  if (!Array.isArray(raw)) throw new Error(`${source}: images.json must be a list of {id, ann_ids, width, height}, got ${raw === undefined ? 'nothing (file missing)' : typeof raw}`);
  const out = new Map<number, ReImageEntry>();
  raw.forEach((e: unknown, k) => {
    const where = `${source}: images.json entry ${k}`;
    if (!e || typeof e !== 'object') throw new Error(`${where}: expected an object`);
    const o = e as Record<string, unknown>;
    const id = o.id;
    if (typeof id !== 'number' || !Number.isInteger(id)) throw new Error(`${where}: field 'id': expected an integer image id, got ${JSON.stringify(id)}`);
    for (const f of ['width', 'height'] as const) {
      if (typeof o[f] !== 'number' || !((o[f] as number) > 0)) throw new Error(`${where} (image ${id}): field '${f}': expected a positive number of pixels, got ${JSON.stringify(o[f])}`);
    }
    if (!Array.isArray(o.ann_ids) || !o.ann_ids.every((a) => typeof a === 'number' && Number.isInteger(a))) throw new Error(`${where} (image ${id}): field 'ann_ids': expected a list of integer annotation ids`);
    for (const f of ['file_name', 'det_file_name'] as const) {
      if (o[f] !== undefined && (typeof o[f] !== 'string' || !o[f])) throw new Error(`${where} (image ${id}): field '${f}': expected an image file name, got ${JSON.stringify(o[f])}`);
    }
    if (out.has(id)) throw new Error(`${where}: image id ${id} appears twice`);
    out.set(id, { id, width: o.width as number, height: o.height as number, ann_ids: o.ann_ids as number[], file_name: o.file_name as string | undefined, det_file_name: o.det_file_name as string | undefined });
  });
  return out;
}

/**
 * Example order of the official ReDetectFeatTxtTokDataset: refs.json's refs in order, each
 * ref's sent_ids in order (only those in the txt_db). Without refs.json: the txt_db's order.
 */
export function reExampleIds(txt: TextSource, refs: unknown, source: string): string[] {
  if (refs === undefined) return txt.ids();
  if (!Array.isArray(refs)) throw new Error(`${source}: refs.json must be a list of refs`);
  const present = new Set(txt.ids());
  const ids: string[] = [];
  refs.forEach((r: unknown, k) => {
    const sents = (r as { sent_ids?: unknown } | null)?.sent_ids;
    if (!Array.isArray(sents)) throw new Error(`${source}: refs.json entry ${k}: field 'sent_ids': expected a list`);
    for (const s of sents) if (present.has(String(s))) ids.push(String(s));
  });
  return ids;
}

/** Image key of an expression's image in the GT or detection store. */
export function reImageName(images: ReadonlyMap<number, ReImageEntry>, boxes: ReBoxes): (imageId: number, rec: TextRecord) => string {
  const pad = (n: number) => String(n).padStart(12, '0');
  return (imageId, rec) => {
    const info = images.get(imageId);
    if (!info) throw new Error(`re record '${rec.id}': field 'image_id': image ${imageId} is not in images.json`);
    if (boxes === 'gt') return info.file_name ?? `visual_grounding_coco_gt_${pad(imageId)}.npz`;
    return info.det_file_name ?? `visual_grounding_det_coco_${pad(imageId)}.npz`;
  };
}

/** The expression's ground-truth box (record field `bbox`, COCO xywh pixels). */
function targetBox(rec: TextRecord): XywhBox {
  const b = rec.bbox;
  if (!Array.isArray(b) || b.length !== 4 || !b.every((v) => typeof v === 'number' && Number.isFinite(v))) {
    throw new Error(`re record '${rec.id}': field 'bbox': expected [x, y, w, h] in pixels, got ${JSON.stringify(b)}`);
  }
  return b as unknown as XywhBox;
}

function imageIdOf(rec: TextRecord): number {
  const v = typeof rec.image_id === 'bigint' ? Number(rec.image_id) : rec.image_id;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new Error(`re record '${rec.id}': field 'image_id': expected an integer, got ${JSON.stringify(rec.image_id)}`);
  return v;
}

/** The RE head variant of a set of parameters. */
export function reGraphTaskOf(params: ReadonlyMap<string, unknown>): ReGraphTask {
  if (params.has('re_output.weight')) return 're_mlp1';
  if (params.has('re_output.0.weight')) return 're_mlp2';
  throw new Error("the model has no re_output head ('re_output.weight' or 're_output.0.weight'): not a referring-expression model");
}

// ---------------------------------------------------------------------------------------------
// Evaluation

export interface RePrediction {
  sent_id: string;
  /** Predicted region index. */
  region: number;
  pred_box: [number, number, number, number];
  tgt_box: XywhBox;
  iou: number;
}

export interface ReEvaluation {
  /** Fraction of expressions whose predicted box has IoU > 0.5 with the target. */
  acc: number;
  examples: number;
  predictions: RePrediction[];
  seconds: number;
}

export interface ReEvalInput {
  txt: TextSource;
  /** The store of the boxes evaluated on (GT boxes or detections). */
  img: ImageSource;
  boxes: ReBoxes;
  images: ReadonlyMap<number, ReImageEntry>;
  /** Example order (default: the txt_db's). */
  ids?: readonly string[];
  /** Expressions per forward pass (official val_batch_size 128-256). */
  batchSize: number;
  specialIds?: SpecialIds;
  onProgress?: (done: number, total: number) => void;
}

/** Score every expression against the regions of its image and measure grounding accuracy. */
export async function evaluateRe(runner: UniterRunner, input: ReEvalInput): Promise<ReEvaluation> {
  const t0 = performance.now();
  const graphTask = reGraphTaskOf(runner.params);
  if (!(Number.isInteger(input.batchSize) && input.batchSize >= 1)) throw new Error(`re evaluation: batchSize must be a positive integer, got ${input.batchSize}`);
  // 'det' mode reads no targets: the same rows serve both box sets, scored by IoU only.
  const ds = new ReDataset(input.txt, input.img, { images: input.images, boxes: 'det', imgFname: reImageName(input.images, input.boxes), ids: input.ids, specialIds: input.specialIds });
  if (ds.ids.length === 0) throw new Error('re evaluation: the split has no expressions');
  const predictions: RePrediction[] = [];
  let right = 0;
  for (let b0 = 0; b0 < ds.ids.length; b0 += input.batchSize) {
    const examples: ReExample[] = [];
    for (let i = b0; i < Math.min(ds.ids.length, b0 + input.batchSize); i++) examples.push(ds.get(i));
    const batch = ds.collate(examples);
    const out = await runner.run(graphTask, batch, { training: false, grads: false, inference: true });
    input.onProgress?.(b0 + examples.length, ds.ids.length);
    const scores = out.get('scores');
    if (!scores) throw new Error(`re evaluation: graph '${graphTask}' returned no 'scores'`);
    const nMax = scores.shape[1];
    const best = argmaxRows(scores.data as Float32Array, nMax);
    examples.forEach((ex, k) => {
      const rec = input.txt.get(ds.ids[b0 + k]);
      const top = (scores.data as Float32Array)[k * nMax + best[k]];
      if (!Number.isFinite(top)) throw new Error(`re record '${rec.id}': region scores are not finite (${top})`);
      // Padded slots score -1e4; only real regions scoring below that could lose to padding.
      if (best[k] >= ex.nbb) throw new Error(`re record '${rec.id}': the best-scored slot ${best[k]} is padding (the image has ${ex.nbb} regions)`);
      const info = input.images.get(imageIdOf(rec))!;
      const pred = regionBoxXywh(ex.imgPosFeat, best[k], info.width, info.height);
      const tgt = targetBox(rec);
      const iou = computeIoU(pred, tgt);
      if (isCorrectGrounding(iou)) right++;
      predictions.push({ sent_id: rec.id, region: best[k], pred_box: pred, tgt_box: tgt, iou });
    });
  }
  return { acc: right / predictions.length, examples: predictions.length, predictions, seconds: (performance.now() - t0) / 1000 };
}

// ---------------------------------------------------------------------------------------------
// Training data

export interface ReTrainInput {
  txt: TextSource;
  /** The GT-box store (one region per annotation, in ann_ids order). */
  img: ImageSource;
  images: ReadonlyMap<number, ReImageEntry>;
  /** Example order (default: the txt_db's). */
  ids?: readonly string[];
  /** Examples per batch (official 128). */
  batchSize: number;
  /** Expressions with this many wordpieces or more are left out (official: sent_len < max_txt_len). */
  maxTxtLen: number;
  shuffle: boolean;
  seed: number;
  specialIds?: SpecialIds;
}

/** The official RE training loader: fixed-size batches of GT-box examples with targets. */
export function reTrainLoader(input: ReTrainInput): { loader: TaskLoader<ReExample>; dropped: number } {
  const all = input.ids ? [...input.ids] : input.txt.ids();
  // Official _get_sent_ids keeps sent_len < max_txt_len (strictly), unlike the other tasks' <=.
  const kept = all.filter((id) => input.maxTxtLen < 0 || input.txt.len(id) < input.maxTxtLen);
  if (kept.length === 0) throw new Error(`re training: no expression is shorter than max_txt_len ${input.maxTxtLen}`);
  const ds = new ReDataset(input.txt, input.img, { images: input.images, boxes: 'gt', imgFname: reImageName(input.images, 'gt'), ids: kept, specialIds: input.specialIds });
  const sampler = new ExampleCountSampler(ds, { batchSize: input.batchSize, shuffle: input.shuffle, dropLast: false }, new Rng(input.seed, 'sampler', 're'));
  return { loader: new TaskLoader(ds, { seed: input.seed, sampler }), dropped: all.length - kept.length };
}

// ---------------------------------------------------------------------------------------------
// The task for `uniter finetune` / `uniter evaluate`

export interface ReTaskOptions {
  mlp: 1 | 2;
  shuffle: boolean;
  /** Official train_loss: 'cls' (CE over regions) or 'rank' (hinge against one negative region). */
  trainLoss: 'cls' | 'rank';
  /** Hinge margin of the rank loss (official margin). */
  margin: number;
  /** Share of examples whose negative is the hardest region rather than a random one (official hard_ratio). */
  hardRatio: number;
}

export const RE_OPTION_DEFAULTS = { mlp: 1, shuffle: false, train_loss: 'cls', margin: 0.2, hard_ratio: 0.3 } as const;

export function reOptions(options: TaskOptionValues, source: string): ReTaskOptions {
  const o = { ...RE_OPTION_DEFAULTS, ...options } as Record<string, unknown>;
  if (o.mlp !== 1 && o.mlp !== 2) throw new Error(`${source}: re option 'mlp' must be 1 or 2 (RE head layers), got ${JSON.stringify(o.mlp)}`);
  if (typeof o.shuffle !== 'boolean') throw new Error(`${source}: re option 'shuffle' must be true or false, got ${JSON.stringify(o.shuffle)}`);
  if (o.train_loss !== 'cls' && o.train_loss !== 'rank') throw new Error(`${source}: re option 'train_loss' must be 'cls' or 'rank', got ${JSON.stringify(o.train_loss)}`);
  if (typeof o.margin !== 'number' || !(o.margin >= 0)) throw new Error(`${source}: re option 'margin' must be a number >= 0, got ${JSON.stringify(o.margin)}`);
  if (typeof o.hard_ratio !== 'number' || !(o.hard_ratio >= 0 && o.hard_ratio <= 1)) throw new Error(`${source}: re option 'hard_ratio' must be a number in [0, 1], got ${JSON.stringify(o.hard_ratio)}`);
  return { mlp: o.mlp, shuffle: o.shuffle, trainLoss: o.train_loss, margin: o.margin, hardRatio: o.hard_ratio };
}

/**
 * Adds the rank loss's negatives to an RE training batch: per example, whether it takes the hard
 * negative (probability hardRatio; the graph finds that region) and a random real region other
 * than the target (fields re_hard [B] and re_neg_ix [B]). An example with a single region has no
 * other real region: it takes the hard negative, a padded region scored -1e4, so its loss is
 * max(0, margin - sigmoid(target score)).
 */
export function addRankNegatives(batch: Batch, rng: Rng, hardRatio: number): void {
  const obj = batch.get('obj_masks');
  const tgt = batch.get('targets');
  if (!obj || !tgt) throw new Error('RE rank loss: the batch lacks obj_masks or targets');
  const [B, N] = obj.shape;
  const targets = toNumbers(tgt);
  const hard: boolean[] = [];
  const neg: number[] = [];
  for (let b = 0; b < B; b++) {
    let nbb = 0;
    for (let k = 0; k < N; k++) if (!Number(obj.data[b * N + k])) nbb++;
    const useHard = rng.uniform() < hardRatio || nbb < 2;
    // Draw among the nbb - 1 regions other than the target.
    let ix = nbb < 2 ? 0 : rng.int(nbb - 1);
    if (nbb >= 2 && ix >= targets[b]) ix++;
    hard.push(useHard);
    neg.push(ix);
  }
  batch.set('re_hard', bool([B], hard));
  batch.set('re_neg_ix', i64([B], neg));
}

/** A training source whose batches carry rank-loss negatives, drawn reproducibly per batch (resume-safe). */
function withRankNegatives(source: TrainBatchSource, seed: number, hardRatio: number): TrainBatchSource {
  let drawn = 0;
  return {
    next() {
      const b = source.next();
      addRankNegatives(b.batch, new Rng(seed, 're-rank-negatives', drawn++), hardRatio);
      return b;
    },
    state: () => ({ loader: source.state(), drawn }),
    restore(s) {
      const st = s as { loader: unknown; drawn: number };
      source.restore(st.loader);
      drawn = st.drawn;
    },
    get dropped() {
      return source.dropped;
    },
  };
}

/** The GT-box and detection stores of a split: `gtImg` + `img` (detections) when both, else `img` holds the GT boxes. */
export function reStores(split: SplitData): { gt: ImageSource; det: ImageSource | null } {
  return split.gtImg ? { gt: split.gtImg, det: split.img } : { gt: split.img, det: null };
}

function splitInfo(split: SplitData): { images: Map<number, ReImageEntry>; ids: string[] } {
  return { images: parseReImages(split.sideFile('images.json'), split.name), ids: reExampleIds(split.txt, split.sideFile('refs.json'), split.name) };
}

/** Accuracy on GT boxes and, when the split has a detection store, on detected boxes. */
export async function evaluateReSplit(runner: UniterRunner, split: SplitData, splitName: EvalSplit, tag: string, batchSize: number, onProgress?: (done: number, total: number) => void): Promise<Evaluation> {
  const { images, ids } = splitInfo(split);
  const stores = reStores(split);
  const metrics: Record<string, number> = {};
  let examples = 0;
  const files: NonNullable<Evaluation['files']> = [];
  for (const boxes of ['gt', 'det'] as const) {
    const img = boxes === 'gt' ? stores.gt : stores.det;
    if (!img) continue;
    // GT and detected boxes: two passes over the same expressions, shown as one count.
    const passes = stores.gt && stores.det ? 2 : 1;
    const offset = boxes === 'det' && stores.gt ? ids.length : 0;
    const ev = await evaluateRe(runner, { txt: split.txt, img, boxes, images, ids, batchSize, onProgress: onProgress && ((d) => onProgress(offset + d, passes * ids.length)) });
    metrics[`acc_${boxes}`] = ev.acc;
    examples = ev.examples;
    files.push({ name: `re_${splitName}_${boxes}_results_${tag}.json`, content: JSON.stringify(ev.predictions) + '\n' });
  }
  return { metrics: { [splitName]: metrics }, examples: { [splitName]: examples }, files };
}

export const RE_WORLD_STEPS = 300;
/** 5e-4 (the pre-training peak): on the default world 1e-4 (official) left val accuracy at 0.35 after 300 steps, 5e-4 reached 0.81. */
export const RE_WORLD_LR = 5e-4;

/**
 * Defaults on the synthetic world (tiny model, 2 cores): the official RefCOCO recipe's shape
 * (128 expressions per batch, summed CE, AdamW (0.9, 0.98), weight decay 0.01, clip 2.0, seed
 * 24, linear warm-up/decay) with fewer steps; validation 5 times.
 */
export function reDefaultSettings(steps = RE_WORLD_STEPS): FinetuneSettings {
  return recipe(steps, { trainBatchTokens: 128, valBatchSize: 256, learningRate: RE_WORLD_LR, seed: 24 });
}

export const reTask: TaskDefinition = {
  name: 're',
  summary: 'referring expressions (CE over regions, or train_loss "rank": hinge against the hardest/a random other region; accuracy at IoU > 0.5 on GT and detected boxes)',
  worldPrefix: 're',
  optionDefaults: { ...RE_OPTION_DEFAULTS },
  defaultSettings: reDefaultSettings,
  checkOptions: (options, source) => void reOptions(options, source),
  plan(base, options) {
    const o = reOptions(options, 're options');
    return { cfg: base, head: o.mlp === 1 ? 're_mlp1' : 're_mlp2', headOptions: {}, hooks: {} };
  },
  // The batch sizes count examples (one row each), as the official train/val_batch_size do.
  batchRows: (settings) => ({ train: settings.trainBatchTokens, val: settings.valBatchSize }),
  job({ data, settings, options }) {
    const o = reOptions(options, 're options');
    if (data.train.length !== 1) throw new Error(`re: expected one training txt_db, got ${data.train.length}`);
    const train = data.train[0];
    const { images, ids } = splitInfo(train);
    // The settings' batch sizes count examples for RE, as the official train/val_batch_size do.
    const { loader, dropped } = reTrainLoader({ txt: train.txt, img: reStores(train).gt, images, ids, batchSize: settings.trainBatchTokens, maxTxtLen: settings.maxTxtLen, shuffle: o.shuffle, seed: settings.seed });
    const loaded = loaderSource(loader);
    const source = o.trainLoss === 'rank' ? withRankNegatives(loaded, settings.seed, o.hardRatio) : loaded;
    const val = splitOf(data, 'val', 're');
    return {
      name: 're',
      graphTask: o.mlp === 1 ? 're_mlp1' : 're_mlp2',
      graphOptions: o.trainLoss === 'rank' ? { reRankMargin: o.margin } : undefined,
      isHeadParam: (n) => n.startsWith('re_output'),
      // The official RefCOCO configs validate on detected boxes; without a detection store, on GT boxes.
      selectMetric: reStores(val).det ? 'acc_det' : 'acc_gt',
      train: { next: () => source.next(), state: () => source.state(), restore: (s) => source.restore(s), dropped },
      async evaluate(runner, { final, tag }) {
        const out: Evaluation = { metrics: {}, files: [] };
        for (const split of (final && data.test ? ['val', 'test'] : ['val']) as EvalSplit[]) {
          const ev = await evaluateReSplit(runner, splitOf(data, split, 're'), split, tag, settings.valBatchSize);
          Object.assign(out.metrics, ev.metrics);
          out.examples = { ...out.examples, ...ev.examples };
          out.files!.push(...(ev.files ?? []));
        }
        return out;
      },
    };
  },
  evaluate: (runner, ctx) => evaluateReSplit(runner, splitOf(ctx.data, ctx.split, 're'), ctx.split, ctx.tag, ctx.batchSize, ctx.onProgress),
};
