/**
 * The synthetic grounded world: uniter-ts's embedded default data.
 *
 * A seeded generator of simple scenes (coloured shapes of two sizes on a canvas, plus background
 * stuff) rendered the way a BUTD detector would store them (2048-d non-negative region features,
 * normalised boxes, confidences, 1601-way soft labels, float16-exact), and text grounded in
 * exactly what those features carry: pre-training captions and every downstream task of UNITER
 * (VQA, SNLI-VE, NLVR2, retrieval, referring expressions, VCR) in the official record layouts.
 *
 * Everything lives in memory behind the shared ImageSource / TextSource contracts, so training
 * needs no disk; `writeWorld` (in world/write.ts) stores it as official img_db / txt_db folders.
 *
 * Determinism: every part draws from its own stream, Rng(seed, purpose, image id), so a scene
 * does not change when another option (say captionsPerImage) does.
 */
import { Rng } from '../util/rng.js';
import { defaultTokenizer } from './tokenizer.js';
import type { TextRecord } from './types.js';
import { MAX_COUNT, MIN_LABEL_DIM, SHAPES, VE_LABELS, worldAns2Label } from './world/concepts.js';
import { generateCaptions } from './world/captions.js';
import {
  DET_PROFILE,
  GT_PROFILE,
  MAIN_PROFILE,
  PrototypeBank,
  WorldImageStore,
  imageFileName,
  layoutRegions,
  type DetectorProfile,
} from './world/features.js';
import { makePairStatement } from './world/nlvr2.js';
import { referringExpressions } from './world/refexp.js';
import { boxArea, generateScene, toXywh, type Scene } from './world/scene.js';
import { WorldTextDb } from './world/textdb.js';
import { generateVcrItems } from './world/vcr.js';
import { generateVeHypotheses } from './world/ve.js';
import { generateVqaQuestions, simulateAnnotators } from './world/vqa.js';

export { WorldImageStore, imageFileName, MAIN_PROFILE, GT_PROFILE, DET_PROFILE, dynamicNbb } from './world/features.js';
export type { DetectorOutput, DetectorProfile, ImageLayout, Region } from './world/features.js';
export { WorldTextDb } from './world/textdb.js';
export type { Scene, SceneObject, Box, Relation } from './world/scene.js';
export { holds, relationsBetween } from './world/scene.js';
export { worldAns2Label, worldAnswerVocabulary } from './world/concepts.js';
export { writeWorld, readWorldManifest, imgDbOptionsFor, checkWorldTarget, WORLD_MANIFEST } from './world/write.js';
export type { WorldManifest, WriteWorldOptions } from './world/write.js';

/** Text to wordpiece ids without [CLS]/[SEP] (bert-base-cased in uniter-ts). */
export interface TextEncoder {
  encode(text: string): number[];
}

export type WorldPreset = 'default' | 'tiny';

export interface WorldOptions {
  /** Start from a preset (default 'default'); every other field overrides it. */
  preset?: WorldPreset;
  seed?: number;
  numImages?: number;
  captionsPerImage?: number;
  /** Region feature size (2048 as BUTD). */
  imgDim?: number;
  /** Detector classes incl. background (1601 as BUTD). */
  labelDim?: number;
  minObjects?: number;
  maxObjects?: number;
  /** Fractions of images held out for val and test (the rest is train). */
  valFraction?: number;
  testFraction?: number;
  vqaPerImage?: number;
  vePerImage?: number;
  /** NLVR2 statements per image of a split (each statement is paired with up to 4 image pairs). */
  nlvr2PerImage?: number;
  /** Objects referred to per image (RE), and expressions per referred object. */
  refsPerImage?: number;
  sentencesPerRef?: number;
  vcrPerImage?: number;
  /** Seed of the detector's feature prototypes: keep it fixed so different worlds share one "detector". */
  detectorSeed?: number;
  /** Decoded images each in-memory store keeps (0: none). */
  cacheSize?: number;
  /**
   * Detector stores also report object parts, background stuff and low-confidence junk (default
   * true, like a BUTD detector's 10-100 boxes); false keeps only the objects' regions.
   */
  clutter?: boolean;
  /**
   * Store region features shifted by -0.45, about their mean (default false: non-negative, like
   * BUTD's). A from-scratch model learns to use the image far sooner with roughly zero-mean
   * features: with Adam, the shared mean of non-negative features makes img_linear's output
   * nearly the same vector for every region.
   */
  centreFeatures?: boolean;
}

export type ResolvedWorldOptions = Required<WorldOptions>;

/**
 * Presets. `default` is sized for the README's main job (pre-train a tiny UNITER on 2 cores in
 * about 15 minutes); `tiny` is for tests (64 images, a second or two).
 */
export const WORLD_PRESETS: Record<WorldPreset, ResolvedWorldOptions> = {
  default: {
    preset: 'default',
    seed: 42,
    numImages: 2000,
    captionsPerImage: 5,
    imgDim: 2048,
    labelDim: 1601,
    minObjects: 3,
    maxObjects: 8,
    valFraction: 0.1,
    testFraction: 0.1,
    vqaPerImage: 6,
    vePerImage: 3,
    nlvr2PerImage: 2,
    refsPerImage: 3,
    sentencesPerRef: 2,
    vcrPerImage: 2,
    detectorSeed: 2020,
    cacheSize: 256,
    clutter: true,
    centreFeatures: false,
  },
  tiny: {
    preset: 'tiny',
    seed: 42,
    numImages: 64,
    captionsPerImage: 3,
    imgDim: 2048,
    labelDim: 1601,
    minObjects: 3,
    maxObjects: 8,
    valFraction: 0.125,
    testFraction: 0.125,
    vqaPerImage: 4,
    vePerImage: 3,
    nlvr2PerImage: 2,
    refsPerImage: 2,
    sentencesPerRef: 2,
    vcrPerImage: 1,
    detectorSeed: 2020,
    cacheSize: 64,
    clutter: true,
    centreFeatures: false,
  },
};

function checkInt(name: string, v: number, lo: number, hi = Number.MAX_SAFE_INTEGER): void {
  const range = hi === Number.MAX_SAFE_INTEGER ? `>= ${lo}` : `in [${lo}, ${hi}]`;
  if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`world options: ${name} must be an integer ${range}, got ${v}`);
}

/**
 * The world lives in memory (about 34 KiB of scenes, captions and task records per image with the
 * default preset, measured; generation about 1 ms per image on one core), so its size is bounded
 * well inside V8's default heap: 50,000 images are about 1.7 GB and under a minute. Bigger data
 * sets belong in stores (`uniter data build`).
 */
export const MAX_WORLD_IMAGES = 50_000;
const WORLD_BYTES_PER_IMAGE = 34 * 1024;
/** Region feature and detector-class widths (BUTD: 2048 and 1601); features are synthesised per read. */
export const MAX_WORLD_IMG_DIM = 16_384;
export const MAX_WORLD_LABEL_DIM = 65_536;

function fmtBytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toPrecision(3)} ${units[i]}`;
}

export function resolveWorldOptions(opts: WorldOptions = {}): ResolvedWorldOptions {
  const preset = opts.preset ?? 'default';
  const base = WORLD_PRESETS[preset];
  if (!base) throw new Error(`world options: unknown preset '${preset}' (expected ${Object.keys(WORLD_PRESETS).join(', ')})`);
  const defined = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined));
  const o: ResolvedWorldOptions = { ...base, ...defined, preset };
  checkInt('seed', o.seed, 0, 0xffffffff);
  checkInt('detectorSeed', o.detectorSeed, 0, 0xffffffff);
  checkInt('numImages', o.numImages, 8);
  if (o.numImages > MAX_WORLD_IMAGES) {
    throw new Error(
      `world options: numImages must be at most ${MAX_WORLD_IMAGES}, got ${o.numImages}: the synthetic world is held in memory ` +
        `(about ${WORLD_BYTES_PER_IMAGE / 1024} KiB per image, so ${fmtBytes(o.numImages * WORLD_BYTES_PER_IMAGE)} for ${o.numImages} images); ` +
        `build bigger data sets as stores with 'uniter data build'`,
    );
  }
  checkInt('captionsPerImage', o.captionsPerImage, 1, 20);
  checkInt('imgDim', o.imgDim, 16, MAX_WORLD_IMG_DIM);
  checkInt('labelDim', o.labelDim, MIN_LABEL_DIM, MAX_WORLD_LABEL_DIM);
  checkInt('minObjects', o.minObjects, 2, MAX_COUNT);
  checkInt('maxObjects', o.maxObjects, o.minObjects, MAX_COUNT);
  for (const k of ['vqaPerImage', 'vePerImage', 'nlvr2PerImage', 'refsPerImage', 'sentencesPerRef', 'vcrPerImage'] as const) checkInt(k, o[k], 0, 50);
  checkInt('cacheSize', o.cacheSize, 0);
  for (const k of ['clutter', 'centreFeatures'] as const) {
    if (typeof o[k] !== 'boolean') throw new Error(`world options: ${k} must be true or false, got ${JSON.stringify(o[k])}`);
  }
  for (const k of ['valFraction', 'testFraction'] as const) {
    if (!(o[k] > 0 && o[k] < 0.5)) throw new Error(`world options: ${k} must be in (0, 0.5), got ${o[k]}`);
  }
  return o;
}

export const SPLITS = ['train', 'val', 'test'] as const;
export type Split = (typeof SPLITS)[number];

/** The txt_db names the world produces, by task (official naming: `<task>_<dataset>_<split>`). */
export const WORLD_TXT_DBS = {
  pretrain: ['pretrain_world_train', 'pretrain_world_val'],
  itm: ['itm_world_train', 'itm_world_val', 'itm_world_test'],
  vqa: ['vqa_world_train', 'vqa_world_val', 'vqa_world_test'],
  ve: ['ve_world_train', 've_world_val', 've_world_test'],
  nlvr2: ['nlvr2_world_train', 'nlvr2_world_val', 'nlvr2_world_test'],
  re: ['re_world_train', 're_world_val', 're_world_test'],
  vcr: ['vcr_world_train', 'vcr_world_val', 'vcr_world_test'],
} as const;

/** Image stores: detector boxes (all tasks), ground-truth boxes (RE, VCR gt), noisier detections (RE det). */
export const WORLD_IMG_DBS = { main: MAIN_PROFILE.name, gt: GT_PROFILE.name, det: DET_PROFILE.name } as const;

export interface WorldCounts {
  images: Record<Split, number>;
  objects: number;
  imgDbs: Record<string, { images: number; regions: number }>;
  txtDbs: Record<string, number>;
  answers: number;
}

export class World {
  constructor(
    readonly options: ResolvedWorldOptions,
    readonly scenes: readonly Scene[],
    readonly splits: Readonly<Record<Split, readonly Scene[]>>,
    readonly imageStores: ReadonlyMap<string, WorldImageStore>,
    readonly textDbs: ReadonlyMap<string, WorldTextDb>,
    readonly ans2label: Readonly<Record<string, number>>,
  ) {}

  /** The main (detector) image store, used by pre-training and most tasks. */
  get images(): WorldImageStore {
    return this.imageStore(WORLD_IMG_DBS.main);
  }

  imageStore(name: string): WorldImageStore {
    const s = this.imageStores.get(name);
    if (!s) throw new Error(`world: no image store '${name}' (have ${[...this.imageStores.keys()].join(', ')})`);
    return s;
  }

  /** A txt_db by name, with or without the `.db` suffix ('vqa_world_train'). */
  textDb(name: string): WorldTextDb {
    const db = this.textDbs.get(name.replace(/\.db$/, ''));
    if (!db) throw new Error(`world: no txt_db '${name}' (have ${[...this.textDbs.keys()].join(', ')})`);
    return db;
  }

  /** Image file name of an image id in a store (RE readers derive names from image_id). */
  imageName(store: 'main' | 'gt' | 'det', imageId: number): string {
    return imageFileName({ name: WORLD_IMG_DBS[store] }, imageId);
  }

  counts(): WorldCounts {
    const imgDbs: WorldCounts['imgDbs'] = {};
    for (const [name, s] of this.imageStores) {
      let regions = 0;
      for (const k of s.keys()) regions += s.nbb(k);
      imgDbs[name] = { images: s.size, regions };
    }
    const txtDbs: Record<string, number> = {};
    for (const [name, db] of this.textDbs) txtDbs[name] = db.size;
    return {
      images: { train: this.splits.train.length, val: this.splits.val.length, test: this.splits.test.length },
      objects: this.scenes.reduce((a, s) => a + s.objects.length, 0),
      imgDbs,
      txtDbs,
      answers: Object.keys(this.ans2label).length,
    };
  }
}

/** Build the whole world in memory. Features are synthesised on first read of each image. */
export function generateWorld(options: WorldOptions = {}, encoder: TextEncoder = defaultTokenizer()): World {
  const opts = resolveWorldOptions(options);
  const { seed } = opts;
  const scenes: Scene[] = [];
  for (let i = 0; i < opts.numImages; i++) {
    const imageId = i + 1;
    scenes.push(
      generateScene(new Rng(seed, 'world-scene', imageId), imageId, imageId * 100, {
        minObjects: opts.minObjects,
        maxObjects: opts.maxObjects,
        minStuff: 1,
        maxStuff: 3,
      }),
    );
  }
  const splits = assignSplits(new Rng(seed, 'world-splits'), scenes, opts);

  const bank = new PrototypeBank(opts.imgDim, opts.detectorSeed);
  const storeOpts = { seed, imgDim: opts.imgDim, labelDim: opts.labelDim, cacheSize: opts.cacheSize, centreFeatures: opts.centreFeatures };
  const makeStore = (profile: DetectorProfile) =>
    new WorldImageStore(
      profile,
      scenes.map((sc) => layoutRegions(new Rng(seed, 'world-layout', profile.name, sc.imageId), sc, { ...profile, clutter: opts.clutter })),
      bank,
      storeOpts,
    );
  const imageStores = new Map<string, WorldImageStore>();
  for (const p of [MAIN_PROFILE, GT_PROFILE, DET_PROFILE]) imageStores.set(p.name, makeStore(p));

  const tok = memoEncoder(encoder);
  const mainName = (sc: Scene) => imageFileName(MAIN_PROFILE, sc.imageId);
  const gtName = (sc: Scene) => imageFileName(GT_PROFILE, sc.imageId);
  const ans2label = worldAns2Label();
  const textDbs = new Map<string, WorldTextDb>();
  const addDb = (db: WorldTextDb) => textDbs.set(db.name, db);

  // Captions: pre-training (train/val images) and retrieval (all splits) share the records.
  const captions = new Map<Scene, TextRecord[]>();
  for (const sc of scenes) {
    const texts = generateCaptions(new Rng(seed, 'world-captions', sc.imageId), sc, opts.captionsPerImage);
    captions.set(
      sc,
      texts.map((caption, k) => ({ id: `${sc.imageId}-${k}`, input_ids: tok(caption), img_fname: mainName(sc), caption, image_id: sc.imageId })),
    );
  }
  for (const split of SPLITS) {
    const dbs = split === 'test' ? [new WorldTextDb(`itm_world_${split}`, [MAIN_PROFILE.name])] : [new WorldTextDb(`pretrain_world_${split}`, [MAIN_PROFILE.name]), new WorldTextDb(`itm_world_${split}`, [MAIN_PROFILE.name])];
    for (const db of dbs) {
      for (const sc of splits[split]) for (const rec of captions.get(sc)!) db.add(rec);
      addDb(db);
    }
  }

  const ctx: BuildContext = { seed, opts, tok, ans2label, mainName, gtName };
  for (const split of SPLITS) {
    const scenesOf = splits[split];
    addDb(buildVqa(ctx, split, scenesOf));
    addDb(buildVe(ctx, split, scenesOf));
    addDb(buildNlvr2(ctx, split, scenesOf));
    addDb(buildRe(ctx, split, scenesOf));
    addDb(buildVcr(ctx, split, scenesOf));
  }
  // List the stores task by task, splits in order (the insertion order above is by split).
  const ordered = new Map<string, WorldTextDb>();
  for (const names of Object.values(WORLD_TXT_DBS)) for (const n of names) ordered.set(n, textDbs.get(n)!);
  if (ordered.size !== textDbs.size) throw new Error(`world: built txt_dbs ${[...textDbs.keys()]} differ from WORLD_TXT_DBS`);
  return new World(opts, scenes, splits, imageStores, ordered, ans2label);
}

/** Disjoint image splits; the sizes are rounded fractions (at least 2 images each). */
function assignSplits(rng: Rng, scenes: Scene[], opts: ResolvedWorldOptions): Record<Split, Scene[]> {
  const order = rng.shuffle([...scenes]);
  const nTest = Math.max(2, Math.round(scenes.length * opts.testFraction));
  const nVal = Math.max(2, Math.round(scenes.length * opts.valFraction));
  const byId = (a: Scene, b: Scene) => a.imageId - b.imageId;
  return {
    test: order.slice(0, nTest).sort(byId),
    val: order.slice(nTest, nTest + nVal).sort(byId),
    train: order.slice(nTest + nVal).sort(byId),
  };
}

/** What every task builder needs from generateWorld. */
interface BuildContext {
  seed: number;
  opts: ResolvedWorldOptions;
  tok: (text: string) => number[];
  ans2label: Record<string, number>;
  mainName: (s: Scene) => string;
  gtName: (s: Scene) => string;
}

/** VQA: questions with ten simulated annotations and soft scores; question_id = image id * 100 + k. */
function buildVqa({ seed, opts, tok, ans2label, mainName }: BuildContext, split: Split, scenes: readonly Scene[]): WorldTextDb {
  const db = new WorldTextDb(`vqa_world_${split}`, [MAIN_PROFILE.name]);
  for (const sc of scenes) {
    const rng = new Rng(seed, 'world-vqa', sc.imageId);
    generateVqaQuestions(rng, sc, opts.vqaPerImage).forEach((q, k) => {
      const questionId = sc.imageId * 100 + k;
      const { answers, target } = simulateAnnotators(rng, q, ans2label);
      db.add({
        id: String(questionId),
        question_id: questionId,
        image_id: sc.imageId,
        img_fname: mainName(sc),
        question: q.question,
        input_ids: tok(q.question),
        question_type: q.questionType,
        answer_type: q.answerType,
        answers,
        target,
      });
    });
  }
  return db;
}

/** SNLI-VE: hypotheses with one hard label (0 contradiction, 1 entailment, 2 neutral). */
function buildVe({ seed, opts, tok, mainName }: BuildContext, split: Split, scenes: readonly Scene[]): WorldTextDb {
  const db = new WorldTextDb(`ve_world_${split}`, [MAIN_PROFILE.name]);
  for (const sc of scenes) {
    generateVeHypotheses(new Rng(seed, 'world-ve', sc.imageId), sc, opts.vePerImage).forEach((h, k) => {
      const label = VE_LABELS.indexOf(h.label);
      db.add({ id: `${sc.imageId}-${k}`, image_id: sc.imageId, img_fname: mainName(sc), sentence: h.sentence, gold_label: h.label, input_ids: tok(h.sentence), target: { labels: [label], scores: [1.0] } });
    });
  }
  return db;
}

/**
 * VCR: img_fname = [ground-truth boxes, detections], as the official (gt, det) pair. Side files
 * id2len_qa.json (question + longest answer) and id2len_qar.json (question + right answer +
 * longest rationale) are the lengths the official reader filters by.
 */
function buildVcr({ seed, opts, tok, mainName, gtName }: BuildContext, split: Split, scenes: readonly Scene[]): WorldTextDb {
  const db = new WorldTextDb(`vcr_world_${split}`, [GT_PROFILE.name, MAIN_PROFILE.name]);
  const id2lenQa: Record<string, number> = {};
  const id2lenQar: Record<string, number> = {};
  for (const sc of scenes) {
    generateVcrItems(new Rng(seed, 'world-vcr', sc.imageId), sc, opts.vcrPerImage).forEach((item, k) => {
      const id = `${split}-${sc.imageId}-${k}`;
      const q = tok(item.question);
      const as = item.answers.map(tok);
      const rs = item.rationales.map(tok);
      id2lenQa[id] = q.length + Math.max(...as.map((a) => a.length));
      id2lenQar[id] = q.length + as[item.qaTarget].length + Math.max(...rs.map((r) => r.length));
      db.add({
        id,
        image_id: sc.imageId,
        img_fname: [gtName(sc), mainName(sc)],
        question: item.question,
        answer_choices: item.answers,
        rationale_choices: item.rationales,
        question_type: item.questionType,
        input_ids: q,
        input_ids_as: as,
        input_ids_rs: rs,
        qa_target: item.qaTarget,
        qar_target: item.qarTarget,
      });
    });
  }
  db.sideFiles['id2len_qa.json'] = id2lenQa;
  db.sideFiles['id2len_qar.json'] = id2lenQar;
  return db;
}

/**
 * NLVR2: statements grouped in sets; each set pairs one statement with up to 4 image pairs, half
 * true and half false. Identifiers follow NLVR2's `split-set-pair-sentence`, so the official
 * consistency metric (all pairs of a set right) applies.
 */
function buildNlvr2({ seed, opts, tok, mainName: fname }: BuildContext, split: Split, scenes: readonly Scene[]): WorldTextDb {
  const rng = new Rng(seed, 'world-nlvr2', split);
  const db = new WorldTextDb(`nlvr2_world_${split}`, [MAIN_PROFILE.name, MAIN_PROFILE.name]);
  const wanted = Math.round((scenes.length * opts.nlvr2PerImage) / 4);
  const randomPair = (): [Scene, Scene] => {
    const l = rng.choice(scenes);
    let r = rng.choice(scenes);
    while (r === l) r = rng.choice(scenes);
    return [l, r];
  };
  let set = 0;
  for (let attempts = 0; set < wanted && attempts < wanted * 20; attempts++) {
    const seedPair = randomPair();
    const st = makePairStatement(rng, seedPair[0]);
    if (!st) continue;
    const yes: Array<[Scene, Scene]> = [];
    const no: Array<[Scene, Scene]> = [];
    for (let t = 0; t < 60 && (yes.length < 2 || no.length < 2); t++) {
      const p = t === 0 ? seedPair : randomPair();
      (st.truth(p[0], p[1]) ? yes : no).push(p);
    }
    const k = Math.min(2, yes.length, no.length);
    if (k === 0) continue;
    const pairs = rng.shuffle([...yes.slice(0, k).map((p) => ({ p, truth: true })), ...no.slice(0, k).map((p) => ({ p, truth: false }))]);
    const ids = tok(st.sentence);
    pairs.forEach(({ p, truth }, pairIdx) => {
      const identifier = `${split}-${set}-${pairIdx}-0`;
      db.add({
        id: identifier,
        identifier,
        sentence: st.sentence,
        label: truth ? 'True' : 'False',
        target: truth ? 1 : 0,
        img_fname: [fname(p[0]), fname(p[1])],
        image_ids: [p[0].imageId, p[1].imageId],
        input_ids: ids,
      });
    });
    set++;
  }
  return db;
}

/**
 * Referring expressions with the official side files: refs.json, annotations.json,
 * categories.json (one category per shape) and images.json (ann_ids in GT feature-row order).
 */
function buildRe({ seed, opts, tok, gtName }: BuildContext, split: Split, scenes: readonly Scene[]): WorldTextDb {
  const db = new WorldTextDb(`re_world_${split}`, [GT_PROFILE.name, DET_PROFILE.name]);
  const refs: unknown[] = [];
  const annotations: unknown[] = [];
  const images: unknown[] = [];
  for (const sc of scenes) {
    const rng = new Rng(seed, 'world-re', sc.imageId);
    images.push({
      id: sc.imageId,
      file_name: gtName(sc),
      det_file_name: imageFileName(DET_PROFILE, sc.imageId),
      ann_ids: sc.objects.map((o) => o.annId),
      height: sc.height,
      width: sc.width,
    });
    for (const o of sc.objects) {
      annotations.push({ id: o.annId, area: boxArea(o.box), bbox: toXywh(o.box), image_id: sc.imageId, category_id: o.shape + 1, iscrowd: 0 });
    }
    // Refer to a random subset of the objects that the grammar can single out; records go in
    // annotation order, so numeric ids ascend (JSON files list integer-like keys in that order).
    const referable = new Map<number, string[]>();
    for (const o of rng.shuffle([...sc.objects])) {
      if (referable.size >= opts.refsPerImage) break;
      const sents = referringExpressions(rng, sc, o, opts.sentencesPerRef);
      if (sents.length > 0) referable.set(o.index, sents);
    }
    for (const o of sc.objects) {
      const sents = referable.get(o.index);
      if (!sents) continue;
      const refId = o.annId;
      const sentences = sents.map((sent, k) => ({ sent_id: refId * 10 + k, sent, tokens: sent.split(' ') }));
      refs.push({ ref_id: refId, ann_id: o.annId, image_id: sc.imageId, split, category_id: o.shape + 1, sent_ids: sentences.map((s) => s.sent_id), sentences });
      for (const s of sentences) {
        db.add({
          id: String(s.sent_id),
          sent_id: s.sent_id,
          sent: s.sent,
          ref_id: refId,
          ann_id: o.annId,
          image_id: sc.imageId,
          bbox: toXywh(o.box),
          input_ids: tok(s.sent),
          img_fname: gtName(sc),
        });
      }
    }
  }
  db.sideFiles['refs.json'] = refs;
  db.sideFiles['annotations.json'] = annotations;
  db.sideFiles['images.json'] = images;
  db.sideFiles['categories.json'] = SHAPES.map((name, i) => ({ id: i + 1, name, supercategory: 'shape' }));
  return db;
}

function memoEncoder(encoder: TextEncoder): (text: string) => number[] {
  const cache = new Map<string, number[]>();
  return (text) => {
    let ids = cache.get(text);
    if (!ids) {
      ids = encoder.encode(text);
      if (ids.length === 0) throw new Error(`world: tokenizer produced no wordpieces for '${text}'`);
      cache.set(text, ids);
    }
    return [...ids];
  };
}

