/**
 * The full retrieval score matrix (every caption x every image of a split) cut into shards, so
 * that many workers can fill it: the plan, one shard's computation, the write-once shard store
 * and the assembly into the official results and R@1/5/10 both ways.
 *
 * Plan: the gallery of the split (buildGallery: captions in store order, images in first-appearance
 * order), captions sorted by length and images by region count (as scoreGallery orders them, so
 * padding stays small), then cut into blocks of `shardCaptions` captions x `shardImages` images.
 * Shard `c{C}-i{I}` is caption block C x image block I. Its scores are exactly what scoreGallery
 * gives for the sub-gallery of those captions and images (the same code computes them in-process
 * and on every worker), rows = its captions, columns = its images, in plan order.
 *
 * A shard job names its inputs by path (model folder, txt_db, img_db) and by ranges of the plan;
 * the worker rebuilds the plan from the stores and checks its fingerprint (a hash of the ordered
 * ids), so a worker that sees other data refuses the job instead of returning wrong scores.
 *
 * The --out directory:
 *   run.json            what the run computes (model hash, stores, plan fingerprint, shard geometry)
 *   shards/c{C}-i{I}.f32  each shard's scores (float32 little-endian), written atomically, once
 *   shards.log          one JSON line per stored shard (which worker, when): the audit trail
 *   scores.f32 + score_ids.json   the assembled matrix (captions x images, gallery order)
 *   retrieval_results.json        metrics, ground-truth ranks (as `uniter evaluate retrieval` writes)
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImgDb, type ImgDbOptions } from '../data/imgdb.js';
import { TxtDb } from '../data/txtdb.js';
import type { HostTensor } from '../engine/host.js';
import { buildGallery, DEFAULT_SCORING, scoreGallery, type Gallery } from '../finetune/retrieval.js';
import { metricsFromRanks, retrievalRanks, type RetrievalMetrics } from '../finetune/recall.js';
import { configNextToWeights, resolveWeightsPath } from '../finetune/trainer.js';
import { parseConfig } from '../model/config.js';
import { readWeightsAny } from '../model/load.js';
import { UniterRunner } from '../model/runner.js';
import { initRankOutput } from '../model/surgery.js';
import { writeFileAtomic } from '../util/atomic.js';
import { detectorIdentity } from '../detector/extract.js';
import type { ShardJob } from './queue.js';

export const RETRIEVAL_JOB = 'retrieval-shard';
/** Default pairs per shard: about a minute of a base model on 2 cores, a few KB of results. */
export const DEFAULT_SHARD_SIZE = 20_000;

export interface RetrievalInputs {
  /** Model folder (config.json + model.safetensors): a fine-tuned retrieval model or a pre-trained one (scored zero-shot by its ITM head). */
  model: string;
  txtDb: string;
  imgDb: string;
  imgDbOptions?: ImgDbOptions;
  /** Only the first N images of the gallery (and their captions). */
  maxImages?: number;
}

export interface ShardGeometry {
  shardCaptions: number;
  shardImages: number;
  imagesPerGroup: number;
  rowsPerBatch: number;
}

export interface RetrievalShardData {
  runId: string;
  shardId: string;
  inputs: RetrievalInputs;
  fingerprint: string;
  /** Ranges in plan order (captions by length, images by region count). */
  c0: number;
  c1: number;
  i0: number;
  i1: number;
  imagesPerGroup: number;
  rowsPerBatch: number;
}

export interface RetrievalShardResult {
  shardId: string;
  rows: number;
  cols: number;
  /** float32 little-endian, base64. */
  scores: string;
  seconds: number;
  worker?: string;
}

export interface RetrievalPlan {
  gallery: Gallery;
  /** Gallery caption / image indices in plan order. */
  capOrder: number[];
  imgOrder: number[];
  fingerprint: string;
}

export interface ShardSpec {
  id: string;
  c0: number;
  c1: number;
  i0: number;
  i1: number;
}

/** Open an img_db; when the default box rule has no store there, the folder's only nbb file names the rule. */
export function openImgDb(dir: string, opts?: ImgDbOptions): ImgDb {
  if (opts) return ImgDb.open(dir, opts);
  try {
    return ImgDb.open(dir);
  } catch (e) {
    if (!fs.existsSync(dir)) throw e;
    const rules = fs
      .readdirSync(dir)
      .map((n) => /^nbb_th([0-9.]+)_max(\d+)_min(\d+)\.json$/.exec(n) ?? /^feat_numbb(\d+)(?:_compressed)?$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null);
    if (rules.length !== 1) throw e;
    const m = rules[0];
    return m.length === 4 ? ImgDb.open(dir, { confTh: Number(m[1]), maxBb: Number(m[2]), minBb: Number(m[3]) }) : ImgDb.open(dir, { confTh: -1, numBb: Number(m[1]) });
  }
}

export function planRetrieval(gallery: Gallery): RetrievalPlan {
  const capOrder = gallery.txtIds.map((_, t) => t).sort((a, b) => gallery.txt.len(gallery.txtIds[a]) - gallery.txt.len(gallery.txtIds[b]) || a - b);
  const imgOrder = gallery.imgIds.map((_, j) => j).sort((a, b) => gallery.img.nbb(gallery.imgIds[a]) - gallery.img.nbb(gallery.imgIds[b]) || a - b);
  const h = crypto.createHash('sha256');
  for (const t of capOrder) h.update(`${gallery.txtIds[t]}\0${gallery.txt2img.get(gallery.txtIds[t])}\0`);
  h.update('\0\0');
  for (const j of imgOrder) h.update(`${gallery.imgIds[j]}\0`);
  return { gallery, capOrder, imgOrder, fingerprint: h.digest('hex').slice(0, 32) };
}

/** Shard geometry from a pair budget: whole scoring groups of images, as many captions as fit. */
export function shardGeometry(plan: RetrievalPlan, o: { shardSize?: number; shardImages?: number; shardCaptions?: number; imagesPerGroup?: number; rowsPerBatch?: number }): ShardGeometry {
  const pos = (v: number | undefined, name: string) => {
    if (v !== undefined && !(Number.isInteger(v) && v >= 1)) throw new Error(`${name} must be a positive integer, got ${v}`);
    return v;
  };
  const size = pos(o.shardSize, '--shard-size') ?? DEFAULT_SHARD_SIZE;
  const imagesPerGroup = pos(o.imagesPerGroup, '--images-per-group') ?? DEFAULT_SCORING.imagesPerGroup;
  const rowsPerBatch = pos(o.rowsPerBatch, '--batch-size') ?? DEFAULT_SCORING.rowsPerBatch;
  const ni = plan.imgOrder.length;
  const nt = plan.capOrder.length;
  const shardImages = Math.min(ni, pos(o.shardImages, '--shard-images') ?? Math.min(imagesPerGroup, size));
  const shardCaptions = Math.min(nt, pos(o.shardCaptions, '--shard-captions') ?? Math.max(1, Math.floor(size / shardImages)));
  return { shardCaptions, shardImages, imagesPerGroup, rowsPerBatch };
}

export function shardSpecs(plan: RetrievalPlan, g: ShardGeometry): ShardSpec[] {
  const nt = plan.capOrder.length;
  const ni = plan.imgOrder.length;
  const cw = String(Math.ceil(nt / g.shardCaptions) - 1).length;
  const iw = String(Math.ceil(ni / g.shardImages) - 1).length;
  const out: ShardSpec[] = [];
  for (let c0 = 0, C = 0; c0 < nt; c0 += g.shardCaptions, C++) {
    for (let i0 = 0, I = 0; i0 < ni; i0 += g.shardImages, I++) {
      out.push({ id: `c${String(C).padStart(cw, '0')}-i${String(I).padStart(iw, '0')}`, c0, c1: Math.min(nt, c0 + g.shardCaptions), i0, i1: Math.min(ni, i0 + g.shardImages) });
    }
  }
  return out;
}

/** A model folder as a runner that scores retrieval (rank_output from itm_output when the model has none). */
export function loadRetrievalModel(dir: string, threads?: number): UniterRunner {
  const weights = resolveWeightsPath(dir);
  const stored = configNextToWeights(weights);
  if (!stored) throw new Error(`--model ${dir}: no config.json next to the weights (a model folder holds config.json + model.safetensors)`);
  const cfg = parseConfig(stored, weights);
  const params = new Map<string, HostTensor>(readWeightsAny(weights));
  if (!params.has('rank_output.weight')) {
    if (!params.has('itm_output.weight')) throw new Error(`--model ${dir}: the model has neither a retrieval head (rank_output) nor an ITM head (itm_output) to score with`);
    initRankOutput(params);
  }
  return new UniterRunner(cfg, params, threads);
}

/** Opened stores, gallery and plan of a run's inputs (workers keep one per inputs). */
export class RetrievalContext {
  private plans = new Map<string, { plan: RetrievalPlan; close(): void }>();
  private models = new Map<string, UniterRunner>();

  constructor(private readonly threads?: number) {}

  plan(inputs: RetrievalInputs): RetrievalPlan {
    const key = JSON.stringify([inputs.txtDb, inputs.imgDb, inputs.imgDbOptions ?? null, inputs.maxImages ?? null]);
    let hit = this.plans.get(key);
    if (!hit) {
      const txt = TxtDb.open(inputs.txtDb);
      let img: ImgDb;
      try {
        img = openImgDb(inputs.imgDb, inputs.imgDbOptions);
      } catch (e) {
        txt.close();
        throw e;
      }
      const plan = planRetrieval(buildGallery({ txt, img }, { maxImages: inputs.maxImages }));
      hit = { plan, close: () => (txt.close(), img.close()) };
      this.plans.set(key, hit);
    }
    return hit.plan;
  }

  model(dir: string): UniterRunner {
    let m = this.models.get(dir);
    if (!m) this.models.set(dir, (m = loadRetrievalModel(dir, this.threads)));
    return m;
  }

  /** One shard's scores (rows: its captions, columns: its images, plan order). */
  async score(d: RetrievalShardData): Promise<RetrievalShardResult> {
    const t0 = performance.now();
    const plan = this.plan(d.inputs);
    if (plan.fingerprint !== d.fingerprint) {
      throw new Error(`shard ${d.shardId}: the stores at ${d.inputs.txtDb} and ${d.inputs.imgDb} hold other captions or images here than where the run was planned (fingerprint ${plan.fingerprint}, the run's ${d.fingerprint}); every worker must see the same files at the same paths`);
    }
    const runner = this.model(d.inputs.model);
    const g = plan.gallery;
    const sub: Gallery = { ...g, txtIds: plan.capOrder.slice(d.c0, d.c1).map((t) => g.txtIds[t]), imgIds: plan.imgOrder.slice(d.i0, d.i1).map((j) => g.imgIds[j]) };
    const m = await scoreGallery(runner, sub, { imagesPerGroup: d.imagesPerGroup, rowsPerBatch: d.rowsPerBatch });
    return { shardId: d.shardId, rows: sub.txtIds.length, cols: sub.imgIds.length, scores: Buffer.from(m.scores.buffer, m.scores.byteOffset, m.scores.byteLength).toString('base64'), seconds: (performance.now() - t0) / 1000 };
  }

  close(): void {
    for (const p of this.plans.values()) p.close();
    this.plans.clear();
  }
}

/** Hash of the model folder's files (config and weights). */
export function modelIdentity(dir: string): string {
  const weights = resolveWeightsPath(dir);
  return detectorIdentity(fs.statSync(weights).isDirectory() ? weights : path.dirname(weights));
}

export interface RunDescription {
  runId: string;
  model: string;
  modelHash: string;
  inputs: RetrievalInputs;
  fingerprint: string;
  captions: number;
  images: number;
  geometry: ShardGeometry;
  shards: number;
}

export function describeRun(inputs: RetrievalInputs, plan: RetrievalPlan, geometry: ShardGeometry): RunDescription {
  const modelHash = modelIdentity(inputs.model);
  const what = { modelHash, fingerprint: plan.fingerprint, geometry, imgDbOptions: inputs.imgDbOptions ?? null };
  const runId = crypto.createHash('sha256').update(JSON.stringify(what)).digest('hex').slice(0, 16);
  return { runId, model: inputs.model, modelHash, inputs, fingerprint: plan.fingerprint, captions: plan.capOrder.length, images: plan.imgOrder.length, geometry, shards: shardSpecs(plan, geometry).length };
}

export class RunStoreError extends Error {}

/** The --out directory of a run: write-once shard files, the log, the assembled outputs. */
export class ShardStore {
  readonly shardDir: string;
  private readonly log: string;

  constructor(
    readonly dir: string,
    readonly run: RunDescription,
    opts: { overwrite?: boolean } = {},
  ) {
    this.shardDir = path.join(dir, 'shards');
    this.log = path.join(dir, 'shards.log');
    const runFile = path.join(dir, 'run.json');
    if (fs.existsSync(runFile)) {
      let prev: Partial<RunDescription> = {};
      try {
        prev = JSON.parse(fs.readFileSync(runFile, 'utf8')) as RunDescription;
      } catch {
        /* unreadable: treated as another run */
      }
      if (prev.runId !== run.runId) {
        if (!opts.overwrite) throw new RunStoreError(`--out ${dir}: holds shards of another run (${prev.runId ?? 'unreadable run.json'}: other model, stores or shard sizes; this one is ${run.runId}); pass --overwrite to discard them or choose another --out`);
        fs.rmSync(this.shardDir, { recursive: true, force: true });
        fs.rmSync(this.log, { force: true });
      }
    } else if (fs.existsSync(dir) && fs.readdirSync(dir).length > 0 && !opts.overwrite) {
      throw new RunStoreError(`--out ${dir}: exists, is not empty and holds no run.json; choose an empty or new folder (or --overwrite)`);
    }
    fs.mkdirSync(this.shardDir, { recursive: true });
    writeFileAtomic(runFile, JSON.stringify(run, null, 1) + '\n');
  }

  file(id: string): string {
    return path.join(this.shardDir, `${id}.f32`);
  }

  has(id: string): boolean {
    return fs.existsSync(this.file(id));
  }

  /** Store a shard's result once (a second delivery of the same shard is ignored: returns false). */
  put(spec: ShardSpec, r: RetrievalShardResult, worker?: string): boolean {
    if (r.shardId !== spec.id) throw new Error(`result of shard ${r.shardId} delivered for shard ${spec.id}`);
    const rows = spec.c1 - spec.c0;
    const cols = spec.i1 - spec.i0;
    if (r.rows !== rows || r.cols !== cols) throw new Error(`shard ${spec.id}: result is ${r.rows} x ${r.cols}, expected ${rows} x ${cols}`);
    const bytes = Buffer.from(r.scores, 'base64');
    if (bytes.length !== rows * cols * 4) throw new Error(`shard ${spec.id}: ${bytes.length} bytes of scores, expected ${rows * cols * 4}`);
    const s = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    for (let k = 0; k < s.length; k++) if (!Number.isFinite(s[k])) throw new Error(`shard ${spec.id}: score ${k} is ${s[k]}`);
    if (this.has(spec.id)) return false;
    writeFileAtomic(this.file(spec.id), bytes);
    fs.appendFileSync(this.log, JSON.stringify({ shard: spec.id, worker: worker ?? r.worker ?? null, seconds: r.seconds, at: new Date().toISOString() }) + '\n');
    return true;
  }

  read(spec: ShardSpec): Float32Array {
    const b = fs.readFileSync(this.file(spec.id));
    const n = (spec.c1 - spec.c0) * (spec.i1 - spec.i0);
    if (b.length !== n * 4) throw new Error(`${this.file(spec.id)}: ${b.length} bytes, expected ${n * 4}`);
    return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  }
}

/** The caption x image matrix (gallery order) from every shard's file. */
export function assembleMatrix(plan: RetrievalPlan, specs: readonly ShardSpec[], store: ShardStore): Float32Array {
  const ni = plan.imgOrder.length;
  const out = new Float32Array(plan.capOrder.length * ni);
  for (const s of specs) {
    const v = store.read(s);
    const cols = s.i1 - s.i0;
    for (let r = s.c0; r < s.c1; r++) {
      const t = plan.capOrder[r];
      for (let c = s.i0; c < s.i1; c++) out[t * ni + plan.imgOrder[c]] = v[(r - s.c0) * cols + (c - s.i0)];
    }
  }
  return out;
}

export interface RetrievalOutputs {
  metrics: RetrievalMetrics;
  files: string[];
}

/** Write the matrix, its ids and the official results (metrics and ground-truth ranks), atomically. */
export function writeRetrievalOutputs(dir: string, plan: RetrievalPlan, scores: Float32Array, extra: Record<string, unknown> = {}): RetrievalOutputs {
  const g = plan.gallery;
  const ranks = retrievalRanks({ txtIds: g.txtIds, imgIds: g.imgIds, scores }, g.txt2img);
  const metrics = metricsFromRanks(ranks);
  const files = [path.join(dir, 'scores.f32'), path.join(dir, 'score_ids.json'), path.join(dir, 'retrieval_results.json')];
  writeFileAtomic(files[0], new Uint8Array(scores.buffer, scores.byteOffset, scores.byteLength));
  writeFileAtomic(files[1], JSON.stringify({ layout: 'float32 little-endian, row-major [captions, images]', txtIds: g.txtIds, imgIds: g.imgIds }) + '\n');
  const results = {
    metrics,
    captions: g.txtIds.length,
    images: g.imgIds.length,
    ...extra,
    image_rank: Object.fromEntries(g.txtIds.map((t, i) => [t, ranks.imageRanks[i]])),
    text_rank: Object.fromEntries(g.imgIds.map((im, j) => [im, ranks.textRanks[j]])),
  };
  writeFileAtomic(files[2], JSON.stringify(results) + '\n');
  return { metrics, files };
}

/** The shard jobs of a run. */
export function retrievalJobs(run: RunDescription, specs: readonly ShardSpec[]): Array<ShardJob<RetrievalShardData>> {
  return specs.map((s) => ({
    id: s.id,
    name: RETRIEVAL_JOB,
    data: { runId: run.runId, shardId: s.id, inputs: run.inputs, fingerprint: run.fingerprint, c0: s.c0, c1: s.c1, i0: s.i0, i1: s.i1, imagesPerGroup: run.geometry.imagesPerGroup, rowsPerBatch: run.geometry.rowsPerBatch },
  }));
}
