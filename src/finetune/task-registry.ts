/**
 * The downstream task registry and what the tasks share:
 *   - where a task's data comes from: the synthetic world (in memory, or a folder written by
 *     `uniter world`) by naming convention `<task>_world_<split>`, or official txt_db / img_db
 *     paths from a config file;
 *   - training batch streams and one-pass evaluation batches over the official token buckets;
 *   - `TaskDefinition`: how a task builds its model (config, head, checkpoint surgery), its
 *     training job for the shared trainer, and its evaluation (metrics + official results files).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TaskDataset } from '../data/datasets.js';
import { ImgDb, type ImgDbOptions } from '../data/imgdb.js';
import { TaskLoader, type LoadedBatch } from '../data/sampler.js';
import { TxtDb } from '../data/txtdb.js';
import type { Batch, ImageSource, TextSource } from '../data/types.js';
import type { Rng } from '../util/rng.js';
import { generateWorld, readWorldManifest, resolveWorldOptions, type World, type WorldOptions, type WorldPreset } from '../data/world.js';
import type { UniterConfig } from '../model/config.js';
import type { HeadName, HeadOptions } from '../model/params.js';
import type { UniterRunner } from '../model/runner.js';
import { recordedRun, type Evaluation, type FinetuneJob, type FinetuneSettings, type SurgeryHooks, type TrainBatchSource } from './trainer.js';
import { embeddedRecipe } from '../pretrain/run.js';
import { nlvr2Task } from './nlvr2.js';
import { reTask } from './refexp.js';
import { retrievalTask } from './retrieval.js';
import { vcrTask } from './vcr.js';
import { veTask } from './ve.js';
import { vqaTask } from './vqa.js';
import { readJsonFile } from '../util/json.js';
import { longestSequence, parameterCount, type TrainingMemoryInput } from '../pretrain/memory.js';

// ---------------------------------------------------------------------------------------------
// Data

/** One split of a task: its text records, the images they name, and the txt_db's side files. */
export interface SplitData {
  /** For messages: the txt_db name or path. */
  name: string;
  txt: TextSource;
  /** Images of img_fname (VCR: the detections, img_fname[1]). */
  img: ImageSource;
  /** VCR: ground-truth-box images (img_fname[0]). */
  gtImg?: ImageSource;
  /** A JSON side file of the txt_db (id2len_qar.json, refs.json...), or undefined when absent. */
  sideFile(file: string): unknown;
}

export interface TaskData {
  /** Where the data comes from, for messages. */
  describe: string;
  train: SplitData[];
  val: SplitData | null;
  test: SplitData | null;
  /** VQA answer vocabulary (answer -> label), when the data has one. */
  ans2label: Record<string, number> | null;
  close(): void;
}

/** Named stores of a world, in memory or on disk (the layout `uniter world` writes). */
export interface WorldStores {
  describe: string;
  hasText(name: string): boolean;
  split(name: string): SplitData;
  ans2label: Record<string, number> | null;
  close(): void;
}

/** The in-memory synthetic world. */
export function worldStores(world: World, describe = `synthetic world (preset ${world.options.preset}, seed ${world.options.seed}, in memory)`): WorldStores {
  return {
    describe,
    hasText: (name) => world.textDbs.has(name),
    split(name) {
      const db = world.textDb(name);
      const stores = db.imageStores.map((s) => world.imageStore(s));
      const vcrLike = db.imageStores.length === 2 && db.imageStores[0] !== db.imageStores[1];
      return {
        name,
        txt: db,
        img: vcrLike ? stores[1] : stores[0],
        gtImg: vcrLike ? stores[0] : undefined,
        sideFile: (file) => db.sideFiles[file],
      };
    },
    ans2label: { ...world.ans2label },
    close: () => undefined,
  };
}

/** A world folder written by `uniter world` (world.json + txt_db/ + img_db/ + ans2label.json). */
export function openWorldDir(dir: string): WorldStores {
  const manifest = readWorldManifest(dir);
  const opened: Array<{ close(): void }> = [];
  const images = new Map<string, ImgDb>();
  const image = (store: string): ImgDb => {
    let db = images.get(store);
    if (!db) {
      const info = manifest.imgDbs[store];
      if (!info) throw new Error(`${path.join(dir, 'world.json')}: no img_db '${store}' (have ${Object.keys(manifest.imgDbs).join(', ')})`);
      const { compress, ...opts } = info as typeof info & { compress?: boolean };
      db = ImgDb.open(path.join(dir, info.dir), { confTh: opts.confTh, maxBb: opts.maxBb, minBb: opts.minBb, numBb: opts.numBb, compressed: compress });
      images.set(store, db);
      opened.push(db);
    }
    return db;
  };
  const ans2labelFile = path.join(dir, manifest.ans2label ?? 'ans2label.json');
  return {
    describe: `synthetic world at ${dir}`,
    hasText: (name) => name in manifest.txtDbs,
    split(name) {
      const info = manifest.txtDbs[name];
      if (!info) throw new Error(`${path.join(dir, 'world.json')}: no txt_db '${name}' (have ${Object.keys(manifest.txtDbs).join(', ')})`);
      const txtDir = path.join(dir, info.dir);
      const txt = TxtDb.open(txtDir);
      opened.push(txt);
      const stores = info.imageStores.map(image);
      const vcrLike = info.imageStores.length === 2 && info.imageStores[0] !== info.imageStores[1];
      return { name, txt, img: vcrLike ? stores[1] : stores[0], gtImg: vcrLike ? stores[0] : undefined, sideFile: (file) => readSideFile(txtDir, file) };
    },
    ans2label: fs.existsSync(ans2labelFile) ? readAns2Label(ans2labelFile) : null,
    close: () => opened.forEach((o) => o.close()),
  };
}

/** The splits of a task in a world: `<prefix>_world_train|val|test`. */
export function taskDataFromWorld(stores: WorldStores, prefix: string): TaskData {
  const name = (split: string) => `${prefix}_world_${split}`;
  if (!stores.hasText(name('train'))) throw new Error(`${stores.describe}: no txt_db '${name('train')}' for task '${prefix}'`);
  return {
    describe: stores.describe,
    train: [stores.split(name('train'))],
    val: stores.hasText(name('val')) ? stores.split(name('val')) : null,
    test: stores.hasText(name('test')) ? stores.split(name('test')) : null,
    ans2label: stores.ans2label,
    close: () => stores.close(),
  };
}

/** Official txt_db / img_db paths (a config file's train_txt_dbs, val_img_db, ...). */
export interface DataPaths {
  train: Array<{ txt: string; img: string }>;
  val: { txt: string; img: string } | null;
  test: { txt: string; img: string } | null;
  ans2label: string | null;
  /** Reader options of detection img_dbs (official conf_th, max_bb, min_bb, num_bb). */
  imgOptions: ImgDbOptions;
}

/**
 * Open official stores. An img path may hold two stores separated by ';' (VCR: GT boxes and
 * detections); the one whose path contains 'gt' is the GT store, read with a fixed 100 boxes as
 * the official VCR trainer does.
 */
export function taskDataFromPaths(p: DataPaths): TaskData {
  const opened: Array<{ close(): void }> = [];
  const imgCache = new Map<string, ImgDb>();
  const openImg = (dir: string, gt: boolean): ImgDb => {
    const key = `${gt}:${dir}`;
    let db = imgCache.get(key);
    if (!db) {
      db = ImgDb.open(dir, gt ? { ...p.imgOptions, confTh: -1, numBb: 100 } : p.imgOptions);
      imgCache.set(key, db);
      opened.push(db);
    }
    return db;
  };
  const open = (s: { txt: string; img: string }): SplitData => {
    const parts = s.img.split(';').filter((x) => x.length > 0);
    if (parts.length === 0 || parts.length > 2) throw new Error(`img_db '${s.img}': expected one path, or 'gt_path;det_path' (VCR)`);
    const gtPath = parts.length === 2 ? parts.find((x) => x.includes('gt')) : undefined;
    if (parts.length === 2 && !gtPath) throw new Error(`img_db '${s.img}': of two stores, one path must contain 'gt' (the ground-truth boxes)`);
    const detPath = parts.find((x) => x !== gtPath);
    const txt = TxtDb.open(s.txt);
    opened.push(txt);
    const gtImg = gtPath ? openImg(gtPath, true) : undefined;
    return { name: s.txt, txt, img: detPath ? openImg(detPath, false) : gtImg!, gtImg: detPath ? gtImg : undefined, sideFile: (file) => readSideFile(s.txt, file) };
  };
  try {
    return {
      describe: `txt_db ${p.train.map((t) => t.txt).join(', ')}`,
      train: p.train.map(open),
      val: p.val ? open(p.val) : null,
      test: p.test ? open(p.test) : null,
      ans2label: p.ans2label ? readAns2Label(p.ans2label) : null,
      close: () => opened.forEach((o) => o.close()),
    };
  } catch (e) {
    opened.forEach((o) => o.close());
    throw e;
  }
}

/** Where `uniter finetune` / `uniter evaluate` read a task's data from. */
export interface DataChoice {
  /** Official stores (config file). */
  paths?: DataPaths | null;
  /** A world folder written by `uniter world`. */
  worldDir?: string | null;
  /** The synthetic world generated in memory with these options (e.g. the one a pre-training run used). */
  world?: WorldOptions | null;
  /** Otherwise the synthetic world is generated in memory with this preset (default 'default'). */
  worldPreset?: WorldPreset;
}

export function openTaskData(task: TaskDefinition, choice: DataChoice): TaskData {
  if (choice.paths) return taskDataFromPaths(choice.paths);
  if (choice.worldDir) return taskDataFromWorld(openWorldDir(choice.worldDir), task.worldPrefix);
  // Keep every decoded image in memory: synthesising features again for each batch costs more than the model step.
  const options: WorldOptions = choice.world ? { ...choice.world, cacheSize: 4000 } : { preset: choice.worldPreset ?? 'default', cacheSize: 4000 };
  const world = generateWorld(options);
  const describe = choice.world ? `synthetic world (preset ${world.options.preset}, seed ${world.options.seed}, ${world.options.minObjects}-${world.options.maxObjects} objects per image, in memory)` : undefined;
  return taskDataFromWorld(worldStores(world, describe), task.worldPrefix);
}

/**
 * The synthetic world that pre-trained these weights, when a run of `uniter pretrain` on the
 * world recorded it (trainer.json config.run.world; runs of the embedded default made before
 * the world was recorded used the embedded recipe's world). Fine-tuning on the same world's
 * downstream splits keeps the images pre-training held out as the tasks' val and test images.
 */
export function pretrainingWorldOf(weights: string): { world: WorldOptions; file: string } | null {
  const rec = recordedRun(weights);
  if (!rec || rec.run.task !== undefined) return null;
  const recorded = rec.run.world;
  if (recorded !== undefined) {
    if (!recorded || typeof recorded !== 'object' || Array.isArray(recorded)) throw new Error(`${rec.file}: config.run.world must be an object of world options, got ${JSON.stringify(recorded)}`);
    try {
      resolveWorldOptions(recorded as WorldOptions);
    } catch (e) {
      throw new Error(`${rec.file}: config.run.world: ${(e as Error).message}`);
    }
    return { world: recorded as WorldOptions, file: rec.file };
  }
  if (rec.run.embedded === true) return { world: embeddedRecipe().world, file: rec.file };
  return null;
}

/**
 * The data of `uniter finetune` / `uniter evaluate` when none is named: the synthetic world the
 * weights were pre-trained on when their run recorded one, else the main job's world (the world
 * `uniter pretrain` uses by default), so that "pre-train, then fine-tune" meets on one world and
 * a fresh initialization is compared on the same data. `why` says which, for messages.
 */
export function defaultWorldChoice(weights: string | null): { choice: DataChoice; why: string } {
  const recorded = weights ? pretrainingWorldOf(weights) : null;
  if (recorded) return { choice: { world: recorded.world }, why: `the world the weights were pre-trained on (recorded in ${recorded.file})` };
  return { choice: { world: embeddedRecipe().world }, why: "the main job's world (that of 'uniter pretrain' without --config)" };
}

function readSideFile(dir: string, file: string): unknown {
  const f = path.join(dir, file);
  if (!fs.existsSync(f)) return undefined;
  return readJsonFile(f, file);
}

/** Read and check an answer vocabulary: labels must be the integers 0..n-1, each used once. */
export function readAns2Label(file: string): Record<string, number> {
  return checkAns2Label(readJsonFile(file, 'the answer vocabulary'), file);
}

export function checkAns2Label(raw: unknown, source: string): Record<string, number> {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${source}: the answer vocabulary must be a JSON object {answer: label}`);
  const entries = Object.entries(raw as Record<string, unknown>);
  const seen = new Map<number, string>();
  for (const [answer, label] of entries) {
    if (!(typeof label === 'number' && Number.isInteger(label) && label >= 0 && label < entries.length)) {
      throw new Error(`${source}: answer '${answer}' has label ${JSON.stringify(label)}, expected an integer in 0..${entries.length - 1}`);
    }
    const other = seen.get(label);
    if (other !== undefined) throw new Error(`${source}: answers '${other}' and '${answer}' share label ${label}`);
    seen.set(label, answer);
  }
  return raw as Record<string, number>;
}

/** label -> answer string. */
export function label2answer(ans2label: Record<string, number>): string[] {
  const out: string[] = [];
  for (const [a, l] of Object.entries(ans2label)) out[l] = a;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Batches

/** The training stream of the shared trainer over a token-bucket loader. */
export function loaderSource<E>(loader: TaskLoader<E>, adapt?: (b: LoadedBatch) => LoadedBatch): TrainBatchSource {
  return {
    next() {
      const b = loader.next();
      const a = adapt ? adapt(b) : b;
      return { batch: a.batch, examples: a.ids.length };
    },
    state: () => loader.state(),
    restore: (s) => loader.restore(s as ReturnType<TaskLoader<E>['state']>),
    get dropped() {
      return loader.dropped;
    },
  };
}

/**
 * Several datasets of one task as one (official ConcatDatasetWithLens: VQA's train + trainval +
 * vg, VCR's qa + qar): indices run through the parts in order, lengths are concatenated.
 */
export class ConcatDataset<E> implements TaskDataset<E> {
  readonly ids: readonly string[];
  private readonly offsets: number[] = [];

  constructor(
    readonly task: string,
    private readonly parts: ReadonlyArray<TaskDataset<E>>,
  ) {
    if (parts.length === 0) throw new Error(`${task}: no datasets to concatenate`);
    let n = 0;
    const ids: string[] = [];
    parts.forEach((p, k) => {
      this.offsets.push(n);
      n += p.ids.length;
      // Example ids may repeat across parts (VCR qa and qar read one txt_db); prefix them by part.
      for (const id of p.ids) ids.push(parts.length > 1 ? `${k}:${id}` : id);
    });
    this.ids = ids;
  }

  private locate(i: number): [TaskDataset<E>, number] {
    for (let k = this.parts.length - 1; k >= 0; k--) if (i >= this.offsets[k]) return [this.parts[k], i - this.offsets[k]];
    throw new Error(`${this.task}: example index ${i} out of range`);
  }

  txtLens(): readonly number[] {
    return this.parts.flatMap((p) => [...p.txtLens()]);
  }

  lens(): readonly number[] {
    return this.parts.flatMap((p) => [...p.lens()]);
  }

  get(i: number, rng: Rng): E {
    const [part, j] = this.locate(i);
    return part.get(j, rng);
  }

  collate(examples: E[]): Batch {
    return this.parts[0].collate(examples);
  }
}

/** A training loader as the official trainers build it: token buckets, last batch dropped, long texts filtered. */
export function trainLoader<E>(dataset: TaskDataset<E>, s: FinetuneSettings): TaskLoader<E> {
  return new TaskLoader(dataset, { seed: s.seed, batchTokens: s.trainBatchTokens, dropLast: true, maxTxtLen: s.maxTxtLen });
}

/** One pass over every example of an evaluation split (no length filter, nothing dropped). */
export function* evaluationBatches<E>(dataset: TaskDataset<E>, batchTokens: number, seed: number): Generator<LoadedBatch> {
  if (dataset.ids.length === 0) throw new Error(`${dataset.task}: the evaluation split has no examples`);
  const loader = new TaskLoader(dataset, { seed: seed + 7919, batchTokens, dropLast: false });
  yield* loader.restOfEpoch();
}

// ---------------------------------------------------------------------------------------------
// Registry

export type EvalSplit = 'val' | 'test';

/** Task options a config file may set (official field names). */
export type TaskOptionValues = Record<string, unknown>;

export interface ModelPlan {
  /** The task's model configuration (VCR: vocabulary + 81, 4 token types; NLVR2: 3 token types). */
  cfg: UniterConfig;
  head: HeadName;
  headOptions: HeadOptions;
  hooks: SurgeryHooks;
}

export interface JobContext {
  data: TaskData;
  settings: FinetuneSettings;
  options: TaskOptionValues;
  plan: ModelPlan;
}

export interface EvaluateContext {
  data: TaskData;
  split: EvalSplit;
  /** Evaluation batch size (official val_batch_size: tokens; VCR: examples). */
  batchSize: number;
  seed: number;
  /** Goes into result file names. */
  tag: string;
  /** Task options the model was trained with (default: the task's optionDefaults). */
  options?: TaskOptionValues;
  /** Called after each forward pass: work done so far and the total (examples; retrieval: caption-image pairs). */
  onProgress?: (done: number, total: number) => void;
}

export interface TaskDefinition {
  name: string;
  summary: string;
  /** txt_db prefix in the synthetic world (`<prefix>_world_<split>`). */
  worldPrefix: string;
  /** Options a config file may set for this task, with their defaults. */
  optionDefaults: TaskOptionValues;
  /** The task's default settings on the synthetic world (defaults.ts holds those of vqa, ve, nlvr2, vcr). */
  defaultSettings?(steps?: number): FinetuneSettings;
  /** Check option values; throws naming the option. */
  checkOptions(options: TaskOptionValues, source: string): void;
  /** `seed` draws any new rows the surgery adds (VCR's extra word embeddings). */
  plan(base: UniterConfig, options: TaskOptionValues, data: TaskData, seed: number): ModelPlan;
  job(ctx: JobContext): FinetuneJob;
  /**
   * Rows (sequences) of the largest training micro-batch and validation batch where the task's
   * batch sizes count rows or examples rather than tokens (retrieval, RE, VCR validation): the
   * memory check then takes rows x the longest sequence as the batch's tokens.
   */
  batchRows?(settings: FinetuneSettings, options: TaskOptionValues): { train?: number; val?: number };
  /** Score one split with trained weights (the head variant is read from the runner's parameters). */
  evaluate(runner: UniterRunner, ctx: EvaluateContext): Promise<Evaluation>;
}

/**
 * The memory check's view of a fine-tuning run (see pretrain/memory.ts): the task model's
 * parameters, the encoder dropout of the settings, and the largest batches in joint tokens
 * (train_batch_size tokens, or rows x the longest sequence of the training images).
 */
export function finetuneMemoryInput(task: TaskDefinition, plan: ModelPlan, s: FinetuneSettings, options: TaskOptionValues, data: TaskData): TrainingMemoryInput {
  const L = longestSequence(data.train.flatMap((d) => (d.gtImg ? [{ img: d.img }, { img: d.gtImg }] : [{ img: d.img }])), s.maxTxtLen);
  const rows = task.batchRows?.(s, options) ?? {};
  return {
    run: 'fine-tuning',
    model: { ...plan.cfg, hidden_dropout_prob: s.dropout, attention_probs_dropout_prob: s.dropout },
    parameters: parameterCount(plan.cfg, plan.head, plan.headOptions),
    trainTokens: rows.train !== undefined ? rows.train * L : Math.max(s.trainBatchTokens, L),
    valTokens: rows.val !== undefined ? rows.val * L : Math.max(s.valBatchSize, L),
    seqLen: L,
    accumulation: s.accumulation,
    vocabularyHead: false,
    checkpointActivations: s.checkpointActivations ?? false,
    batchFields: `train_batch_size ${s.trainBatchTokens}, val_batch_size ${s.valBatchSize}`,
  };
}

/** The tasks of `uniter finetune` / `uniter evaluate`, by name. */
export function taskRegistry(): Map<string, TaskDefinition> {
  return new Map([vqaTask, veTask, nlvr2Task, vcrTask, retrievalTask, reTask].map((t) => [t.name, t]));
}

export function getTask(name: string): TaskDefinition {
  const t = taskRegistry().get(name);
  if (!t) throw new Error(`unknown task '${name}' (expected one of ${[...taskRegistry().keys()].join(', ')})`);
  return t;
}

/** Several evaluations (e.g. of val and test) as one. */
export function mergeEvaluations(parts: readonly Evaluation[]): Evaluation {
  const out: Evaluation = { metrics: {}, examples: {}, files: [] };
  for (const p of parts) {
    Object.assign(out.metrics, p.metrics);
    Object.assign(out.examples!, p.examples ?? {});
    out.files!.push(...(p.files ?? []));
  }
  return out;
}

/** Split of TaskData by name, or an error naming what is missing. */
export function splitOf(data: TaskData, split: EvalSplit, task: string): SplitData {
  const s = data[split];
  if (!s) throw new Error(`${data.describe}: task '${task}' has no ${split} split`);
  return s;
}
