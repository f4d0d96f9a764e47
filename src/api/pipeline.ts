/**
 * Pipelines: one call from raw inputs to plain answers. `pipeline(task, modelDir, options)`
 * loads the model folder (and a detector, for photos) and returns a function that takes a text
 * and an image in any form a user has one (a file path or encoded bytes for the detector, decoded
 * pixels, `{features, boxes}` from another extractor, stored `{nbb, features, normBb}`, or an id
 * in an image store) and returns what the task means: a probability, named answers, a label, a
 * ranking, a box. Pass an array to score many inputs in one session run.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Detector } from '../detector/detector.js';
import type { Detection, RgbImage } from '../detector/types.js';
import { ImgDb } from '../data/imgdb.js';
import type { ImageSource } from '../data/types.js';
import { readJsonFile } from '../util/json.js';
import type { Alignment } from './alignment.js';
import type { ModelInput, RegionFeatures, TextInput } from './inputs.js';
import { CONFIG_FILE } from './pretrained.js';
import { Uniter } from './uniter.js';
import type { Precision } from '../model/uniter.js';

export const PIPELINE_TASKS = ['itm', 'vqa', 've', 'nlvr2', 'retrieval', 'refexp'] as const;
export type PipelineTask = (typeof PIPELINE_TASKS)[number];

/** A bad input: `field` names where it is ('image', 'images[2].boxes', 'text'). */
export class InputError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = 'InputError';
  }
}

/** Region features from another extractor: boxes in pixels (with width/height) or normalised to [0, 1]. */
export interface BoxFeatures {
  /** [n, img_dim]: a flat Float32Array / number[] or one array per region. */
  features: Float32Array | readonly number[] | readonly (readonly number[])[];
  /** [n, 4] x1, y1, x2, y2 per region. */
  boxes: readonly (readonly number[])[];
  width?: number;
  height?: number;
  /** A name per region (shown by `uniter serve`). */
  labels?: readonly string[];
}

/**
 * An image: a file path or encoded bytes (read by the detector), decoded RGB pixels (detector),
 * `{features, boxes}`, stored `{nbb, features, normBb}`, or, with the `images` option, a key
 * of that image store (strings are looked up there first).
 */
export type ImageLike = string | Uint8Array | RgbImage | RegionFeatures | BoxFeatures;

/** An image as the model reads it, with what a viewer needs to draw its regions. */
export interface ResolvedImage {
  regions: RegionFeatures;
  /** [n] normalised x1, y1, x2, y2. */
  boxes: number[][];
  /** [n] region names (detector classes, `classNames` of stored soft labels, or 'region k'). */
  labels: string[];
  /** The image-store key, when it came from one. */
  id?: string;
  /** Pixel size when known. */
  width?: number;
  height?: number;
  detection?: Detection;
}

export interface PipelineOptions {
  /** A detector folder or a loaded Detector: needed for paths, bytes and pixels. */
  detector?: string | Detector;
  /** ONNX Runtime threads (default: all cores). */
  threads?: number;
  /** 'int8': quantized encoder linears (faster; see FromPretrainedOptions.precision). Default 'float32'. */
  precision?: Precision;
  /** An image store (or an img_db directory) whose keys may be passed as images. */
  images?: ImageSource | string;
  /** Names of stored soft-label columns (column 0 = background), to label stored regions. */
  classNames?: readonly string[];
  /** VQA: how many answers to return (default 5). */
  topK?: number;
  vocabFile?: string;
}

export interface TextImage {
  text: TextInput;
  image: ImageLike;
}

export interface PipelineInputs {
  itm: TextImage;
  vqa: TextImage & { topK?: number };
  ve: TextImage;
  nlvr2: { text: TextInput; images: readonly [ImageLike, ImageLike] };
  /** A caption against a gallery of images, or an image against a gallery of captions. */
  retrieval: { text: TextInput; images: readonly ImageLike[] } | { image: ImageLike; texts: readonly TextInput[] };
  refexp: TextImage;
}

export interface ScoredLabel {
  label: string;
  /** Row of the model's answer head. */
  id: number;
  score: number;
}

export interface PipelineOutputs {
  /** P(text matches image). */
  itm: { probability: number; match: boolean };
  /** Top answers by sigmoid score (the head is trained with BCE against soft targets). */
  vqa: { answers: ScoredLabel[] };
  /** The entailment class, with the softmax over all three. */
  ve: { label: string; scores: ScoredLabel[] };
  /** Whether the statement holds for the pair, with P(true). */
  nlvr2: { label: boolean; probability: number };
  /** The gallery sorted best first; `index` is the position in the input gallery. */
  retrieval: { ranking: Array<{ index: number; id?: string; score: number }>; scoredBy: 'rank_output' | 'itm_output' };
  /** The referred region (softmax over the image's regions). */
  refexp: { index: number; box: number[]; label: string; score: number; scores: number[] };
}

export type AlignmentResult = Alignment & { boxes: number[][]; boxLabels: string[] };

export interface Pipeline<T extends PipelineTask> {
  (input: PipelineInputs[T]): Promise<PipelineOutputs[T]>;
  (inputs: readonly PipelineInputs[T][]): Promise<Array<PipelineOutputs[T]>>;
  readonly task: T;
  readonly model: Uniter;
  /** Answer / class names (VQA, VE). */
  readonly labels?: readonly string[];
  /** The WRA plan and attention of a (text, image) pair, with the regions' boxes and names. */
  align(input: TextImage): Promise<AlignmentResult>;
  /** Turn any image form into regions (what every call does first). */
  resolveImage(image: ImageLike, field?: string): Promise<ResolvedImage>;
}

const VE_LABELS = ['contradiction', 'entailment', 'neutral'];
/** Gallery rows per session run in retrieval. */
const RETRIEVAL_CHUNK = 32;

/** `id2label` of a model folder's config.json: {"0": "yes", ...} or ["yes", ...]. */
export function readId2Label(dir: string): string[] | undefined {
  const file = path.join(dir, CONFIG_FILE);
  if (!fs.existsSync(file)) return undefined;
  const raw = (readJsonFile(file, 'model config') as Record<string, unknown>).id2label;
  if (raw === undefined) return undefined;
  if (Array.isArray(raw) && raw.every((x) => typeof x === 'string')) return raw as string[];
  if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
    const out: string[] = [];
    for (const [k, v] of Object.entries(raw)) {
      if (!/^\d+$/.test(k) || typeof v !== 'string') throw new Error(`${file}: field 'id2label' must map row numbers to names ("0": "yes"), got "${k}": ${JSON.stringify(v)}`);
      out[Number(k)] = v;
    }
    return out;
  }
  throw new Error(`${file}: field 'id2label' must be an object {"0": name, ...} or an array of names`);
}

function softmax(xs: readonly number[]): number[] {
  const m = Math.max(...xs);
  const e = xs.map((x) => Math.exp(x - m));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null;
}

function finiteArray(x: unknown, field: string): Float32Array {
  if (x instanceof Float32Array) return x;
  if (!Array.isArray(x)) throw new InputError(field, `expected an array of numbers, got ${typeof x}`);
  const flat = x.some(Array.isArray) ? (x as unknown[]).flat() : x;
  const out = new Float32Array(flat.length);
  flat.forEach((v, i) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new InputError(field, `value ${i} is ${JSON.stringify(v)}, expected a finite number`);
    out[i] = v;
  });
  return out;
}

/** {features, boxes} -> the model's regions (boxes normalised, the 6 stored columns). */
export function boxFeaturesToRegions(input: BoxFeatures, imgDim: number, field: string): ResolvedImage {
  const { boxes, width, height } = input;
  if (!Array.isArray(boxes)) throw new InputError(`${field}.boxes`, 'expected an array of [x1, y1, x2, y2] boxes');
  const n = boxes.length;
  const features = finiteArray(input.features, `${field}.features`);
  if (features.length !== n * imgDim) throw new InputError(`${field}.features`, `expected ${n} x ${imgDim} values (one row of img_dim ${imgDim} per box), got ${features.length}`);
  const sized = width !== undefined || height !== undefined;
  if (sized && !(Number.isFinite(width) && Number.isFinite(height) && width! > 0 && height! > 0)) throw new InputError(`${field}.width`, `width and height must both be positive numbers of pixels, got ${width} x ${height}`);
  const normBb = new Float32Array(n * 6);
  const norm: number[][] = [];
  boxes.forEach((b, k) => {
    const f = `${field}.boxes[${k}]`;
    if (!Array.isArray(b) || b.length !== 4 || !b.every((v) => typeof v === 'number' && Number.isFinite(v))) throw new InputError(f, `expected [x1, y1, x2, y2] (4 finite numbers), got ${JSON.stringify(b)}`);
    const [x1, y1, x2, y2] = sized ? [b[0] / width!, b[1] / height!, b[2] / width!, b[3] / height!] : b;
    if (!(x2 > x1 && y2 > y1)) throw new InputError(f, `needs x2 > x1 and y2 > y1, got ${JSON.stringify(b)}`);
    if (!sized && [x1, y1, x2, y2].some((v) => v < 0 || v > 1)) throw new InputError(f, `boxes without width/height must be normalised to [0, 1], got ${JSON.stringify(b)} (pass width and height for pixel boxes)`);
    normBb.set([x1, y1, x2, y2, x2 - x1, y2 - y1], k * 6);
    norm.push([x1, y1, x2, y2]);
  });
  if (input.labels !== undefined && (!Array.isArray(input.labels) || input.labels.length !== n || !input.labels.every((l) => typeof l === 'string'))) {
    throw new InputError(`${field}.labels`, `expected ${n} strings (one per box)`);
  }
  return { regions: { nbb: n, features, normBb }, boxes: norm, labels: input.labels ? [...input.labels] : norm.map((_, k) => `region ${k}`), width, height };
}

/** Names of a stored image's regions: arg-max of its soft labels (background excluded). */
function storedLabels(softLabels: Float32Array | undefined, nbb: number, classNames: readonly string[] | undefined): string[] {
  if (!softLabels || nbb === 0) return Array.from({ length: nbb }, (_, k) => `region ${k}`);
  const dim = softLabels.length / nbb;
  return Array.from({ length: nbb }, (_, k) => {
    let best = 1;
    for (let c = 2; c < dim; c++) if (softLabels[k * dim + c] > softLabels[k * dim + best]) best = c;
    return classNames?.[best] ?? `class ${best}`;
  });
}

/** Load a model folder for one task and return a function from raw inputs to answers. */
export async function pipeline<T extends PipelineTask>(task: T, modelDir: string, opts: PipelineOptions = {}): Promise<Pipeline<T>> {
  if (!PIPELINE_TASKS.includes(task)) throw new Error(`pipeline: unknown task '${String(task)}' (expected one of ${PIPELINE_TASKS.join(', ')})`);
  const load = (t: Parameters<typeof Uniter.fromPretrained>[1]) => Uniter.fromPretrained(modelDir, { ...t, threads: opts.threads, vocabFile: opts.vocabFile, precision: opts.precision });
  let model: Uniter;
  if (task === 'retrieval') {
    // A pre-trained model retrieves zero-shot with its ITM head; a fine-tuned one has rank_output.
    const probe = load({});
    model = probe.heads.includes('retrieval') ? load({ task: 'retrieval' }) : probe.heads.includes('itm') ? load({ task: 'itm' }) : load({ task: 'retrieval' });
  } else model = load({ task });
  const cfg = model.config;

  let labels: string[] | undefined;
  if (task === 'vqa' || task === 've') {
    const id2label = readId2Label(modelDir);
    const n = model.numAnswers!;
    if (id2label && id2label.length !== n) throw new Error(`${path.join(modelDir, CONFIG_FILE)}: field 'id2label' names ${id2label.length} answers, the head has ${n}`);
    labels = id2label ?? (task === 've' ? VE_LABELS : Array.from({ length: n }, (_, i) => `answer ${i}`));
  }

  const detector = typeof opts.detector === 'string' ? await Detector.fromPretrained(opts.detector, { threads: opts.threads }) : opts.detector;
  const images = typeof opts.images === 'string' ? ImgDb.open(opts.images) : opts.images;
  if (images && images.imgDim !== cfg.img_dim) throw new Error(`pipeline: the image store's features are ${images.imgDim} wide, the model's img_dim is ${cfg.img_dim}`);
  const topK = opts.topK ?? 5;

  async function resolveImage(image: ImageLike, field = 'image'): Promise<ResolvedImage> {
    if (typeof image === 'string' && images?.has(image)) {
      const rec = images.get(image);
      return { regions: rec, boxes: Array.from({ length: rec.nbb }, (_, k) => Array.from(rec.normBb.subarray(k * 6, k * 6 + 4))), labels: storedLabels(rec.softLabels, rec.nbb, opts.classNames), id: image };
    }
    if (isObject(image) && !(image instanceof Uint8Array)) {
      if ('nbb' in image) {
        const r = image as RegionFeatures;
        return { regions: r, boxes: Array.from({ length: r.nbb }, (_, k) => Array.from(r.normBb.subarray(k * 6, k * 6 + 4))), labels: Array.from({ length: r.nbb }, (_, k) => `region ${k}`) };
      }
      if ('features' in image || 'boxes' in image) return boxFeaturesToRegions(image as BoxFeatures, cfg.img_dim, field);
    }
    const isPixels = isObject(image) && 'data' in image && 'width' in image && 'height' in image;
    if (!(typeof image === 'string' || image instanceof Uint8Array || isPixels)) {
      throw new InputError(field, 'expected a path, encoded bytes, {width, height, data} pixels, {features, boxes} or {nbb, features, normBb}');
    }
    if (!detector) {
      const what = typeof image === 'string' ? (images ? `'${image}' is not a key of the image store, and` : `'${image}' is a path, but`) : 'pixels and encoded images need the detector, but';
      throw new InputError(field, `${what} no detector was given (pipeline option 'detector', 'uniter serve --detector DIR')`);
    }
    if (isPixels) {
      const px = image as RgbImage;
      if (!(Number.isInteger(px.width) && Number.isInteger(px.height) && px.width > 0 && px.height > 0)) throw new InputError(`${field}.width`, `width and height must be positive integers, got ${px.width} x ${px.height}`);
      if (!(px.data instanceof Uint8Array) || px.data.length !== px.width * px.height * 3) throw new InputError(`${field}.data`, `expected ${px.width} x ${px.height} x 3 RGB bytes, got ${px.data?.length}`);
    }
    const r = await detector.regions(image as RgbImage);
    const det = r.detection;
    if (det.featureDim !== cfg.img_dim) throw new Error(`the detector's features are ${det.featureDim} wide, the model's img_dim is ${cfg.img_dim}: they do not belong together`);
    return {
      regions: { nbb: r.nbb, features: r.features, normBb: r.normBb },
      boxes: Array.from({ length: r.nbb }, (_, k) => Array.from(r.normBb.subarray(k * 6, k * 6 + 4))),
      labels: Array.from({ length: r.nbb }, (_, k) => det.objectNames?.[det.objectIds[k]] ?? `class ${det.objectIds[k]}`),
      width: det.width,
      height: det.height,
      detection: det,
    };
  }

  /** Collate plain inputs; a collate error is the caller's input (it names the input and field). */
  const collate = (inputs: ModelInput[]) => {
    try {
      return model.collate(inputs);
    } catch (e) {
      throw new InputError(/^input \d+/.exec((e as Error).message)?.[0] ?? 'input', (e as Error).message.replace(/^input \d+: /, ''));
    }
  };

  const checkText = (t: unknown, field: string) => {
    if (typeof t === 'string') {
      if (!t.trim()) throw new InputError(field, 'is empty');
      return t;
    }
    if (Array.isArray(t)) return t as TextInput;
    throw new InputError(field, `expected a string (or WordPiece ids), got ${t === null ? 'null' : typeof t}`);
  };
  const need = (x: unknown, i: number, n: number): Record<string, unknown> => {
    if (!isObject(x)) throw new InputError(n > 1 ? `inputs[${i}]` : 'input', 'expected an object');
    return x;
  };

  async function runMany(inputs: readonly unknown[]): Promise<unknown[]> {
    const n = inputs.length;
    const at = (i: number, f: string) => (n > 1 ? `inputs[${i}].${f}` : f);
    switch (task) {
      case 'itm':
      case 'vqa':
      case 've':
      case 'refexp': {
        const parsed = await Promise.all(
          inputs.map(async (x, i) => {
            const o = need(x, i, n);
            return { text: checkText(o.text, at(i, 'text')), image: await resolveImage(o.image as ImageLike, at(i, 'image')), topK: o.topK };
          }),
        );
        const batch = collate(parsed.map((p) => ({ text: p.text, image: p.image.regions })));
        if (task === 'itm') return (await model.scoreItm(batch)).map((p) => ({ probability: p, match: p >= 0.5 }));
        if (task === 'refexp') {
          const rows = await model.refexp(batch);
          return rows.map((scores, i) => {
            const probs = softmax(scores);
            const index = probs.indexOf(Math.max(...probs));
            return { index, box: parsed[i].image.boxes[index], label: parsed[i].image.labels[index], score: probs[index], scores: probs };
          });
        }
        const rows = await model.answer(batch);
        return rows.map((logits, i) => {
          if (task === 've') {
            const scores = softmax(logits).map((score, id) => ({ label: labels![id], id, score }));
            return { label: labels![logits.indexOf(Math.max(...logits))], scores };
          }
          const k = parsed[i].topK ?? topK;
          if (!(Number.isInteger(k) && (k as number) >= 1)) throw new InputError(at(i, 'topK'), `must be a positive integer, got ${JSON.stringify(k)}`);
          const ranked = logits.map((l, id) => ({ label: labels![id], id, score: sigmoid(l) })).sort((a, b) => b.score - a.score);
          return { answers: ranked.slice(0, k as number) };
        });
      }
      case 'nlvr2': {
        const parsed = await Promise.all(
          inputs.map(async (x, i) => {
            const o = need(x, i, n);
            const imgs = o.images;
            if (!Array.isArray(imgs) || imgs.length !== 2) throw new InputError(at(i, 'images'), 'expected two images [left, right]');
            const pair = await Promise.all(imgs.map((im, k) => resolveImage(im as ImageLike, at(i, `images[${k}]`))));
            return { text: checkText(o.text, at(i, 'text')), images: [pair[0].regions, pair[1].regions] as const };
          }),
        );
        return (await model.answer(collate(parsed))).map((logits) => {
          const p = softmax(logits)[1];
          return { label: p >= 0.5, probability: p };
        });
      }
      case 'retrieval': {
        const out = [];
        for (let i = 0; i < n; i++) {
          const o = need(inputs[i], i, n);
          let pairs: Array<{ text: TextInput; image: ResolvedImage }>;
          let ids: Array<string | undefined>;
          if ('texts' in o) {
            if (!Array.isArray(o.texts) || o.texts.length === 0) throw new InputError(at(i, 'texts'), 'expected a non-empty array of captions');
            const image = await resolveImage(o.image as ImageLike, at(i, 'image'));
            pairs = o.texts.map((t, k) => ({ text: checkText(t, at(i, `texts[${k}]`)), image }));
            ids = pairs.map(() => undefined);
          } else {
            if (!Array.isArray(o.images) || o.images.length === 0) throw new InputError(at(i, 'images'), 'expected a non-empty array of images (or pass image + texts)');
            const text = checkText(o.text, at(i, 'text'));
            const gallery = await Promise.all(o.images.map((im, k) => resolveImage(im as ImageLike, at(i, `images[${k}]`))));
            pairs = gallery.map((image) => ({ text, image }));
            ids = gallery.map((g) => g.id);
          }
          const scores: number[] = [];
          for (let s = 0; s < pairs.length; s += RETRIEVAL_CHUNK) {
            let batch;
            try {
              batch = collate(pairs.slice(s, s + RETRIEVAL_CHUNK).map((p) => ({ text: p.text, image: p.image.regions })));
            } catch (e) {
              // Name the gallery entry, not the row of the chunk.
              const k = s + Number(/^input (\d+)/.exec((e as InputError).field)?.[1] ?? 0);
              throw new InputError(at(i, 'texts' in o ? `texts[${k}]` : 'text'), (e as Error).message.replace(/^input( \d+)?: /, ''));
            }
            scores.push(...(model.task === 'retrieval' ? await model.rank(batch) : await model.scoreItm(batch)));
          }
          const ranking = scores.map((score, index) => ({ index, ...(ids[index] !== undefined ? { id: ids[index] } : {}), score })).sort((a, b) => b.score - a.score);
          out.push({ ranking, scoredBy: model.task === 'retrieval' ? 'rank_output' : 'itm_output' });
        }
        return out;
      }
    }
  }

  const call = async (input: unknown) => {
    if (Array.isArray(input)) {
      if (input.length === 0) throw new InputError('inputs', 'expected a non-empty array');
      return runMany(input);
    }
    return (await runMany([input]))[0];
  };
  const align = async (input: TextImage): Promise<AlignmentResult> => {
    if (!isObject(input)) throw new InputError('input', 'expected {text, image}');
    const text = checkText(input.text, 'text');
    const image = await resolveImage(input.image, 'image');
    let a: Alignment;
    try {
      [a] = await model.align([{ text, image: image.regions }]);
    } catch (e) {
      if (/^input 0/.test((e as Error).message)) throw new InputError('input', (e as Error).message.replace(/^input 0: /, ''));
      throw e;
    }
    return { ...a, boxes: image.boxes, boxLabels: image.labels };
  };
  return Object.assign(call, { task, model, labels, align, resolveImage }) as unknown as Pipeline<T>;
}
