/**
 * Task datasets over a `TextSource` (txt_db records) and an `ImageSource` (img_db), mirroring the
 * official `data/*.py` dataset classes: each `get(i, rng)` returns one collate input, `collate`
 * turns a list of them into the official batch, and `lens()` gives the token-bucket lengths
 * (wordpieces + regions, as the official `dataset.lens`).
 *
 * Official record fields are read as they are (spec 3.3): `input_ids` (wordpieces without
 * [CLS]/[SEP]), `img_fname`, VQA/VE `target: {labels, scores}`, NLVR2 `target` and an image pair,
 * RE `image_id`/`ann_id`, VCR `input_ids_as`/`input_ids_rs`/`qa_target`/`qar_target` with
 * `img_fname = [gt, det]`. A bad record fails with an error naming the task, record id and field.
 *
 * Randomness (masking, negatives) comes from the `Rng` the caller passes, so a loader can make it
 * reproducible per batch.
 */
import type { Rng } from '../util/rng.js';
import { type ImageSource, type TextRecord, type TextSource, type Batch, positionFeatures } from './types.js';
import {
  type ItmExample,
  type ItmRankExample,
  type MlmExample,
  type MrcExample,
  type MrmExample,
  type Nlvr2PairedExample,
  type Nlvr2TripletExample,
  type ReExample,
  type SeqRow,
  type VcrEvalExample,
  type VcrExample,
  type VcrRow,
  type VqaExample,
  itmCollate,
  itmRankCollate,
  mlmCollate,
  mrcCollate,
  mrfrCollate,
  nlvr2PairedCollate,
  nlvr2TripletCollate,
  reCollate,
  vcrCollate,
  vcrEvalCollate,
  vqaCollate,
} from './collate.js';
import {
  BERT_BASE_CASED_IDS,
  MASK_PROB,
  type MlmDecision,
  type SpecialIds,
  applyMlmMasking,
  drawImgMask,
  drawMlmMasking,
} from './masking.js';

/** What a loader needs from a dataset. */
export interface TaskDataset<E> {
  readonly task: string;
  readonly ids: readonly string[];
  /** Wordpieces per example (id2len; the max_txt_len filter key). */
  txtLens(): readonly number[];
  /** Token-bucket length per example for the current epoch (wordpieces + regions). */
  lens(): readonly number[];
  /** Re-draw per-epoch choices (ITM negatives); called by the loader before each epoch. */
  newEpoch?(rng: Rng): void;
  get(i: number, rng: Rng): E;
  collate(examples: E[]): Batch;
}

/** One image as the model consumes it (official `_get_img_feat`). */
export interface ImageFeatures {
  nbb: number;
  /** [nbb, imgDim] float32. */
  feat: Float32Array;
  /** [nbb, 7]: stored 6 box columns + area. */
  pos: Float32Array;
  /** [nbb, labelDim] when the store has them. */
  softLabels?: Float32Array;
}

function recordError(task: string, id: string, field: string, msg: string): Error {
  return new Error(`${task} record '${id}': field '${field}': ${msg}`);
}

/** Load one image, checking the array sizes against the source's dims. */
export function loadImage(img: ImageSource, fname: string, where: { task: string; id: string; field: string }, needSoftLabels = false): ImageFeatures {
  if (typeof fname !== 'string' || fname.length === 0) throw recordError(where.task, where.id, where.field, `expected an image file name, got ${JSON.stringify(fname)}`);
  if (!img.has(fname)) throw recordError(where.task, where.id, where.field, `image '${fname}' is not in the image source`);
  const rec = img.get(fname);
  const { nbb } = rec;
  const bad = (msg: string) => recordError(where.task, where.id, where.field, `image '${fname}': ${msg}`);
  if (rec.features.length !== nbb * img.imgDim) throw bad(`features have ${rec.features.length} values, expected ${nbb} x ${img.imgDim}`);
  if (rec.normBb.length !== nbb * 6) throw bad(`norm_bb has ${rec.normBb.length} values, expected ${nbb} x 6`);
  const out: ImageFeatures = { nbb, feat: rec.features, pos: positionFeatures(rec.normBb, nbb) };
  if (rec.softLabels) {
    if (rec.softLabels.length !== nbb * img.labelDim) throw bad(`soft_labels have ${rec.softLabels.length} values, expected ${nbb} x ${img.labelDim}`);
    out.softLabels = rec.softLabels;
  } else if (needSoftLabels) {
    throw recordError(where.task, where.id, where.field, `image '${fname}' has no soft_labels (needed by MRC)`);
  }
  return out;
}

/** Region count of an image without decoding it; a missing image names the record. */
function regionsOf(img: ImageSource, fname: string, where: { task: string; id: string; field: string }): number {
  if (!img.has(fname)) throw recordError(where.task, where.id, where.field, `image '${fname}' is not in the image source`);
  return img.nbb(fname);
}

/** Concatenate images along regions (NLVR2 triplet, VCR gt + det). */
function concatImages(images: readonly ImageFeatures[]): ImageFeatures {
  if (images.length === 1) return images[0];
  const nbb = images.reduce((s, im) => s + im.nbb, 0);
  const cat = (parts: Float32Array[]): Float32Array => {
    const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  };
  return { nbb, feat: cat(images.map((im) => im.feat)), pos: cat(images.map((im) => im.pos)) };
}

function rowOf(inputIds: number[], im: ImageFeatures): SeqRow {
  return { inputIds, imgFeat: im.feat, imgPosFeat: im.pos, nbb: im.nbb };
}

/** A list of token ids from a record field; `allowEmpty` for VCR answer parts only. */
function readIds(task: string, id: string, field: string, v: unknown, allowEmpty = false): number[] {
  if (v === undefined || v === null) throw recordError(task, id, field, 'missing');
  if (typeof v !== 'object' || typeof (v as ArrayLike<number>).length !== 'number') throw recordError(task, id, field, 'expected a list of token ids');
  const ids = Array.from(v as ArrayLike<number>, Number);
  if (ids.length === 0 && !allowEmpty) throw recordError(task, id, field, 'empty caption (no wordpieces)');
  for (const t of ids) if (!Number.isInteger(t) || t < 0) throw recordError(task, id, field, `invalid token id ${t}`);
  return ids;
}

function readInt(task: string, id: string, field: string, v: unknown): number {
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n)) throw recordError(task, id, field, `expected an integer, got ${JSON.stringify(v)}`);
  return n;
}

function readImageName(task: string, id: string, rec: TextRecord, index?: number): string {
  const f = rec.img_fname;
  if (index === undefined) {
    if (typeof f !== 'string' || !f) throw recordError(task, id, 'img_fname', `expected one image name, got ${JSON.stringify(f)}`);
    return f;
  }
  if (!Array.isArray(f)) throw recordError(task, id, 'img_fname', `expected a list of image names, got ${JSON.stringify(f)}`);
  const name = f[index];
  if (typeof name !== 'string' || !name) throw recordError(task, id, `img_fname[${index}]`, 'missing image name');
  return name;
}

export interface DatasetOptions {
  /** Example ids in order (default: the source's ids()). */
  ids?: readonly string[];
  /** [CLS]/[SEP]/[MASK] and v_range (txt_db meta.json); default bert-base-cased. */
  specialIds?: SpecialIds;
}

/** Shared by every dataset with one text and image source (official DetectFeatTxtTokDataset). */
abstract class TxtImgDataset<E> implements TaskDataset<E> {
  readonly ids: readonly string[];
  protected readonly special: SpecialIds;
  private txtLenCache: number[] | null = null;
  private regionCache: number[] | null = null;

  constructor(
    readonly task: string,
    readonly txt: TextSource,
    readonly img: ImageSource,
    opts: DatasetOptions = {},
  ) {
    this.ids = opts.ids ? [...opts.ids] : txt.ids();
    this.special = opts.specialIds ?? BERT_BASE_CASED_IDS;
  }

  abstract get(i: number, rng: Rng): E;
  abstract collate(examples: E[]): Batch;

  txtLens(): readonly number[] {
    this.txtLenCache ??= this.ids.map((id) => this.txt.len(id));
    return this.txtLenCache;
  }

  /** Reads every record once (for its image names) and caches the region counts. */
  lens(): readonly number[] {
    this.regionCache ??= this.ids.map((id) => this.regionCount(this.txt.get(id)));
    const t = this.txtLens();
    return this.regionCache.map((r, i) => this.textWeight() * t[i] + r);
  }

  /** Regions of the example (official lens use name2nbb of the paired image(s)). */
  protected regionCount(rec: TextRecord): number {
    return this.regions(rec, readImageName(this.task, rec.id, rec));
  }

  protected regions(rec: TextRecord, fname: string, field = 'img_fname'): number {
    return regionsOf(this.img, fname, { task: this.task, id: rec.id, field });
  }

  /** How many times the text counts in the bucket length (NLVR2 paired encodes it twice). */
  protected textWeight(): number {
    return 1;
  }

  protected record(i: number): TextRecord {
    const id = this.ids[i];
    if (id === undefined) throw new Error(`${this.task}: example index ${i} out of range (${this.ids.length} examples)`);
    return this.txt.get(id);
  }

  protected caption(rec: TextRecord): number[] {
    return readIds(this.task, rec.id, 'input_ids', rec.input_ids);
  }

  /** Official combine_inputs: [CLS] + each part + [SEP]. */
  protected withSpecials(...parts: number[][]): number[] {
    const out = [this.special.cls];
    for (const p of parts) out.push(...p, this.special.sep);
    return out;
  }

  protected image(rec: TextRecord, fname: string, field = 'img_fname', soft = false): ImageFeatures {
    return loadImage(this.img, fname, { task: this.task, id: rec.id, field }, soft);
  }
}

export interface MaskedPretrainOptions extends DatasetOptions {
  maskProb?: number;
  /** Ablation: mask text AND regions of every example (no conditional masking). */
  jointMasking?: boolean;
}

/** Official MlmDataset: text masked by random_word, image intact. */
export class MlmDataset extends TxtImgDataset<MlmExample> {
  private readonly maskProb: number;
  private readonly joint: boolean;

  constructor(txt: TextSource, img: ImageSource, opts: MaskedPretrainOptions = {}) {
    super('mlm', txt, img, opts);
    this.maskProb = opts.maskProb ?? MASK_PROB;
    this.joint = opts.jointMasking ?? false;
  }

  get(i: number, rng: Rng): MlmExample {
    const rec = this.record(i);
    const m = drawMlmMasking(this.caption(rec), rng, this.special, this.maskProb);
    const ex = this.build(rec, m.decisions);
    if (this.joint) ex.imgMask = drawImgMask(ex.nbb, rng, this.maskProb);
    return ex;
  }

  /** The example for given (drawn or recorded) masking decisions. */
  maskedExample(i: number, decisions: readonly MlmDecision[]): MlmExample {
    return this.build(this.record(i), decisions);
  }

  private build(rec: TextRecord, decisions: readonly MlmDecision[]): MlmExample {
    const { tokens, labels } = applyMlmMasking(this.caption(rec), decisions);
    const im = this.image(rec, readImageName(this.task, rec.id, rec));
    return { ...rowOf(this.withSpecials(tokens), im), txtLabels: [-1, ...labels, -1] };
  }

  collate(examples: MlmExample[]): Batch {
    return mlmCollate(examples);
  }
}

/** Official MrfrDataset: regions masked by _get_img_mask, text intact. */
export class MrfrDataset extends TxtImgDataset<MrmExample> {
  protected readonly maskProb: number;
  protected readonly joint: boolean;

  constructor(txt: TextSource, img: ImageSource, opts: MaskedPretrainOptions = {}, task = 'mrfr') {
    super(task, txt, img, opts);
    this.maskProb = opts.maskProb ?? MASK_PROB;
    this.joint = opts.jointMasking ?? false;
  }

  get(i: number, rng: Rng): MrmExample {
    const rec = this.record(i);
    const im = this.ownImage(rec);
    const ex = this.build(rec, im, drawImgMask(im.nbb, rng, this.maskProb));
    if (this.joint) this.addJointText(ex, rec, rng);
    return ex;
  }

  /** The example for a given (drawn or recorded) region mask. */
  maskedExample(i: number, imgMask: Uint8Array): MrmExample {
    const rec = this.record(i);
    return this.build(rec, this.ownImage(rec), imgMask);
  }

  private ownImage(rec: TextRecord): ImageFeatures {
    return this.image(rec, readImageName(this.task, rec.id, rec), 'img_fname', this.needsSoftLabels());
  }

  private build(rec: TextRecord, im: ImageFeatures, imgMask: Uint8Array): MrmExample {
    if (imgMask.length !== im.nbb) throw recordError(this.task, rec.id, 'img_fname', `region mask has ${imgMask.length} entries, the image has ${im.nbb} regions`);
    const ex: MrmExample = { ...rowOf(this.withSpecials(this.caption(rec)), im), imgMask };
    if (im.softLabels) (ex as MrcExample).softLabels = im.softLabels;
    return ex;
  }

  protected needsSoftLabels(): boolean {
    return false;
  }

  private addJointText(ex: MrmExample, rec: TextRecord, rng: Rng): void {
    const { decisions } = drawMlmMasking(this.caption(rec), rng, this.special, this.maskProb);
    const { tokens, labels } = applyMlmMasking(this.caption(rec), decisions);
    ex.inputIds = this.withSpecials(tokens);
    ex.txtLabels = [-1, ...labels, -1];
  }

  collate(examples: MrmExample[]): Batch {
    return mrfrCollate(examples);
  }
}

/** Official MrcDataset (serves mrc and mrckl): like MRFR plus the soft labels of the regions. */
export class MrcDataset extends MrfrDataset {
  constructor(txt: TextSource, img: ImageSource, opts: MaskedPretrainOptions = {}, task: 'mrc' | 'mrckl' = 'mrckl') {
    super(txt, img, opts, task);
  }

  protected override needsSoftLabels(): boolean {
    return true;
  }

  override get(i: number, rng: Rng): MrcExample {
    return super.get(i, rng) as MrcExample;
  }

  override maskedExample(i: number, imgMask: Uint8Array): MrcExample {
    return super.maskedExample(i, imgMask) as MrcExample;
  }

  override collate(examples: MrmExample[]): Batch {
    return mrcCollate(examples as MrcExample[]);
  }
}

/** A uniformly random draw of `k` distinct pool entries that contains none of `exclude` (official sample_negative). */
export function sampleNegatives<T>(pool: readonly T[], exclude: readonly T[], k: number, rng: Rng, what: string): T[] {
  const ex = new Set(exclude);
  const allowed = pool.reduce((n, p) => n + (ex.has(p) ? 0 : 1), 0);
  if (allowed < k) throw new Error(`${what}: need ${k} negative(s) but only ${allowed} of ${pool.length} candidates differ from the positive`);
  // Same distribution as the official "random.sample until no overlap": k distinct entries
  // uniformly among those not excluded.
  const picked = new Set<number>();
  const out: T[] = [];
  while (out.length < k) {
    const j = rng.int(pool.length);
    if (picked.has(j) || ex.has(pool[j])) continue;
    picked.add(j);
    out.push(pool[j]);
  }
  return out;
}

export interface ItmOptions extends DatasetOptions {
  /** Probability that a caption's image is replaced by a random other image (default 0.5). */
  negProb?: number;
  /** Emit the OT inputs (itm_ot_collate); default true as in pre-training with WRA. */
  ot?: boolean;
}

/**
 * Official ItmDataset: per epoch each caption gets label 1 (its own image) or, with p negProb,
 * label 0 and a random different image from the images of this dataset. Only the image is swapped.
 * The token buckets of an epoch use that epoch's pairs (the official TokenBucketSamplerForItm
 * builds them from the previous epoch's lengths, an ordering accident not copied here). Reads
 * every record once at construction to learn the captions' images (txt2img).
 */
export class ItmDataset extends TxtImgDataset<ItmExample> {
  /** Distinct images of the dataset's captions, in first-appearance order. */
  readonly imagePool: readonly string[];
  private readonly gtImages: readonly string[];
  private readonly negProb: number;
  private readonly ot: boolean;
  private labels: number[] | null = null;
  private pairImages: string[] | null = null;

  constructor(txt: TextSource, img: ImageSource, opts: ItmOptions = {}) {
    super('itm', txt, img, opts);
    this.negProb = opts.negProb ?? 0.5;
    this.ot = opts.ot ?? true;
    this.gtImages = this.ids.map((id) => readImageName(this.task, id, txt.get(id)));
    this.imagePool = [...new Set(this.gtImages)];
  }

  newEpoch(rng: Rng): void {
    const labels: number[] = [];
    const images: string[] = [];
    this.gtImages.forEach((gt) => {
      const negative = rng.uniform() < this.negProb;
      labels.push(negative ? 0 : 1);
      images.push(negative ? sampleNegatives(this.imagePool, [gt], 1, rng, 'itm negative image')[0] : gt);
    });
    this.labels = labels;
    this.pairImages = images;
  }

  /** This epoch's (label, image) of example i. */
  pair(i: number): { label: number; image: string } {
    if (!this.labels || !this.pairImages) throw new Error('itm: call newEpoch(rng) before reading examples (labels and negatives are drawn per epoch)');
    return { label: this.labels[i], image: this.pairImages[i] };
  }

  override lens(): readonly number[] {
    const t = this.txtLens();
    return this.ids.map((id, i) => t[i] + regionsOf(this.img, this.pair(i).image, { task: this.task, id, field: 'img_fname' }));
  }

  get(i: number): ItmExample {
    const { label, image } = this.pair(i);
    return this.pairExample(i, image, label);
  }

  /** Caption i with a given image and label (also used to replay recorded pairs). */
  pairExample(i: number, imgFname: string, target: number): ItmExample {
    const rec = this.record(i);
    const im = this.image(rec, imgFname);
    return { ...rowOf(this.withSpecials(this.caption(rec)), im), target };
  }

  collate(examples: ItmExample[]): Batch {
    return itmCollate(examples, { ot: this.ot });
  }
}

export interface ItmRankOptions extends DatasetOptions {
  /** Negative images and negative captions per caption (default 1). */
  negSize?: number;
}

/**
 * Official ItmRankDataset (retrieval fine-tuning): per caption the rows (caption, own image),
 * (caption, negative image) x k, (negative caption, own image) x k.
 */
export class ItmRankDataset extends TxtImgDataset<ItmRankExample> {
  private readonly txt2img: Map<string, string>;
  private readonly img2txts: Map<string, string[]>;
  private readonly imageNames: string[];
  private readonly negSize: number;

  constructor(txt: TextSource, img: ImageSource, opts: ItmRankOptions = {}) {
    super('itm_rank', txt, img, opts);
    this.negSize = opts.negSize ?? 1;
    if (!(this.negSize >= 1)) throw new Error(`itm_rank: negSize must be >= 1, got ${this.negSize}`);
    this.txt2img = new Map(this.ids.map((id) => [id, readImageName(this.task, id, txt.get(id))]));
    this.img2txts = new Map();
    for (const [id, im] of this.txt2img) {
      const list = this.img2txts.get(im);
      if (list) list.push(id);
      else this.img2txts.set(im, [id]);
    }
    this.imageNames = [...this.img2txts.keys()];
  }

  get(i: number, rng: Rng): ItmRankExample {
    const id = this.ids[i];
    const gtImg = this.txt2img.get(id)!;
    const negImgs = sampleNegatives(this.imageNames, [gtImg], this.negSize, rng, `itm_rank record '${id}': negative image`);
    const negTxts = sampleNegatives(this.ids, this.img2txts.get(gtImg)!, this.negSize, rng, `itm_rank record '${id}': negative caption`);
    const pairs: Array<[string, string]> = [[id, gtImg], ...negImgs.map((im): [string, string] => [id, im]), ...negTxts.map((t): [string, string] => [t, gtImg])];
    return this.pairsExample(pairs);
  }

  /** Rows for explicit (caption id, image) pairs, in order (also used to replay recorded pairs). */
  pairsExample(pairs: ReadonlyArray<readonly [string, string]>): ItmRankExample {
    return {
      rows: pairs.map(([txtId, imgName]) => {
        const rec = this.txt.get(txtId);
        return rowOf(this.withSpecials(this.caption(rec)), this.image(rec, imgName));
      }),
    };
  }

  collate(examples: ItmRankExample[]): Batch {
    return itmRankCollate(examples);
  }
}

export interface VqaOptions extends DatasetOptions {
  numAnswers: number;
  /** false for unlabelled splits: records without `target` give no targets (default true). */
  requireTargets?: boolean;
}

/** Official VqaDataset: targets = soft scores scattered at the answer ids (_get_vqa_target). */
export class VqaDataset extends TxtImgDataset<VqaExample> {
  readonly numAnswers: number;
  private readonly requireTargets: boolean;

  constructor(txt: TextSource, img: ImageSource, opts: VqaOptions, task = 'vqa') {
    super(task, txt, img, opts);
    if (!Number.isInteger(opts.numAnswers) || opts.numAnswers <= 0) throw new Error(`${task}: numAnswers must be a positive integer, got ${opts.numAnswers}`);
    this.numAnswers = opts.numAnswers;
    this.requireTargets = opts.requireTargets ?? true;
  }

  get(i: number): VqaExample {
    const rec = this.record(i);
    const im = this.image(rec, readImageName(this.task, rec.id, rec));
    return { ...rowOf(this.withSpecials(this.caption(rec)), im), target: this.target(rec) };
  }

  private target(rec: TextRecord): Float32Array | null {
    const t = rec.target as { labels?: unknown; scores?: unknown } | undefined;
    if (t === undefined || t === null) {
      if (this.requireTargets) throw recordError(this.task, rec.id, 'target', 'missing (expected {labels, scores})');
      return null;
    }
    if (typeof t !== 'object' || !Array.isArray(t.labels) || !Array.isArray(t.scores)) {
      throw recordError(this.task, rec.id, 'target', `expected {labels: [...], scores: [...]}, got ${JSON.stringify(t)}`);
    }
    const { labels, scores } = t as { labels: unknown[]; scores: unknown[] };
    if (labels.length !== scores.length) throw recordError(this.task, rec.id, 'target', `${labels.length} labels but ${scores.length} scores`);
    const out = new Float32Array(this.numAnswers);
    labels.forEach((l, k) => {
      if (typeof l !== 'number' || !Number.isInteger(l) || l < 0 || l >= this.numAnswers) {
        throw recordError(this.task, rec.id, 'target.labels', `unknown answer label ${JSON.stringify(l)} (expected 0..${this.numAnswers - 1})`);
      }
      const s = scores[k];
      if (typeof s !== 'number' || !Number.isFinite(s)) throw recordError(this.task, rec.id, 'target.scores', `invalid score ${JSON.stringify(s)}`);
      out[l] = s;
    });
    return out;
  }

  collate(examples: VqaExample[]): Batch {
    return vqaCollate(examples);
  }
}

/** Official VeDataset: VQA with 3 answers (0 contradiction, 1 entailment, 2 neutral). */
export class VeDataset extends VqaDataset {
  constructor(txt: TextSource, img: ImageSource, opts: Omit<VqaOptions, 'numAnswers'> = {}) {
    super(txt, img, { ...opts, numAnswers: 3 }, 've');
  }
}

export interface Nlvr2Options extends DatasetOptions {
  /** Regions of the left image get type 1, right image type 2 (default true, as in the configs). */
  useImgType?: boolean;
}

abstract class Nlvr2Base<E> extends TxtImgDataset<E> {
  protected readonly useImgType: boolean;

  constructor(task: string, txt: TextSource, img: ImageSource, opts: Nlvr2Options) {
    super(task, txt, img, opts);
    this.useImgType = opts.useImgType ?? true;
  }

  protected override regionCount(rec: TextRecord): number {
    return this.regions(rec, readImageName(this.task, rec.id, rec, 0), 'img_fname[0]') + this.regions(rec, readImageName(this.task, rec.id, rec, 1), 'img_fname[1]');
  }

  protected pairImages(rec: TextRecord): [ImageFeatures, ImageFeatures] {
    const f = rec.img_fname;
    if (!Array.isArray(f) || f.length !== 2) throw recordError(this.task, rec.id, 'img_fname', `expected a pair of image names, got ${JSON.stringify(f)}`);
    return [0, 1].map((k) => this.image(rec, readImageName(this.task, rec.id, rec, k), `img_fname[${k}]`)) as [ImageFeatures, ImageFeatures];
  }

  protected target(rec: TextRecord): number {
    const t = readInt(this.task, rec.id, 'target', rec.target);
    if (t !== 0 && t !== 1) throw recordError(this.task, rec.id, 'target', `expected 0 or 1, got ${t}`);
    return t;
  }
}

/** Official Nlvr2PairedDataset: the statement encoded once with each image (2 rows). */
export class Nlvr2PairedDataset extends Nlvr2Base<Nlvr2PairedExample> {
  constructor(txt: TextSource, img: ImageSource, opts: Nlvr2Options = {}) {
    super('nlvr2', txt, img, opts);
  }

  protected override textWeight(): number {
    return 2;
  }

  get(i: number): Nlvr2PairedExample {
    const rec = this.record(i);
    const ids = this.withSpecials(this.caption(rec));
    const rows = this.pairImages(rec).map((im, k) => {
      const row = rowOf(ids, im);
      if (this.useImgType) row.imgTypeIds = new Array<number>(im.nbb).fill(k + 1);
      return row;
    }) as [SeqRow, SeqRow];
    return { rows, target: this.target(rec) };
  }

  collate(examples: Nlvr2PairedExample[]): Batch {
    return nlvr2PairedCollate(examples);
  }
}

/** Official Nlvr2TripletDataset: one row [text, left regions, right regions]. */
export class Nlvr2TripletDataset extends Nlvr2Base<Nlvr2TripletExample> {
  constructor(txt: TextSource, img: ImageSource, opts: Nlvr2Options = {}) {
    super('nlvr2_triplet', txt, img, opts);
  }

  get(i: number): Nlvr2TripletExample {
    const rec = this.record(i);
    const [left, right] = this.pairImages(rec);
    const row: Nlvr2TripletExample = { ...rowOf(this.withSpecials(this.caption(rec)), concatImages([left, right])), target: this.target(rec) };
    if (this.useImgType) row.imgTypeIds = [...new Array<number>(left.nbb).fill(1), ...new Array<number>(right.nbb).fill(2)];
    return row;
  }

  collate(examples: Nlvr2TripletExample[]): Batch {
    return nlvr2TripletCollate(examples);
  }
}

/** One entry of the RE `images.json`: annotation ids in the order of the GT feature rows. */
export interface ReImageInfo {
  ann_ids: readonly number[];
  width?: number;
  height?: number;
}

export interface ReOptions extends DatasetOptions {
  /** image_id -> info (RE txt_db side file images.json). */
  images: ReadonlyMap<number, ReImageInfo>;
  /** 'gt' (training; COCO ground-truth box features, targets) or 'det' (detected boxes, no targets). */
  boxes?: 'gt' | 'det';
  /**
   * Image file name of a record; default the official names built from image_id
   * (`visual_grounding_coco_gt_{id:012}.npz` / `visual_grounding_det_coco_{id:012}.npz`).
   * Pass `(_, rec) => rec.img_fname as string` to use the record's own field.
   */
  imgFname?: (imageId: number, rec: TextRecord) => string;
}

/** Official ReDataset: target = index of the record's ann_id among the image's ann_ids. */
export class ReDataset extends TxtImgDataset<ReExample> {
  private readonly images: ReadonlyMap<number, ReImageInfo>;
  private readonly boxes: 'gt' | 'det';
  private readonly fnameOf: (imageId: number, rec: TextRecord) => string;

  constructor(txt: TextSource, img: ImageSource, opts: ReOptions) {
    super('re', txt, img, opts);
    this.images = opts.images;
    this.boxes = opts.boxes ?? 'gt';
    const pad = (n: number): string => String(n).padStart(12, '0');
    this.fnameOf = opts.imgFname ?? (this.boxes === 'gt' ? (n) => `visual_grounding_coco_gt_${pad(n)}.npz` : (n) => `visual_grounding_det_coco_${pad(n)}.npz`);
  }

  protected override regionCount(rec: TextRecord): number {
    return this.regions(rec, this.fnameOf(readInt(this.task, rec.id, 'image_id', rec.image_id), rec), 'image_id');
  }

  get(i: number): ReExample {
    const rec = this.record(i);
    const imageId = readInt(this.task, rec.id, 'image_id', rec.image_id);
    const im = this.image(rec, this.fnameOf(imageId, rec), 'image_id');
    const ex: ReExample = rowOf(this.withSpecials(this.caption(rec)), im);
    if (this.boxes === 'det') return ex;
    const info = this.images.get(imageId);
    if (!info) throw recordError(this.task, rec.id, 'image_id', `image ${imageId} is not in images.json`);
    if (info.ann_ids.length !== im.nbb) {
      throw recordError(this.task, rec.id, 'image_id', `image ${imageId} has ${info.ann_ids.length} ann_ids but ${im.nbb} GT regions (use the GT-box img_db)`);
    }
    const annId = readInt(this.task, rec.id, 'ann_id', rec.ann_id);
    const target = info.ann_ids.indexOf(annId);
    if (target < 0) throw recordError(this.task, rec.id, 'ann_id', `annotation ${annId} is not among the ann_ids of image ${imageId}`);
    ex.target = target;
    return ex;
  }

  collate(examples: ReExample[]): Batch {
    return reCollate(examples);
  }
}

/** VCR images: GT-box features (fixed count) and/or detections; GT regions come first. */
export interface VcrImageSources {
  gt?: ImageSource;
  det?: ImageSource;
}

const VCR_TYPE = { question: 0, answer: 2, rationale: 3 } as const;

/** VCR text and image handling shared by the training and evaluation datasets. */
abstract class VcrBase<E> implements TaskDataset<E> {
  readonly ids: readonly string[];
  protected readonly special: SpecialIds;
  private txtLenCache: number[] | null = null;

  constructor(
    readonly task: string,
    protected readonly txt: TextSource,
    protected readonly images: VcrImageSources,
    opts: DatasetOptions,
  ) {
    if (!images.gt && !images.det) throw new Error(`${task}: need a GT-box image source, a detection image source, or both`);
    this.ids = opts.ids ? [...opts.ids] : txt.ids();
    this.special = opts.specialIds ?? BERT_BASE_CASED_IDS;
  }

  abstract get(i: number, rng: Rng): E;
  abstract collate(examples: E[]): Batch;

  /** id2len of the txt_db (VCR: id2len_qa.json or id2len_qar.json). */
  txtLens(): readonly number[] {
    this.txtLenCache ??= this.ids.map((id) => this.txt.len(id));
    return this.txtLenCache;
  }

  lens(): readonly number[] {
    const t = this.txtLens();
    return this.ids.map((id, i) => {
      const rec = this.txt.get(id);
      let n = t[i];
      if (this.images.gt) n += regionsOf(this.images.gt, readImageName(this.task, id, rec, 0), { task: this.task, id, field: 'img_fname[0]' });
      if (this.images.det) n += regionsOf(this.images.det, readImageName(this.task, id, rec, 1), { task: this.task, id, field: 'img_fname[1]' });
      return n;
    });
  }

  protected record(i: number): TextRecord {
    const id = this.ids[i];
    if (id === undefined) throw new Error(`${this.task}: example index ${i} out of range (${this.ids.length} examples)`);
    return this.txt.get(id);
  }

  protected image(rec: TextRecord): ImageFeatures {
    const parts: ImageFeatures[] = [];
    if (this.images.gt) parts.push(loadImage(this.images.gt, readImageName(this.task, rec.id, rec, 0), { task: this.task, id: rec.id, field: 'img_fname[0]' }));
    if (this.images.det) parts.push(loadImage(this.images.det, readImageName(this.task, rec.id, rec, 1), { task: this.task, id: rec.id, field: 'img_fname[1]' }));
    return concatImages(parts);
  }

  protected candidates(rec: TextRecord, field: 'input_ids_as' | 'input_ids_rs'): number[][] {
    const v = rec[field];
    if (!Array.isArray(v) || v.length === 0) throw recordError(this.task, rec.id, field, 'expected a list of candidate token lists');
    return v.map((c, k) => readIds(this.task, rec.id, `${field}[${k}]`, c, true));
  }

  protected label(rec: TextRecord, field: 'qa_target' | 'qar_target', n: number): number {
    const t = readInt(this.task, rec.id, field, rec[field]);
    if (t < 0 || t >= n) throw recordError(this.task, rec.id, field, `expected 0..${n - 1}, got ${t}`);
    return t;
  }

  /**
   * One text row: [CLS] q [SEP] a [SEP] (types 0, q 0s, then 2s) or
   * [CLS] q [SEP] a [SEP] r [SEP] (types 0, q 0s, [SEP] a -> 2, [SEP] r [SEP] -> 3).
   */
  protected textRow(q: number[], answer: number[], rationale: number[] | null): { inputIds: number[]; txtTypeIds: number[] } {
    const { cls, sep } = this.special;
    if (rationale === null) {
      return {
        inputIds: [cls, ...q, sep, ...answer, sep],
        txtTypeIds: [VCR_TYPE.question, ...q.map(() => VCR_TYPE.question), ...new Array<number>(answer.length + 2).fill(VCR_TYPE.answer)],
      };
    }
    return {
      inputIds: [cls, ...q, sep, ...answer, sep, ...rationale, sep],
      txtTypeIds: [
        VCR_TYPE.question,
        ...q.map(() => VCR_TYPE.question),
        ...new Array<number>(answer.length + 1).fill(VCR_TYPE.answer),
        ...new Array<number>(rationale.length + 2).fill(VCR_TYPE.rationale),
      ],
    };
  }
}

export interface VcrOptions extends DatasetOptions {
  /** 'qa' (Q->A: one row per answer) or 'qar' (QA->R: one row per rationale, given the GT answer). */
  task: 'qa' | 'qar';
}

/** Official VcrDataset (training): one row per candidate, target 1 on the right one. */
export class VcrDataset extends VcrBase<VcrExample> {
  private readonly mode: 'qa' | 'qar';

  constructor(txt: TextSource, images: VcrImageSources, opts: VcrOptions) {
    super(`vcr_${opts.task}`, txt, images, opts);
    this.mode = opts.task;
  }

  get(i: number): VcrExample {
    const rec = this.record(i);
    const im = this.image(rec);
    const q = readIds(this.task, rec.id, 'input_ids', rec.input_ids);
    const answers = this.candidates(rec, 'input_ids_as');
    let rows: VcrRow[];
    if (this.mode === 'qa') {
      const label = this.label(rec, 'qa_target', answers.length);
      rows = answers.map((a, k) => ({ ...rowOf([], im), ...this.textRow(q, a, null), target: k === label ? 1 : 0 }));
    } else {
      const gtAnswer = answers[this.label(rec, 'qa_target', answers.length)];
      const rationales = this.candidates(rec, 'input_ids_rs');
      const label = this.label(rec, 'qar_target', rationales.length);
      rows = rationales.map((r, k) => ({ ...rowOf([], im), ...this.textRow(q, gtAnswer, r), target: k === label ? 1 : 0 }));
    }
    return { rows };
  }

  collate(examples: VcrExample[]): Batch {
    return vcrCollate(examples);
  }
}

export interface VcrEvalOptions extends DatasetOptions {
  /** 'val': rationales conditioned on the GT answer (4 QA + 4 QAR rows); 'test': on every answer (4 + 16). */
  split: 'val' | 'test';
}

/** Official VcrEvalDataset: all Q->A rows, then the QA->R rows. */
export class VcrEvalDataset extends VcrBase<VcrEvalExample> {
  private readonly split: 'val' | 'test';

  constructor(txt: TextSource, images: VcrImageSources, opts: VcrEvalOptions) {
    super('vcr_eval', txt, images, opts);
    this.split = opts.split;
  }

  get(i: number): VcrEvalExample {
    const rec = this.record(i);
    const im = this.image(rec);
    const q = readIds(this.task, rec.id, 'input_ids', rec.input_ids);
    const answers = this.candidates(rec, 'input_ids_as');
    const rationales = this.candidates(rec, 'input_ids_rs');
    // Test records may carry no labels; -1 then stands for "unknown".
    const qaTarget = this.split === 'val' ? this.label(rec, 'qa_target', answers.length) : rec.qa_target === undefined ? -1 : readInt(this.task, rec.id, 'qa_target', rec.qa_target);
    const qarTarget = this.split === 'val' ? this.label(rec, 'qar_target', rationales.length) : rec.qar_target === undefined ? -1 : readInt(this.task, rec.id, 'qar_target', rec.qar_target);
    const rows: VcrEvalExample['rows'][number][] = answers.map((a) => ({ ...rowOf([], im), ...this.textRow(q, a, null) }));
    answers.forEach((a, k) => {
      if (this.split === 'test' || k === qaTarget) for (const r of rationales) rows.push({ ...rowOf([], im), ...this.textRow(q, a, r) });
    });
    return { rows, qaTarget, qarTarget };
  }

  collate(examples: VcrEvalExample[]): Batch {
    return vcrEvalCollate(examples);
  }
}
