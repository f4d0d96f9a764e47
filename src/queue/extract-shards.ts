/**
 * Region extraction in batches of images on `uniter worker`s (uniter extract --redis).
 *
 * A batch job names its images by path (every worker must read them at the same paths) and the
 * detector by folder path and content hash; a worker whose detector folder or image decoder
 * differs refuses the job (its regions would not match the other workers'). The worker returns,
 * per image, the BUTD npz bytes extractRegions caches (or why the image was refused); the
 * coordinator writes them into STORE/.extract-cache/ atomically, once per image, and builds the
 * img_db from the cache at the end exactly as a local run does.
 *
 * Batch ids are a hash of the batch's image keys and files, so a rerun (after some images were
 * cached) never takes the value of an older, different batch for its own.
 */
import * as crypto from 'node:crypto';
import { detectionToButd, detectorIdentity, type RegionDetector, type RemoteExtractor, type RemoteImageResult } from '../detector/extract.js';
import { writeNpz } from '../data/npz.js';
import { DECODER_VERSION, decodeImage, ImageDecodeError, type DecodeLimits } from '../vision/decode.js';
import { runInProcess, runOnQueue, type QueueRunOptions, type ShardJob } from './queue.js';

export const EXTRACT_JOB = 'extract-batch';
export const DEFAULT_EXTRACT_BATCH = 8;

export interface ExtractBatchData {
  detectorDir: string;
  detectorId: string;
  decoder: string;
  limits: Partial<DecodeLimits>;
  images: Array<{ file: string; key: string }>;
}

export interface ExtractBatchResult {
  images: RemoteImageResult[];
  worker?: string;
}

async function loadDetector(dir: string, threads: number | undefined): Promise<RegionDetector> {
  const spec = new URL('../detector/detector.js', import.meta.url).href;
  const mod = (await import(spec)) as { Detector: { fromPretrained(d: string, o?: { threads?: number }): Promise<RegionDetector> } };
  return mod.Detector.fromPretrained(dir, threads === undefined ? {} : { threads });
}

/** A worker's detectors (one per folder) and the batch computation. */
export class ExtractContext {
  private detectors = new Map<string, Promise<{ det: RegionDetector; id: string }>>();

  constructor(
    private readonly threads?: number,
    /** Tests inject a detector; default: Detector.fromPretrained. */
    private readonly load: (dir: string, threads: number | undefined) => Promise<RegionDetector> = loadDetector,
  ) {}

  private detector(dir: string): Promise<{ det: RegionDetector; id: string }> {
    let d = this.detectors.get(dir);
    if (!d) {
      d = (async () => ({ id: detectorIdentity(dir), det: await this.load(dir, this.threads) }))();
      d.catch(() => this.detectors.delete(dir));
      this.detectors.set(dir, d);
    }
    return d;
  }

  async run(d: ExtractBatchData): Promise<ExtractBatchResult> {
    if (d.decoder !== DECODER_VERSION) throw new Error(`this worker decodes images with ${DECODER_VERSION}, the run was started with ${d.decoder}; use the same uniter-ts install on every worker`);
    const { det, id } = await this.detector(d.detectorDir);
    if (id !== d.detectorId) throw new Error(`detector folder ${d.detectorDir} holds other weights here (${id}) than where the run was started (${d.detectorId})`);
    const images: RemoteImageResult[] = [];
    for (const { file, key } of d.images) {
      let img;
      try {
        img = await decodeImage(file, { limits: d.limits });
      } catch (e) {
        images.push({ file, key, ok: false, kind: e instanceof ImageDecodeError ? e.kind : 'decode', reason: e instanceof ImageDecodeError ? e.reason : (e as Error).message });
        continue;
      }
      try {
        const detection = await det.detect(img);
        const bytes = writeNpz(detectionToButd(detection, 'detector output'), false);
        images.push({ file, key, ok: true, npz: Buffer.from(bytes).toString('base64'), numBoxes: detection.numBoxes });
      } catch (e) {
        images.push({ file, key, ok: false, kind: 'detector', reason: (e as Error).message });
      }
    }
    return { images };
  }
}

export interface DistributedExtractOptions {
  detectorDir: string;
  /** Distinguishes runs of the same images and detector into different stores (the store path). */
  runTag: string;
  /** Images per job (default 8). */
  batchImages?: number;
  /** The queue; null: batches run in this process through `context`. */
  queue: Omit<QueueRunOptions, 'runKey'> | null;
  context?: ExtractContext;
  say?: (line: string) => void;
}

/** A RemoteExtractor for extractRegions: the images to do, in batches, on the queue's workers. */
export function distributedExtractor(o: DistributedExtractOptions): RemoteExtractor {
  const per = o.batchImages ?? DEFAULT_EXTRACT_BATCH;
  if (!(Number.isInteger(per) && per >= 1)) throw new Error(`--batch-images must be a positive integer, got ${per}`);
  return async ({ todo, detectorId, limits, onResult, isCached, signal }) => {
    const jobs: Array<ShardJob<ExtractBatchData>> = [];
    for (let k = 0; k < todo.length; k += per) {
      const images = todo.slice(k, k + per);
      const h = crypto.createHash('sha256');
      for (const im of images) h.update(`${im.key}\0${im.file}\0`);
      jobs.push({ id: `b${h.digest('hex').slice(0, 20)}`, name: EXTRACT_JOB, data: { detectorDir: o.detectorDir, detectorId, decoder: DECODER_VERSION, limits, images } });
    }
    const byId = new Map(jobs.map((j) => [j.id, j]));
    const run = {
      jobs,
      isDone: (id: string) => byId.get(id)!.data.images.every((im) => isCached(im.key)),
      accept: (id: string, r: ExtractBatchResult) => {
        const want = byId.get(id)!.data.images;
        if (!r || !Array.isArray(r.images) || r.images.length !== want.length || r.images.some((x, n) => x.key !== want[n].key)) throw new Error(`batch ${id}: the result does not list the batch's images`);
        for (const x of r.images) onResult(x);
      },
      say: o.say,
      signal,
    };
    const outcome = o.queue
      ? await runOnQueue(run, { ...o.queue, runKey: crypto.createHash('sha256').update(`${o.runTag}\0${detectorId}\0${DECODER_VERSION}\0${JSON.stringify(limits)}`).digest('hex').slice(0, 16) })
      : await runInProcess(run, { [EXTRACT_JOB]: (d: ExtractBatchData) => (o.context ?? new ExtractContext()).run(d) });
    // A batch that failed every attempt: each of its images is a failure with the batch's error.
    for (const f of outcome.failed) {
      for (const im of byId.get(f.id)!.data.images) if (!isCached(im.key)) onResult({ file: im.file, key: im.key, ok: false, kind: 'worker', reason: `its batch ${f.id} failed ${f.attempts} times: ${f.error}` });
    }
    return { aborted: outcome.aborted };
  };
}
