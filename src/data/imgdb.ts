/**
 * img_db: the official store of pre-extracted region features (`scripts/convert_imgdir.py` writes
 * it, `DetectFeatLmdb` reads it). One directory per image set holds
 *   - an LMDB environment named `feat_th{conf_th}_max{max_bb}_min{min_bb}` (dynamic box count),
 *     `feat_numbb{N}` (fixed count, conf_th = -1) or `all` (everything kept), with the suffix
 *     `_compressed` when values are npz archives;
 *   - for the dynamic variant, `nbb_th{conf_th}_max{max_bb}_min{min_bb}.json` = {fname: nbb}.
 * LMDB key = the feature file's base name; the key `__keys__` holds a JSON list of all names.
 * A value holds `features`, `norm_bb`, `conf`, `soft_labels` as float16, already cut to nbb rows:
 * a msgpack map of msgpack-numpy arrays, or (compressed) the bytes of an `np.savez_compressed`.
 *
 * nbb = clamp(count(conf > conf_th), min_bb, max_bb), with conf compared as float16 values, as
 * numpy compares a float16 array with a Python float. The first nbb rows are kept.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ImageRecord, ImageSource } from './types.js';
import { LmdbReader, LmdbWriter } from './lmdb.js';
import { packMsgpack, unpackMsgpack, type MsgpackValue } from './msgpack.js';
import { msgpackToNumpy, numpyToMsgpack } from './msgpack-numpy.js';
import { float32ToHalfArray, halfArrayToFloat32, npyToFloat32, readNpz, writeNpz, BUTD_MEMBERS, type NpyArray } from './npz.js';
import { floatToHalf, halfToFloat } from '../engine/host.js';
import { OrderedJsonError, parseJsonEntries, stringifyJsonEntries } from './ordered-json.js';
import { replaceDirAtomic, writeFileAtomic } from '../util/atomic.js';

export class ImgDbError extends Error {}

export interface ImgDbOptions {
  /** Confidence threshold; -1 selects the fixed-count store `feat_numbb{numBb}`. Default 0.2. */
  confTh?: number;
  maxBb?: number;
  minBb?: number;
  /** Box count of a fixed-count store (confTh = -1). Default 100. */
  numBb?: number;
  /** npz-valued variant (`_compressed`). Reader default: whichever exists, uncompressed first. */
  compressed?: boolean;
}

/** An image with every array the detector produced (the input of the writer). */
export interface ImageFeatures {
  fname: string;
  /** [numBoxes, imgDim] */
  features: Float32Array;
  /** [numBoxes, 6] */
  normBb: Float32Array;
  /** [numBoxes] */
  conf: Float32Array;
  /** [numBoxes, labelDim]; optional (then no `soft_labels` is stored). */
  softLabels?: Float32Array;
  numBoxes: number;
}

export type ImageDump = ImageRecord & { conf: Float32Array; softLabels: Float32Array };

const DEFAULTS = { confTh: 0.2, maxBb: 100, minBb: 10, numBb: 100 };

/** Options over the defaults; an option given as undefined keeps its default. */
function withDefaults<T extends object>(opts: T): typeof DEFAULTS & T {
  const given = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined));
  return { ...DEFAULTS, ...given } as typeof DEFAULTS & T;
}
const KEYS_KEY = '__keys__';

/** A Python float as `str()` / an f-string prints it (0.2 -> "0.2", 1 -> "1.0"). */
function pyFloat(x: number): string {
  if (Number.isInteger(x)) return x.toFixed(1);
  const s = String(x);
  // Python switches to exponent notation below 1e-4 (JS only below 1e-6).
  if (Math.abs(x) < 1e-4) return x.toExponential().replace(/e([+-])(\d)$/, 'e$10$2');
  return s;
}

/** Names of the LMDB environment and of the nbb side file for a configuration. */
export function imgDbNames(opts: ImgDbOptions & { compressed?: boolean } = {}): { env: string; nbbJson: string | null } {
  const o = withDefaults(opts);
  const suffix = opts.compressed ? '_compressed' : '';
  if (o.confTh === -1) return { env: `feat_numbb${o.numBb}${suffix}`, nbbJson: null };
  const tag = `th${pyFloat(o.confTh)}_max${o.maxBb}_min${o.minBb}`;
  return { env: `feat_${tag}${suffix}`, nbbJson: `nbb_${tag}.json` };
}

/** Dynamic box count: boxes whose float16 confidence exceeds float16(confTh), clamped to [minBb, maxBb]. */
export function computeNbb(conf: ArrayLike<number>, confTh: number, minBb: number, maxBb: number): number {
  const th = halfToFloat(floatToHalf(confTh));
  let n = 0;
  for (let i = 0; i < conf.length; i++) if (halfToFloat(floatToHalf(conf[i])) > th) n++;
  return Math.min(maxBb, Math.max(minBb, n));
}

function hasEnv(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'data.mdb'));
}

interface Decoded {
  features: NpyArray;
  normBb: NpyArray;
  conf?: NpyArray;
  softLabels?: NpyArray;
}

/** Read access to an img_db directory. */
export class ImgDb implements ImageSource {
  readonly dir: string;
  readonly envDir: string;
  readonly compressed: boolean;
  /** Fixed-count store: every image reports `numBb` boxes (as the official reader does). */
  readonly fixedNbb: number | null;
  readonly imgDim: number;
  readonly labelDim: number;
  private readonly env: LmdbReader;
  private readonly name2nbb: Map<string, number>;

  private constructor(dir: string, envDir: string, compressed: boolean, env: LmdbReader, name2nbb: Map<string, number>, fixedNbb: number | null) {
    this.dir = dir;
    this.envDir = envDir;
    this.compressed = compressed;
    this.env = env;
    this.name2nbb = name2nbb;
    this.fixedNbb = fixedNbb;
    const first = name2nbb.keys().next();
    if (first.done) {
      this.imgDim = 0;
      this.labelDim = 0;
    } else {
      const d = this.decode(first.value, 'first record');
      this.imgDim = d.features.shape[1];
      this.labelDim = d.softLabels ? d.softLabels.shape[1] : 0;
    }
  }

  static open(dir: string, opts: ImgDbOptions = {}): ImgDb {
    const o = withDefaults(opts);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new ImgDbError(`img_db ${dir}: no such directory`);
    const variants = opts.compressed === undefined ? [false, true] : [opts.compressed];
    for (const compressed of variants) {
      const names = imgDbNames({ ...o, compressed });
      const envDir = path.join(dir, names.env);
      if (names.nbbJson === null) {
        if (!hasEnv(envDir)) continue;
        const env = LmdbReader.open(envDir);
        try {
          const keys = readKeys(env, dir);
          return new ImgDb(dir, envDir, compressed, env, new Map(keys.map((k) => [k, o.numBb])), o.numBb);
        } catch (e) {
          env.close();
          throw e;
        }
      }
      const jsonFile = path.join(dir, names.nbbJson);
      if (hasEnv(envDir)) {
        if (!fs.existsSync(jsonFile)) {
          throw new ImgDbError(`img_db ${dir}: ${names.env} has no ${names.nbbJson} beside it (incomplete store: the nbb file is written last)`);
        }
        const env = LmdbReader.open(envDir);
        try {
          return new ImgDb(dir, envDir, compressed, env, readNbbJson(jsonFile), null);
        } catch (e) {
          env.close();
          throw e;
        }
      }
      // Like the official reader: without a precomputed store, fall back to `all` and count boxes now.
      const allDir = path.join(dir, compressed ? 'all_compressed' : 'all');
      if (!fs.existsSync(jsonFile) && hasEnv(allDir)) {
        const env = LmdbReader.open(allDir);
        try {
          const name2nbb = new Map<string, number>();
          for (const k of readKeys(env, dir)) {
            const conf = decodeValue(env, k, compressed, allDir).conf;
            if (!conf) throw new ImgDbError(`img_db ${allDir}: image "${k}" has no 'conf' array to count boxes with`);
            name2nbb.set(k, Math.min(conf.shape[0], computeNbb(npyToFloat32(conf), o.confTh, o.minBb, o.maxBb)));
          }
          return new ImgDb(dir, allDir, compressed, env, name2nbb, null);
        } catch (e) {
          env.close();
          throw e;
        }
      }
    }
    const expect = variants.map((c) => imgDbNames({ ...o, compressed: c }).env).join(' or ');
    throw new ImgDbError(`img_db ${dir}: no LMDB store ${expect} (nor all${opts.compressed ? '_compressed' : ''}) found`);
  }

  close(): void {
    this.env.close();
  }

  keys(): string[] {
    return [...this.name2nbb.keys()];
  }

  has(fname: string): boolean {
    return this.name2nbb.has(fname);
  }

  /**
   * Region count used for length bookkeeping: the nbb file, or numBb for a fixed-count store (as
   * the official reader reports it; `get` returns fewer rows when fewer are stored).
   */
  nbb(fname: string): number {
    const n = this.name2nbb.get(fname);
    if (n === undefined) throw new ImgDbError(`img_db ${this.envDir}: no image "${fname}"`);
    return n;
  }

  /** Features and boxes of the first nbb regions, as float32, with the soft labels when stored (MRC needs them). */
  get(fname: string): ImageRecord {
    const { d, nbb, features } = this.load(fname);
    const rec: ImageRecord = { nbb, features, normBb: npyToFloat32(d.normBb).slice(0, nbb * 6) };
    if (d.softLabels) rec.softLabels = npyToFloat32(d.softLabels).slice(0, nbb * d.softLabels.shape[1]);
    return rec;
  }

  /** Everything stored for an image (features, boxes, conf, soft labels), first nbb rows, float32. */
  getDump(fname: string): ImageDump {
    const { d, nbb, features } = this.load(fname);
    return {
      nbb,
      features,
      normBb: npyToFloat32(d.normBb).slice(0, nbb * 6),
      conf: d.conf ? npyToFloat32(d.conf).slice(0, nbb) : new Float32Array(0),
      softLabels: d.softLabels ? npyToFloat32(d.softLabels).slice(0, nbb * d.softLabels.shape[1]) : new Float32Array(0),
    };
  }

  /** Decode and check one image; `features` is float32, already cut to nbb rows. */
  private load(fname: string): { d: Decoded; nbb: number; features: Float32Array } {
    const want = this.nbb(fname);
    const d = this.decode(fname, 'record');
    const where = `img_db ${this.envDir}: image "${fname}"`;
    if (d.features.shape[1] !== this.imgDim) throw new ImgDbError(`${where}: features have width ${d.features.shape[1]}, the store's images have ${this.imgDim}`);
    // An image with fewer rows than its nbb keeps them all, as the official slicing [:nbb] does
    // (a fixed-count store, or an image with fewer boxes than min_bb).
    const nbb = Math.min(d.features.shape[0], want);
    const features = npyToFloat32(d.features).slice(0, nbb * this.imgDim);
    for (let i = 0; i < features.length; i++) {
      if (!Number.isFinite(features[i])) throw new ImgDbError(`${where}: feature row ${Math.floor(i / this.imgDim)} holds ${features[i]} (NaN or infinite)`);
    }
    return { d, nbb, features };
  }

  private decode(fname: string, what: string): Decoded {
    try {
      return decodeValue(this.env, fname, this.compressed, this.envDir);
    } catch (e) {
      if (e instanceof ImgDbError) throw e;
      throw new ImgDbError(`img_db ${this.envDir}: ${what} "${fname}" is corrupt: ${(e as Error).message}`);
    }
  }
}

function readKeys(env: LmdbReader, dir: string): string[] {
  const raw = env.get(KEYS_KEY);
  if (!raw) throw new ImgDbError(`img_db ${dir}: store has no ${KEYS_KEY} entry (incomplete store)`);
  let keys: unknown;
  try {
    keys = JSON.parse(Buffer.from(raw).toString('utf8'));
  } catch (e) {
    throw new ImgDbError(`img_db ${dir}: ${KEYS_KEY} is not valid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) throw new ImgDbError(`img_db ${dir}: ${KEYS_KEY} must be a JSON list of file names`);
  return keys as string[];
}

function readNbbJson(file: string): Map<string, number> {
  let entries: Array<[string, unknown]>;
  try {
    entries = parseJsonEntries(fs.readFileSync(file, 'utf8'), `${file}: nbb file`);
  } catch (e) {
    throw new ImgDbError(e instanceof OrderedJsonError ? e.message : `${file}: cannot read nbb file (${(e as Error).message})`);
  }
  const out = new Map<string, number>();
  for (const [k, v] of entries) {
    if (!Number.isInteger(v) || (v as number) < 0) throw new ImgDbError(`${file}: image "${k}" has nbb ${JSON.stringify(v)}, expected a non-negative integer`);
    out.set(k, v as number);
  }
  return out;
}

function decodeValue(env: LmdbReader, fname: string, compressed: boolean, envDir: string): Decoded {
  if (fname === KEYS_KEY) throw new ImgDbError(`img_db ${envDir}: "${KEYS_KEY}" is the key list, not an image`);
  const raw = env.get(fname);
  if (!raw) throw new ImgDbError(`img_db ${envDir}: no image "${fname}"`);
  const where = `img_db ${envDir}: image "${fname}"`;
  let arrays: Map<string, NpyArray>;
  if (compressed) {
    arrays = readNpz(raw, where, { members: BUTD_MEMBERS });
  } else {
    const obj = unpackMsgpack(raw);
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj) || obj instanceof Uint8Array || obj instanceof Map) {
      throw new ImgDbError(`${where}: value is not a msgpack map of arrays`);
    }
    arrays = new Map();
    for (const k of BUTD_MEMBERS) if (k in obj) arrays.set(k, msgpackToNumpy((obj as Record<string, MsgpackValue>)[k], `${where}: '${k}'`));
  }
  const features = arrays.get('features');
  const normBb = arrays.get('norm_bb');
  if (!features || features.shape.length !== 2) throw new ImgDbError(`${where}: ${features ? `features have shape [${features.shape}], expected [rows, dim]` : "no 'features' array"}`);
  const rows = features.shape[0];
  if (!normBb || normBb.shape.length !== 2 || normBb.shape[1] !== 6 || normBb.shape[0] !== rows) {
    throw new ImgDbError(`${where}: ${normBb ? `norm_bb has shape [${normBb.shape}], expected [${rows}, 6]` : "no 'norm_bb' array"}`);
  }
  const conf = arrays.get('conf');
  if (conf && conf.shape[0] !== rows) throw new ImgDbError(`${where}: conf has shape [${conf.shape}], expected ${rows} rows`);
  const softLabels = arrays.get('soft_labels');
  if (softLabels && (softLabels.shape.length !== 2 || softLabels.shape[0] !== rows)) throw new ImgDbError(`${where}: soft_labels have shape [${softLabels.shape}], expected [${rows}, labels]`);
  return { features, normBb, conf, softLabels };
}

export interface WriteImgDbOptions {
  confTh?: number;
  maxBb?: number;
  minBb?: number;
  /** Name of a fixed-count store (confTh = -1). Default 100. */
  numBb?: number;
  /** Store npz archives (`_compressed`) instead of msgpack. */
  compress?: boolean;
}

/**
 * Write an img_db into directory `dir` (other stores in it are left alone). Applies the nbb rule,
 * stores float16, writes `__keys__` and the nbb file. The LMDB environment is built under a
 * temporary name and renamed into place; an old nbb file is removed just before that rename and
 * the new one written last, so an interrupted run leaves either the old store or none that opens.
 */
export function writeImgDb(dir: string, images: Iterable<ImageFeatures>, opts: WriteImgDbOptions = {}): { count: number; dbDir: string } {
  const o = withDefaults(opts);
  if (!(o.confTh === -1 || (o.confTh >= 0 && o.confTh < 1))) throw new ImgDbError(`img_db ${dir}: confTh must be -1 (fixed count) or in [0, 1), got ${o.confTh}`);
  if (!Number.isInteger(o.minBb) || !Number.isInteger(o.maxBb) || o.minBb < 1 || o.maxBb < o.minBb) throw new ImgDbError(`img_db ${dir}: need integers 1 <= minBb <= maxBb, got ${o.minBb}, ${o.maxBb}`);
  const names = imgDbNames({ ...o, compressed: !!opts.compress });
  const dbDir = path.join(dir, names.env);
  fs.mkdirSync(dir, { recursive: true });
  const name2nbb = new Map<string, number>();
  const order: string[] = [];
  let imgDim = -1;
  let labelDim = -1;
  replaceDirAtomic(dbDir, (tmp) => {
    const w = new LmdbWriter(tmp);
    try {
      for (const img of images) {
        const where = `img_db ${dir}: image "${img.fname}"`;
        const dims = checkImage(img, where);
        if (imgDim < 0) {
          imgDim = dims.imgDim;
          labelDim = dims.labelDim;
        } else if (dims.imgDim !== imgDim) throw new ImgDbError(`${where}: features have width ${dims.imgDim}, earlier images have ${imgDim}`);
        else if (dims.labelDim !== labelDim) throw new ImgDbError(`${where}: soft_labels have width ${dims.labelDim}, earlier images have ${labelDim}`);
        // The stored row count never exceeds the boxes the image has (the nbb file says what is stored).
        const nbb = Math.min(img.numBoxes, computeNbb(img.conf, o.confTh, o.minBb, o.maxBb));
        w.put(img.fname, encodeImage(img, nbb, dims.labelDim, !!opts.compress));
        name2nbb.set(img.fname, nbb);
        order.push(img.fname);
      }
      w.put(KEYS_KEY, Buffer.from(JSON.stringify(order), 'utf8'));
      w.finish();
      // The old nbb file goes just before the new environment replaces the old one.
      if (names.nbbJson) fs.rmSync(path.join(dir, names.nbbJson), { force: true });
    } catch (e) {
      w.abort();
      throw e;
    }
  });
  if (names.nbbJson) writeFileAtomic(path.join(dir, names.nbbJson), stringifyJsonEntries(name2nbb));
  return { count: order.length, dbDir };
}

function checkImage(img: ImageFeatures, where: string): { imgDim: number; labelDim: number } {
  if (typeof img.fname !== 'string' || img.fname.length === 0) throw new ImgDbError(`${where}: empty file name`);
  if (img.fname === KEYS_KEY) throw new ImgDbError(`${where}: "${KEYS_KEY}" is reserved for the key list`);
  const n = img.numBoxes;
  if (!Number.isInteger(n) || n < 1) throw new ImgDbError(`${where}: numBoxes must be a positive integer, got ${n}`);
  const imgDim = img.features.length / n;
  if (!Number.isInteger(imgDim) || imgDim < 1) throw new ImgDbError(`${where}: ${img.features.length} feature values do not split into ${n} rows`);
  if (img.normBb.length !== n * 6) throw new ImgDbError(`${where}: normBb has ${img.normBb.length} values, expected ${n} x 6`);
  if (img.conf.length !== n) throw new ImgDbError(`${where}: conf has ${img.conf.length} values, expected ${n}`);
  let labelDim = 0;
  if (img.softLabels) {
    labelDim = img.softLabels.length / n;
    if (!Number.isInteger(labelDim) || labelDim < 1) throw new ImgDbError(`${where}: ${img.softLabels.length} soft label values do not split into ${n} rows`);
  }
  for (let i = 0; i < img.features.length; i++) {
    if (!Number.isFinite(img.features[i])) throw new ImgDbError(`${where}: feature row ${Math.floor(i / imgDim)} holds ${img.features[i]} (NaN or infinite)`);
  }
  for (let i = 0; i < img.normBb.length; i++) {
    if (!Number.isFinite(img.normBb[i])) throw new ImgDbError(`${where}: normBb row ${Math.floor(i / 6)} holds ${img.normBb[i]} (NaN or infinite)`);
  }
  return { imgDim, labelDim };
}

function encodeImage(img: ImageFeatures, nbb: number, labelDim: number, compress: boolean): Uint8Array {
  const imgDim = img.features.length / img.numBoxes;
  const half = (src: Float32Array, width: number, shape: number[]): NpyArray => ({ dtype: '<f2', shape, data: float32ToHalfArray(src.subarray(0, nbb * width)) });
  const arrays = new Map<string, NpyArray>([
    ['features', half(img.features, imgDim, [nbb, imgDim])],
    ['norm_bb', half(img.normBb, 6, [nbb, 6])],
    ['conf', half(img.conf, 1, [nbb, 1])],
  ]);
  if (img.softLabels) arrays.set('soft_labels', half(img.softLabels, labelDim, [nbb, labelDim]));
  if (compress) return writeNpz(arrays, true);
  const obj: Record<string, MsgpackValue> = {};
  for (const [k, a] of arrays) obj[k] = numpyToMsgpack(a, k);
  return packMsgpack(obj, img.fname);
}

/** float16 rounding of a float32 array (what a store gives back for values written to it). */
export function roundToHalf(a: Float32Array): Float32Array {
  return halfArrayToFloat32(float32ToHalfArray(a));
}
