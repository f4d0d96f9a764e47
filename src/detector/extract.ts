/**
 * Region extraction from raw images into an official img_db (what BUTD's `generate_npz.py` +
 * UNITER's `scripts/convert_imgdir.py` produce), resumable and tolerant of bad images.
 *
 * Layout of the store directory STORE (an img_db directory, e.g. `img_db/mydata`):
 *   feat_th{conf_th}_max{max_bb}_min{min_bb}[_compressed]/   LMDB, written by `writeImgDb`
 *   nbb_th{conf_th}_max{max_bb}_min{min_bb}.json              {key: nbb}
 *   extract-report.json   counts, the images done and failed with reasons, settings, timing
 *   .extract-cache/       while a run is unfinished or some image failed:
 *       identity.json     the detector and decoder the cached results come from
 *       KEY               one BUTD npz per image done, written atomically
 *
 * Image key = the file name without its extension + `.npz` (`foo.jpg` -> `foo.npz`): the name of
 * the per-image npz the BUTD extractor writes, which `convert_imgdir.py` uses as LMDB key and
 * which txt_db records name in `img_fname`. Two inputs with the same key are a failure of the
 * second one.
 *
 * The cache holds the detector's whole selection per image (float16 `features` [n, D], `norm_bb`
 * [n, 6], `conf` [n, 1], `soft_labels` [n, K + 1]; the golden `uniter/imgN.npz` layout), so the
 * box-count rule and the value format only shape the final store and may change between a run
 * and its resumption; the detector (hash of its folder) and the decoder may not. The img_db is
 * built at the end from every image done; when no image failed the cache is removed and the
 * report says `complete: true`. A later run into a complete store is refused unless
 * `overwrite` (which extracts everything again).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DetectorConfig } from './config.js';
import type { BoxCountRule, Detection, RgbImage } from './types.js';
import { UNITER_BOX_RULE } from './types.js';
import { imgDbNames, writeImgDb, type ImageFeatures } from '../data/imgdb.js';
import { butdFromArrays, float32ToHalfArray, readNpz, writeNpz, type NpyArray } from '../data/npz.js';
import { writeFileAtomic } from '../util/atomic.js';
import { isJsonObject } from '../util/json.js';
import { DECODER_VERSION, DEFAULT_DECODE_LIMITS, decodeImage, ImageDecodeError, type DecodeLimits, type DecodedImage } from '../vision/decode.js';

/** What extraction needs from a detector (`Detector` in detector.ts has this shape). */
export interface RegionDetector {
  readonly config: DetectorConfig;
  /** The reference's final selection for one image, rows in descending confidence. */
  detect(image: RgbImage): Promise<Detection>;
}

export class ExtractError extends Error {
  constructor(
    message: string,
    /** usage: bad options; exists: a store is in the way; mismatch: the cache is from another detector. */
    readonly code: 'usage' | 'exists' | 'mismatch',
  ) {
    super(message);
  }
}

export const CACHE_DIR = '.extract-cache';
export const REPORT_FILE = 'extract-report.json';
const IDENTITY_FILE = 'identity.json';
const CACHE_FORMAT = 1;

/** File extensions `--images-dir` picks up (unsupported image formats among them are reported). */
export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.webp', '.gif', '.bmp', '.tif', '.tiff', '.avif', '.heic', '.heif', '.jxl', '.jp2'];

/** img_db key of an image file: base name without extension + `.npz`. */
export function imageKey(file: string): string {
  return `${path.parse(file).name}.npz`;
}

/** The image files of a folder (not recursive, no hidden files), sorted by name. */
export function listImages(dir: string): { images: string[]; ignored: string[] } {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    throw new ExtractError(`--images-dir ${dir}: cannot list folder (${(e as Error).message})`, 'usage');
  }
  const images: string[] = [];
  const ignored: string[] = [];
  for (const n of names.sort()) {
    if (n.startsWith('.')) continue;
    const f = path.join(dir, n);
    if (IMAGE_EXTENSIONS.includes(path.extname(n).toLowerCase()) && !fs.statSync(f).isDirectory()) images.push(f);
    else ignored.push(f);
  }
  return { images, ignored };
}

/**
 * A detection as the arrays of a BUTD per-image npz (float16, member order of the golden
 * `uniter/imgN.npz`). Throws naming `where` on inconsistent sizes, non-finite values or values
 * outside the float16 range.
 */
export function detectionToButd(det: Detection, where: string): Map<string, NpyArray> {
  const n = det.numBoxes;
  if (!Number.isInteger(n) || n < 1) throw new Error(`${where}: the detector returned ${n} boxes (need at least 1)`);
  const D = det.featureDim;
  const L = det.labelDim;
  const want: Array<[string, ArrayLike<number>, number]> = [
    ['norm_bb', det.normBb, 6],
    ['features', det.features, D],
    ['conf', det.conf, 1],
    ['soft_labels', det.softLabels, L],
  ];
  const out = new Map<string, NpyArray>();
  for (const [name, values, width] of want) {
    if (!Number.isInteger(width) || width < 1) throw new Error(`${where}: ${name} width ${width} is not a positive integer`);
    if (values.length !== n * width) throw new Error(`${where}: ${name} has ${values.length} values, expected ${n} x ${width}`);
    const half = float32ToHalfArray(values);
    for (let i = 0; i < half.length; i++) {
      // float16 exponent all ones = Inf or NaN: either the detector gave a non-finite value or it overflowed float16.
      if ((half[i] & 0x7c00) === 0x7c00) {
        const v = values[i];
        throw new Error(`${where}: ${name} row ${Math.floor(i / width)} holds ${v}${Number.isFinite(v) ? ' (outside the float16 range of the store)' : ' (NaN or infinite)'}`);
      }
    }
    out.set(name, { dtype: '<f2', shape: [n, width], data: half });
  }
  return out;
}

/** Read back one cached / per-image npz as writer input. */
function readButd(file: string, key: string): ImageFeatures {
  const f = butdFromArrays(readNpz(fs.readFileSync(file), file), file);
  return { fname: key, features: f.features, normBb: f.normBb, conf: f.conf, softLabels: f.softLabels, numBoxes: f.numBoxes };
}

export interface ExtractEvent {
  /** 1-based position among the images of this run. */
  index: number;
  total: number;
  file: string;
  key: string;
  /** done: extracted now; cached: done by an earlier run; failed: see reason. */
  status: 'done' | 'cached' | 'failed';
  reason?: string;
  numBoxes?: number;
}

/** One image's outcome from a remote extractor: the cache's npz bytes, or why it was refused. */
export type RemoteImageResult = { file: string; key: string } & ({ ok: true; npz: string; numBoxes: number } | { ok: false; kind: string; reason: string });

/**
 * Extraction elsewhere (src/queue/extract-shards.ts: batches on `uniter worker`s): computes the
 * `todo` images and hands each result to `onResult`, which caches it here atomically (a second
 * delivery of a key already cached or failed is ignored, so each image is stored once).
 */
export type RemoteExtractor = (args: {
  todo: Array<{ file: string; key: string }>;
  detectorId: string;
  limits: Partial<DecodeLimits>;
  onResult: (r: RemoteImageResult) => void;
  isCached: (key: string) => boolean;
  signal?: AbortSignal;
}) => Promise<{ aborted: boolean }>;

export interface ExtractOptions {
  /** The detector, for extraction in this process (not needed with `remote`). */
  detector?: RegionDetector;
  /** Extract elsewhere (e.g. on queue workers); the cache and the store are handled here as for a local run. */
  remote?: RemoteExtractor;
  /** Identity of the detector's weights and config (see `detectorIdentity`); recorded with the cache. */
  detectorId: string;
  /** Image files, in store order. */
  images: string[];
  /** The img_db directory to write. */
  out: string;
  rule?: Partial<BoxCountRule>;
  /** npz values (`_compressed` store) instead of msgpack. */
  compress?: boolean;
  /** Also write one BUTD npz per image into this folder (np.savez_compressed layout). */
  npzDir?: string;
  /** Replace a complete store, or discard a cache made by another detector. */
  overwrite?: boolean;
  limits?: Partial<DecodeLimits>;
  /** Files of an --images-dir that are not images (reported, not failures). */
  ignored?: string[];
  /** Stop after the image in flight (the cache keeps what is done; no store is written). */
  signal?: AbortSignal;
  onImage?: (e: ExtractEvent) => void;
  /** Called once before the first image is extracted: `already` images are accounted for (cached or refused up front). */
  onStart?: (info: { total: number; already: number }) => void;
  /** Clock in ms (tests inject one). */
  now?: () => number;
}

export interface ExtractFailure {
  file: string;
  key: string;
  kind: string;
  reason: string;
}

export interface ExtractReport {
  /** Every image is in the store (no failure, not aborted). */
  complete: boolean;
  aborted: boolean;
  store: string;
  /** The LMDB directory and the nbb file written (null when no image succeeded or aborted). */
  imgDb: string | null;
  nbbJson: string | null;
  npzDir: string | null;
  detector: string;
  decoder: string;
  rule: BoxCountRule;
  compress: boolean;
  counts: { images: number; done: number; extracted: number; resumed: number; failed: number; ignored: number };
  /** Images in the store, in store order. */
  done: Array<{ file: string; key: string; boxes: number; nbb: number }>;
  failed: ExtractFailure[];
  ignored: string[];
  /** Wall time of this run and images extracted per second (cached ones not counted). */
  seconds: number;
  imagesPerSecond: number;
}

/** Hash of a detector folder: every regular, non-hidden file's name and content. */
export function detectorIdentity(dir: string): string {
  const h = crypto.createHash('sha256');
  for (const name of fs.readdirSync(dir).sort()) {
    if (name.startsWith('.')) continue;
    const f = path.join(dir, name);
    if (!fs.statSync(f).isFile()) continue;
    h.update(`${name}\0`);
    const fd = fs.openSync(f, 'r');
    try {
      const buf = Buffer.alloc(1 << 22);
      let n: number;
      while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) h.update(buf.subarray(0, n));
    } finally {
      fs.closeSync(fd);
    }
    h.update('\0');
  }
  return `sha256:${h.digest('hex')}`;
}

function checkRule(rule: Partial<BoxCountRule> | undefined): BoxCountRule {
  const r = { ...UNITER_BOX_RULE, ...Object.fromEntries(Object.entries(rule ?? {}).filter(([, v]) => v !== undefined)) } as BoxCountRule;
  if (!(Number.isFinite(r.confTh) && r.confTh >= 0 && r.confTh < 1)) throw new ExtractError(`conf-th must be a number in [0, 1), got ${r.confTh}`, 'usage');
  if (!(Number.isInteger(r.minBb) && r.minBb >= 1)) throw new ExtractError(`min-bb must be an integer >= 1, got ${r.minBb}`, 'usage');
  if (!(Number.isInteger(r.maxBb) && r.maxBb >= r.minBb)) throw new ExtractError(`max-bb must be an integer >= min-bb (${r.minBb}), got ${r.maxBb}`, 'usage');
  return r;
}

interface CacheIdentity {
  format: number;
  detector: string;
  decoder: string;
  limits: DecodeLimits;
}

function readReport(file: string): Record<string, unknown> | null {
  try {
    const r = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
    return isJsonObject(r) ? r : null;
  } catch {
    return null;
  }
}

/**
 * Decide what to do with what STORE already holds: resume a cache of the same detector, refuse
 * (or with `overwrite` discard) a cache of another one, refuse (or with `overwrite` replace) a
 * complete store or a non-empty folder that is not an extraction store.
 */
function prepareStore(opts: ExtractOptions, identity: CacheIdentity): { cacheDir: string; previous: Record<string, unknown> | null } {
  const out = opts.out;
  const cacheDir = path.join(out, CACHE_DIR);
  const idFile = path.join(cacheDir, IDENTITY_FILE);
  const previous = readReport(path.join(out, REPORT_FILE));
  if (fs.existsSync(out) && !fs.statSync(out).isDirectory()) throw new ExtractError(`--out ${out}: exists and is not a directory`, 'usage');
  if (fs.existsSync(idFile)) {
    let cached: unknown;
    try {
      cached = JSON.parse(fs.readFileSync(idFile, 'utf8'));
    } catch {
      cached = null;
    }
    const same = isJsonObject(cached) && cached.format === identity.format && cached.detector === identity.detector && cached.decoder === identity.decoder && JSON.stringify(cached.limits) === JSON.stringify(identity.limits);
    if (same) return { cacheDir, previous };
    if (!opts.overwrite) {
      const what = !isJsonObject(cached)
        ? 'an unreadable identity file'
        : [
            cached.detector !== identity.detector ? `detector ${String(cached.detector)} (now ${identity.detector})` : '',
            cached.decoder !== identity.decoder ? `decoder ${String(cached.decoder)} (now ${identity.decoder})` : '',
            JSON.stringify(cached.limits) !== JSON.stringify(identity.limits) ? `image size limits ${JSON.stringify(cached.limits)} (now ${JSON.stringify(identity.limits)})` : '',
            cached.format !== identity.format ? `cache format ${String(cached.format)} (now ${identity.format})` : '',
          ]
            .filter(Boolean)
            .join(', ');
      throw new ExtractError(
        `--out ${out}: holds the results of an unfinished extraction made with ${what}; ` + `rerun with the same detector to resume it, pass --overwrite to discard it and start over, or choose another --out`,
        'mismatch',
      );
    }
    fs.rmSync(cacheDir, { recursive: true, force: true });
  } else if (fs.existsSync(out) && fs.readdirSync(out).some((n) => n !== CACHE_DIR)) {
    if (!opts.overwrite) {
      const why = previous && previous.complete === true ? `holds a complete img_db from an earlier extraction (${(previous.counts as { done?: number } | undefined)?.done ?? '?'} images)` : 'exists and is not empty';
      throw new ExtractError(`--out ${out}: ${why}; it is not replaced without --overwrite (which extracts every image again)`, 'exists');
    }
  }
  fs.mkdirSync(cacheDir, { recursive: true });
  writeFileAtomic(idFile, JSON.stringify(identity, null, 1) + '\n');
  return { cacheDir, previous };
}

type Decoded = { img: DecodedImage } | { error: ImageDecodeError | Error };

async function decodeSafe(file: string, limits: Partial<DecodeLimits> | undefined): Promise<Decoded> {
  try {
    return { img: await decodeImage(file, { limits }) };
  } catch (e) {
    return { error: e as Error };
  }
}

/**
 * Extract regions for every image into the img_db `opts.out`; see the file comment for the
 * layout, resumption and refusals. Per-image problems are failures in the report (the run goes
 * on); problems with the options or the store throw `ExtractError`.
 */
export async function extractRegions(opts: ExtractOptions): Promise<ExtractReport> {
  const now = opts.now ?? (() => performance.now());
  const t0 = now();
  const rule = checkRule(opts.rule);
  if (opts.images.length === 0) throw new ExtractError('no images to extract', 'usage');
  if (!opts.detectorId) throw new ExtractError('detectorId must identify the detector (e.g. detectorIdentity(dir))', 'usage');
  const identity: CacheIdentity = { format: CACHE_FORMAT, detector: opts.detectorId, decoder: DECODER_VERSION, limits: { ...DEFAULT_DECODE_LIMITS, ...opts.limits } };
  const { cacheDir, previous } = prepareStore(opts, identity);
  if (opts.npzDir) fs.mkdirSync(opts.npzDir, { recursive: true });

  // Jobs in input order; the same file twice counts once, two files with one key are a failure.
  const failed: ExtractFailure[] = [];
  const jobs: Array<{ file: string; key: string }> = [];
  const byKey = new Map<string, string>();
  const seenFiles = new Set<string>();
  for (const file of opts.images) {
    const abs = path.resolve(file);
    if (seenFiles.has(abs)) continue;
    seenFiles.add(abs);
    const key = imageKey(file);
    const other = byKey.get(key);
    if (other !== undefined) {
      failed.push({ file, key, kind: 'duplicate-key', reason: `its store key ${key} is already taken by ${other} (keys are file names without extension)` });
      continue;
    }
    byKey.set(key, file);
    jobs.push({ file, key });
  }

  const total = jobs.length + failed.length;
  let index = 0;
  const emit = (e: Omit<ExtractEvent, 'index' | 'total'>) => opts.onImage?.({ ...e, index: ++index, total });
  for (const f of failed) emit({ file: f.file, key: f.key, status: 'failed', reason: f.reason });

  const doneKeys = new Set<string>();
  const todo: typeof jobs = [];
  for (const j of jobs) {
    if (fs.existsSync(path.join(cacheDir, j.key))) {
      doneKeys.add(j.key);
      emit({ file: j.file, key: j.key, status: 'cached' });
    } else todo.push(j);
  }
  const resumed = doneKeys.size;

  let extracted = 0;
  let aborted = false;
  opts.onStart?.({ total, already: index });
  const tExtract = now();
  if (opts.remote && todo.length) {
    ({ aborted } = await opts.remote({
      todo,
      detectorId: opts.detectorId,
      limits: opts.limits ?? {},
      isCached: (key) => doneKeys.has(key),
      signal: opts.signal,
      onResult(r) {
        const file = byKey.get(r.key);
        if (file === undefined || doneKeys.has(r.key) || failed.some((f) => f.key === r.key)) return;
        if (!r.ok) {
          failed.push({ file, key: r.key, kind: r.kind, reason: r.reason });
          emit({ file, key: r.key, status: 'failed', reason: r.reason });
          return;
        }
        const bytes = Buffer.from(r.npz, 'base64');
        if (opts.npzDir) writeFileAtomic(path.join(opts.npzDir, r.key), writeNpz(readNpz(bytes, r.key), true));
        writeFileAtomic(path.join(cacheDir, r.key), bytes);
        doneKeys.add(r.key);
        extracted++;
        emit({ file, key: r.key, status: 'done', numBoxes: r.numBoxes });
      },
    }));
  } else if (!opts.detector && todo.length) throw new ExtractError('extractRegions needs a detector or a remote extractor', 'usage');
  // Decode the next image while the detector works on this one.
  let next: Promise<Decoded> | null = todo.length && !opts.remote ? decodeSafe(todo[0].file, opts.limits) : null;
  for (let i = 0; i < todo.length && !opts.remote; i++) {
    const { file, key } = todo[i];
    const cur = await (next as Promise<Decoded>);
    if (opts.signal?.aborted) {
      aborted = true;
      break;
    }
    next = i + 1 < todo.length ? decodeSafe(todo[i + 1].file, opts.limits) : null;
    if ('error' in cur) {
      const e = cur.error;
      const reason = e instanceof ImageDecodeError ? e.reason : (e as Error).message;
      failed.push({ file, key, kind: e instanceof ImageDecodeError ? e.kind : 'decode', reason });
      emit({ file, key, status: 'failed', reason });
      continue;
    }
    let bytes: Uint8Array;
    let numBoxes: number;
    try {
      const det = await opts.detector!.detect(cur.img);
      const arrays = detectionToButd(det, 'detector output');
      numBoxes = det.numBoxes;
      bytes = writeNpz(arrays, false);
      if (opts.npzDir) writeFileAtomic(path.join(opts.npzDir, key), writeNpz(arrays, true));
    } catch (e) {
      const reason = (e as Error).message;
      failed.push({ file, key, kind: 'detector', reason });
      emit({ file, key, status: 'failed', reason });
      continue;
    }
    // Written last: a cached key means the image (and its --npz file) is complete.
    writeFileAtomic(path.join(cacheDir, key), bytes);
    doneKeys.add(key);
    extracted++;
    emit({ file, key, status: 'done', numBoxes });
  }
  if (next) await next; // an abort leaves one decode in flight; let it settle
  const extractSeconds = (now() - tExtract) / 1000;

  const report: ExtractReport = {
    complete: false,
    aborted,
    store: opts.out,
    imgDb: null,
    nbbJson: null,
    npzDir: opts.npzDir ?? null,
    detector: opts.detectorId,
    decoder: DECODER_VERSION,
    rule,
    compress: !!opts.compress,
    counts: { images: total, done: 0, extracted, resumed, failed: 0, ignored: opts.ignored?.length ?? 0 },
    done: [],
    failed,
    ignored: opts.ignored ?? [],
    seconds: 0,
    imagesPerSecond: extractSeconds > 0 ? extracted / extractSeconds : 0,
  };
  if (aborted) {
    report.counts.done = doneKeys.size;
    report.seconds = (now() - t0) / 1000;
    return report;
  }

  const order = jobs.filter((j) => doneKeys.has(j.key));
  const stored: ExtractReport['done'] = [];
  if (order.length) {
    const names = imgDbNames({ ...rule, compressed: !!opts.compress });
    function* images(): Generator<ImageFeatures> {
      for (const j of order) {
        const cached = path.join(cacheDir, j.key);
        let img: ImageFeatures;
        try {
          img = readButd(cached, j.key);
        } catch (e) {
          // Atomic writes make this unlikely (disk trouble); drop the entry so a rerun redoes it.
          fs.rmSync(cached, { force: true });
          failed.push({ file: j.file, key: j.key, kind: 'cache', reason: `cached result unreadable, removed; rerun to extract it again (${(e as Error).message})` });
          continue;
        }
        if (opts.npzDir && !fs.existsSync(path.join(opts.npzDir, j.key))) {
          writeFileAtomic(path.join(opts.npzDir, j.key), writeNpz(readNpz(fs.readFileSync(cached), cached), true));
        }
        stored.push({ file: j.file, key: j.key, boxes: img.numBoxes, nbb: 0 });
        yield img;
      }
    }
    const { dbDir } = writeImgDb(opts.out, images(), { confTh: rule.confTh, maxBb: rule.maxBb, minBb: rule.minBb, compress: opts.compress });
    if (names.nbbJson) {
      const nbb = JSON.parse(fs.readFileSync(path.join(opts.out, names.nbbJson), 'utf8')) as Record<string, number>;
      for (const s of stored) s.nbb = nbb[s.key];
    }
    report.imgDb = dbDir;
    report.nbbJson = names.nbbJson ? path.join(opts.out, names.nbbJson) : null;
    removeStaleStore(opts.out, previous, dbDir, report.nbbJson);
  }
  report.done = stored;
  report.counts.done = stored.length;
  report.counts.failed = failed.length;
  report.complete = failed.length === 0 && stored.length > 0;
  report.seconds = (now() - t0) / 1000;
  writeFileAtomic(path.join(opts.out, REPORT_FILE), JSON.stringify(report, null, 1) + '\n');
  // Kept while something failed, so that a rerun retries only the failures.
  if (report.complete) fs.rmSync(cacheDir, { recursive: true, force: true });
  return report;
}

/** A store of an earlier run under other settings (other rule or value format) would shadow or confuse the new one. */
function removeStaleStore(out: string, previous: Record<string, unknown> | null, dbDir: string, nbbJson: string | null): void {
  if (!previous) return;
  const inside = (p: unknown): p is string => typeof p === 'string' && path.resolve(path.dirname(p)) === path.resolve(out);
  if (inside(previous.imgDb) && path.resolve(previous.imgDb) !== path.resolve(dbDir)) fs.rmSync(previous.imgDb, { recursive: true, force: true });
  if (inside(previous.nbbJson) && (nbbJson === null || path.resolve(previous.nbbJson) !== path.resolve(nbbJson))) fs.rmSync(previous.nbbJson, { force: true });
}
