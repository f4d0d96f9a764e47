/**
 * The world's "detector": turns scenes into what a BUTD Faster R-CNN would have stored.
 *
 * Each image store has one detector profile. A profile lays out regions (boxes + confidence)
 * eagerly, which is cheap, and synthesises features and soft labels lazily and
 * deterministically (from the world seed, the store and the image id), so a default-size world
 * costs almost no memory and a region reads the same bytes every time.
 *
 * Features: ReLU of a sum of fixed random prototypes (one per shape, colour and size, one per
 * stuff kind, one marking "part of an object") plus an object-instance offset and per-view noise;
 * non-negative, about half zeros, float16-exact (or shifted by -FEATURE_MEAN to about zero mean,
 * with the world option centreFeatures). The prototypes come from `detectorSeed`, not from the
 * world seed, so two worlds share the same "detector" (features mean the same thing).
 */
import { floatToHalf, halfToFloat } from '../../engine/host.js';
import type { ImageRecord, ImageSource } from '../types.js';
import { computeNbb } from '../imgdb.js';
import { Rng } from '../../util/rng.js';
import {
  COLOURS,
  CONFUSABLE_COLOUR,
  CONFUSABLE_SHAPE,
  MIN_LABEL_DIM,
  SHAPES,
  SIZES,
  STUFF,
  objectClassId,
  stuffClassId,
} from './concepts.js';
import type { Box, Scene } from './scene.js';

/** Detector boxes kept by the official dynamic rule: conf above this (strictly) counts. */
export const CONF_THRESHOLD = 0.2;
export const MIN_BB = 10;
export const MAX_BB = 100;
/** Upper bound on rows any detector store of the world holds (the region count stays in 10..36). */
export const MAX_WORLD_BOXES = 36;

const roundScratch = new Float32Array(1);
const roundBits = new Uint32Array(roundScratch.buffer);
const HALF_MIN_NORMAL = 2 ** -14;
const HALF_MAX = 65504;

/**
 * Rounds to the nearest float16 value (returned as a JS number), exactly as
 * halfToFloat(floatToHalf(v)). In the normal half range this is a round-to-nearest-even of the
 * float32 bits at mantissa bit 13 (several times faster); subnormals and overflow take the
 * reference path.
 */
export function toHalfPrecision(v: number): number {
  const a = Math.abs(v);
  if (!(a >= HALF_MIN_NORMAL && a < HALF_MAX)) return halfToFloat(floatToHalf(v));
  roundScratch[0] = v;
  const x = roundBits[0];
  roundBits[0] = (x + 0x0fff + ((x >>> 13) & 1)) & 0xffffe000;
  return roundScratch[0];
}

/**
 * Standard normal samples for feature noise, drawn by table lookup: 2^16 fixed N(0,1) values
 * indexed by 16 random bits (two samples per 32-bit draw). Far cheaper than Box-Muller per
 * element, and noise is all it is used for.
 */
const GAUSS_TABLE = (() => {
  const rng = new Rng(0x6a055, 'world-gaussian-table');
  const t = new Float32Array(1 << 16);
  for (let i = 0; i < t.length; i++) t[i] = rng.normal();
  return t;
})();

/** out[i] += scale * N(0,1) for every i. */
function addNoise(rng: Rng, out: Float32Array, scale: number): void {
  const n = out.length;
  let i = 0;
  for (; i + 1 < n; i += 2) {
    const u = rng.nextU32();
    out[i] += scale * GAUSS_TABLE[u & 0xffff];
    out[i + 1] += scale * GAUSS_TABLE[u >>> 16];
  }
  if (i < n) out[i] += scale * GAUSS_TABLE[rng.nextU32() & 0xffff];
}

/** The official dynamic box count, clamp(count(conf > 0.2), 10, 100), by the img_db's own rule. */
export function dynamicNbb(conf: ArrayLike<number>): number {
  return computeNbb(conf, CONF_THRESHOLD, MIN_BB, MAX_BB);
}

export type RegionKind =
  | { kind: 'object'; object: number }
  | { kind: 'part'; object: number }
  | { kind: 'stuff'; stuff: number }
  | { kind: 'junk' };

export type Region = RegionKind & {
  /** Pixel box (detector boxes are fractional). */
  box: Box;
  /** float16-exact confidence. */
  conf: number;
};

export interface ImageLayout {
  fname: string;
  scene: Scene;
  /** Every row the detector produced (detector stores: sorted by confidence, descending). */
  regions: Region[];
  /** Rows a reader keeps (official nbb rule, or all rows for a fixed-count store). */
  nbb: number;
}

/**
 * How a store's "detector" behaves. `fixedCount` stores (ground-truth boxes) hold exactly the
 * annotated objects, in annotation order, with confidence 1.
 */
export interface DetectorProfile {
  /** Store name: img_db/<name>, and the prefix of its file names. */
  name: string;
  fixedCount: boolean;
  /** Box corner noise as a fraction of the box side. */
  jitter: number;
  /** Probability an object is detected only weakly (confidence below the threshold). */
  missRate: number;
  /**
   * Whether the detector also reports object parts, background stuff and low-confidence junk
   * (default true). Without them an image holds only its objects' regions.
   */
  clutter?: boolean;
}

export const MAIN_PROFILE: DetectorProfile = { name: 'world', fixedCount: false, jitter: 0.04, missRate: 0 };
export const GT_PROFILE: DetectorProfile = { name: 'world_gt', fixedCount: true, jitter: 0, missRate: 0 };
export const DET_PROFILE: DetectorProfile = { name: 'world_det', fixedCount: false, jitter: 0.08, missRate: 0.08 };

/** npz-style file name of an image in a store, as official img_db keys are. */
export function imageFileName(profile: Pick<DetectorProfile, 'name'>, imageId: number): string {
  return `${profile.name}_${String(imageId).padStart(12, '0')}.npz`;
}

/** Lay out the regions one detector reports for a scene (boxes and confidences only). */
export function layoutRegions(rng: Rng, scene: Scene, profile: DetectorProfile): ImageLayout {
  const fname = imageFileName(profile, scene.imageId);
  if (profile.fixedCount) {
    const regions: Region[] = scene.objects.map((o) => ({ kind: 'object', object: o.index, box: { ...o.box }, conf: 1 }));
    return { fname, scene, regions, nbb: regions.length };
  }
  const { width, height } = scene;
  const regions: Region[] = [];
  for (const o of scene.objects) {
    const missed = rng.uniform() < profile.missRate;
    const jitter = missed ? Math.max(0.2, profile.jitter * 3) : profile.jitter;
    const conf = missed ? 0.03 + 0.15 * rng.uniform() : o.size === 1 ? 0.7 + 0.29 * rng.uniform() : 0.45 + 0.5 * rng.uniform();
    regions.push({ kind: 'object', object: o.index, box: jitterBox(rng, o.box, jitter, width, height), conf: toHalfPrecision(conf) });
  }
  if (profile.clutter !== false) addClutter(rng, scene, profile, regions);
  // Official extraction sorts boxes by confidence; a stable sort keeps generation order on ties.
  regions.sort((a, b) => b.conf - a.conf);
  const nbb = Math.min(regions.length, dynamicNbb(regions.map((r) => r.conf)));
  return { fname, scene, regions, nbb };
}

/**
 * What a detector reports besides the objects: parts of objects, background stuff and
 * low-confidence junk (appended to `regions`).
 */
function addClutter(rng: Rng, scene: Scene, profile: DetectorProfile, regions: Region[]): void {
  const { width, height } = scene;
  // Parts: the detector also fires on pieces of objects (weaker, same class). They make the
  // region count vary from image to image.
  for (const o of scene.objects) {
    const u = rng.uniform();
    const nParts = u < 0.4 ? 0 : u < 0.8 ? 1 : 2;
    for (let k = 0; k < nParts && regions.length < MAX_WORLD_BOXES - 4; k++) {
      regions.push({ kind: 'part', object: o.index, box: partBox(rng, o.box), conf: toHalfPrecision(0.22 + 0.38 * rng.uniform()) });
    }
  }
  for (const s of scene.stuff) {
    if (regions.length >= MAX_WORLD_BOXES) break;
    regions.push({ kind: 'stuff', stuff: s.stuff, box: jitterBox(rng, s.box, profile.jitter, width, height), conf: toHalfPrecision(0.22 + 0.33 * rng.uniform()) });
  }
  // Low-confidence junk: enough rows for the 10-box minimum, plus a few the rule drops.
  const nJunk = Math.max(0, Math.min(MAX_WORLD_BOXES - regions.length, Math.max(0, MIN_BB - regions.length) + rng.int(0, 5)));
  for (let k = 0; k < nJunk; k++) {
    regions.push({ kind: 'junk', box: randomBox(rng, width, height), conf: toHalfPrecision(0.02 + 0.16 * rng.uniform()) });
  }
}

function clampBox(b: Box, width: number, height: number): Box {
  const x1 = Math.min(Math.max(0, b.x1), width - 2);
  const y1 = Math.min(Math.max(0, b.y1), height - 2);
  const x2 = Math.min(Math.max(x1 + 2, b.x2), width);
  const y2 = Math.min(Math.max(y1 + 2, b.y2), height);
  return { x1, y1, x2, y2 };
}

function jitterBox(rng: Rng, b: Box, jitter: number, width: number, height: number): Box {
  if (jitter === 0) return { ...b };
  const w = b.x2 - b.x1;
  const h = b.y2 - b.y1;
  const d = () => jitter * (2 * rng.uniform() - 1);
  const round = (v: number) => Math.round(v * 10) / 10;
  return clampBox({ x1: round(b.x1 + d() * w), y1: round(b.y1 + d() * h), x2: round(b.x2 + d() * w), y2: round(b.y2 + d() * h) }, width, height);
}

function partBox(rng: Rng, b: Box): Box {
  const w = b.x2 - b.x1;
  const h = b.y2 - b.y1;
  const pw = w * (0.4 + 0.3 * rng.uniform());
  const ph = h * (0.4 + 0.3 * rng.uniform());
  const x1 = b.x1 + (w - pw) * rng.uniform();
  const y1 = b.y1 + (h - ph) * rng.uniform();
  const round = (v: number) => Math.round(v * 10) / 10;
  return { x1: round(x1), y1: round(y1), x2: round(x1 + pw), y2: round(y1 + ph) };
}

function randomBox(rng: Rng, width: number, height: number): Box {
  const w = width * (0.05 + 0.45 * rng.uniform());
  const h = height * (0.05 + 0.45 * rng.uniform());
  const x1 = (width - w) * rng.uniform();
  const y1 = (height - h) * rng.uniform();
  const round = (v: number) => Math.round(v * 10) / 10;
  return clampBox({ x1: round(x1), y1: round(y1), x2: round(x1 + w), y2: round(y1 + h) }, width, height);
}

/** The fixed random directions region features are built from. */
export class PrototypeBank {
  readonly shape: Float32Array[];
  readonly colour: Float32Array[];
  readonly size: Float32Array[];
  readonly stuff: Float32Array[];
  readonly part: Float32Array;
  readonly junk: Float32Array[];

  constructor(
    readonly imgDim: number,
    detectorSeed: number,
  ) {
    const rng = new Rng(detectorSeed, 'world-detector-prototypes');
    const make = (scale: number) => {
      const v = new Float32Array(imgDim);
      for (let i = 0; i < imgDim; i++) v[i] = scale * rng.normal();
      return v;
    };
    this.shape = SHAPES.map(() => make(1.0));
    this.colour = COLOURS.map(() => make(0.8));
    this.size = SIZES.map(() => make(0.5));
    this.stuff = STUFF.map(() => make(1.0));
    this.part = make(0.6);
    this.junk = [0, 1, 2, 3].map(() => make(0.8));
  }
}

/** Everything a store writer needs for one image: all rows, before the nbb rule. */
export interface DetectorOutput {
  fname: string;
  numBoxes: number;
  /** [numBoxes, imgDim] */
  features: Float32Array;
  /** [numBoxes, 6] */
  normBb: Float32Array;
  /** [numBoxes] */
  conf: Float32Array;
  /** [numBoxes, labelDim] */
  softLabels: Float32Array;
}

export interface ImageStoreOptions {
  seed: number;
  imgDim: number;
  labelDim: number;
  /** Decoded images kept in memory (0 disables caching). */
  cacheSize: number;
  /** Shift features by -FEATURE_MEAN so that they are roughly zero-mean (see WorldOptions.centreFeatures). */
  centreFeatures?: boolean;
}

/** About the mean of a region feature value (a ReLU of a sum of unit-scale prototypes), over all region kinds. */
export const FEATURE_MEAN = 0.45;

/**
 * One image store of the world (img_db/<name>) held in memory: layouts eagerly, features on
 * demand. Implements the shared ImageSource contract, so training can read it like an img_db.
 */
export class WorldImageStore implements ImageSource {
  readonly imgDim: number;
  readonly labelDim: number;
  private readonly layouts = new Map<string, ImageLayout>();
  private readonly cache = new Map<string, ImageRecord>();

  constructor(
    readonly profile: DetectorProfile,
    layouts: Iterable<ImageLayout>,
    private readonly bank: PrototypeBank,
    private readonly opts: ImageStoreOptions,
  ) {
    if (bank.imgDim !== opts.imgDim) throw new Error(`WorldImageStore ${profile.name}: prototype dim ${bank.imgDim} != imgDim ${opts.imgDim}`);
    if (opts.labelDim < MIN_LABEL_DIM) throw new Error(`WorldImageStore ${profile.name}: labelDim ${opts.labelDim} < ${MIN_LABEL_DIM} (background + 64 object + 6 stuff classes)`);
    this.imgDim = opts.imgDim;
    this.labelDim = opts.labelDim;
    for (const l of layouts) this.layouts.set(l.fname, l);
  }

  get name(): string {
    return this.profile.name;
  }

  get size(): number {
    return this.layouts.size;
  }

  has(fname: string): boolean {
    return this.layouts.has(fname);
  }

  keys(): string[] {
    return [...this.layouts.keys()];
  }

  layout(fname: string): ImageLayout {
    const l = this.layouts.get(fname);
    if (!l) throw new Error(`world image store '${this.profile.name}': no image '${fname}'`);
    return l;
  }

  nbb(fname: string): number {
    return this.layout(fname).nbb;
  }

  /** The rows a reader sees (truncated to nbb), float32 holding float16-exact values. */
  get(fname: string): ImageRecord {
    const hit = this.cache.get(fname);
    if (hit) {
      // refresh LRU position; hand out copies so a caller that edits its arrays cannot corrupt the cache
      this.cache.delete(fname);
      this.cache.set(fname, hit);
      return { nbb: hit.nbb, features: hit.features.slice(), normBb: hit.normBb.slice(), conf: hit.conf!.slice(), softLabels: hit.softLabels!.slice() };
    }
    const layout = this.layout(fname);
    const out = this.render(layout, layout.nbb);
    const rec: ImageRecord = { nbb: layout.nbb, features: out.features, normBb: out.normBb, conf: out.conf, softLabels: out.softLabels };
    if (this.opts.cacheSize > 0) {
      this.cache.set(fname, { nbb: rec.nbb, features: rec.features.slice(), normBb: rec.normBb.slice(), conf: rec.conf!.slice(), softLabels: rec.softLabels!.slice() });
      if (this.cache.size > this.opts.cacheSize) this.cache.delete(this.cache.keys().next().value as string);
    }
    return rec;
  }

  /** All rows the detector produced, for writing an img_db (its writer applies the nbb rule). */
  detections(fname: string): DetectorOutput {
    const layout = this.layout(fname);
    return { fname, numBoxes: layout.regions.length, ...this.render(layout, layout.regions.length) };
  }

  /**
   * Synthesises rows 0..rows-1. Each row draws from its own stream (seed, store, image, row), so
   * the first nbb rows are the same whether or not the rest are rendered.
   */
  private render(layout: ImageLayout, rows: number): Omit<DetectorOutput, 'fname' | 'numBoxes'> {
    const D = this.imgDim;
    const L = this.labelDim;
    const { scene } = layout;
    const features = new Float32Array(rows * D);
    const normBb = new Float32Array(rows * 6);
    const conf = new Float32Array(rows);
    const softLabels = new Float32Array(rows * L);
    const instance = new Map<number, Float32Array>();
    const instanceOf = (objectIndex: number): Float32Array => {
      let v = instance.get(objectIndex);
      if (!v) {
        // Shared by every store: the same physical object looks alike in gt and detected boxes.
        v = new Float32Array(D);
        addNoise(new Rng(this.opts.seed, 'world-object-instance', scene.imageId, objectIndex), v, 1);
        instance.set(objectIndex, v);
      }
      return v;
    };
    const b = this.bank;
    const raw = new Float32Array(D);
    for (let row = 0; row < rows; row++) {
      const region = layout.regions[row];
      const rng = new Rng(this.opts.seed, 'world-region', this.profile.name, scene.imageId, row);
      raw.fill(0);
      if (region.kind === 'object' || region.kind === 'part') {
        const o = scene.objects[region.object];
        const whole = region.kind === 'object' ? 1 : 0.6;
        const inst = instanceOf(o.index);
        const sh = b.shape[o.shape];
        const co = b.colour[o.colour];
        const sz = b.size[o.size];
        const extra = region.kind === 'part' ? b.part : null;
        for (let i = 0; i < D; i++) raw[i] = whole * (sh[i] + co[i] + 0.5 * sz[i]) + 0.35 * inst[i] + (extra ? extra[i] : 0);
        addNoise(rng, raw, 0.3);
      } else if (region.kind === 'stuff') {
        raw.set(b.stuff[region.stuff]);
        addNoise(rng, raw, 0.4);
      } else {
        const j1 = b.junk[rng.int(b.junk.length)];
        const j2 = b.junk[rng.int(b.junk.length)];
        const mix = rng.uniform();
        for (let i = 0; i < D; i++) raw[i] = 0.6 * (mix * j1[i] + (1 - mix) * j2[i]) - 0.3;
        addNoise(rng, raw, 0.5);
      }
      const f = features.subarray(row * D, (row + 1) * D);
      const shift = this.opts.centreFeatures ? FEATURE_MEAN : 0;
      for (let i = 0; i < D; i++) f[i] = toHalfPrecision((raw[i] > 0 ? raw[i] : 0) - shift);

      const { x1, y1, x2, y2 } = region.box;
      const W = scene.width;
      const H = scene.height;
      const nb = [x1 / W, y1 / H, x2 / W, y2 / H, (x2 - x1) / W, (y2 - y1) / H];
      for (let j = 0; j < 6; j++) normBb[row * 6 + j] = toHalfPrecision(nb[j]);
      conf[row] = region.conf;
      softLabelsInto(softLabels.subarray(row * L, (row + 1) * L), region, scene, rng);
    }
    return { features, normBb, conf, softLabels };
  }
}

/** Total probability smeared over every class (as a real detector's softmax never reaches 0). */
const SOFT_LABEL_FLOOR = 0.004;

/**
 * A detector-like class distribution for one region: most mass on the true class, some on
 * its confusable neighbours and on background; background-dominant for junk. float16-exact.
 */
function softLabelsInto(out: Float32Array, region: Region, scene: Scene, rng: Rng): void {
  const L = out.length;
  // Only a handful of classes get more than the floor: accumulate those sparsely.
  const mass = new Map<number, number>();
  const add = (cls: number, m: number) => mass.set(cls, (mass.get(cls) ?? 0) + m);
  const randomClass = () => 1 + rng.int(L - 1);
  const spread = (m: number, n: number) => {
    const w = Array.from({ length: n }, () => 0.5 + rng.uniform());
    const total = w.reduce((a, c) => a + c, 0);
    for (const wi of w) add(randomClass(), (m * wi) / total);
  };
  if (region.kind === 'object' || region.kind === 'part') {
    const o = scene.objects[region.object];
    const top = region.kind === 'object' ? 0.55 + 0.3 * rng.uniform() : 0.35 + 0.2 * rng.uniform();
    const bg = region.kind === 'object' ? 0.03 + 0.07 * rng.uniform() : 0.1 + 0.1 * rng.uniform();
    let rest = Math.max(0, 1 - SOFT_LABEL_FLOOR - top - bg);
    const colourConf = rest * (0.3 + 0.2 * rng.uniform());
    rest -= colourConf;
    const shapeConf = rest * (0.3 + 0.3 * rng.uniform());
    rest -= shapeConf;
    add(objectClassId(o.shape, o.colour), top);
    add(0, bg);
    add(objectClassId(o.shape, CONFUSABLE_COLOUR[o.colour]), colourConf);
    add(objectClassId(CONFUSABLE_SHAPE[o.shape], o.colour), shapeConf);
    spread(rest, 3);
  } else if (region.kind === 'stuff') {
    const top = 0.4 + 0.3 * rng.uniform();
    const bg = 0.15 + 0.15 * rng.uniform();
    add(stuffClassId(region.stuff), top);
    add(0, bg);
    spread(Math.max(0, 1 - SOFT_LABEL_FLOOR - top - bg), 4);
  } else {
    const bg = 0.55 + 0.35 * rng.uniform();
    add(0, bg);
    spread(Math.max(0, 1 - SOFT_LABEL_FLOOR - bg), 4);
  }
  const floor = SOFT_LABEL_FLOOR / L;
  let total = floor * L;
  for (const m of mass.values()) total += m;
  out.fill(toHalfPrecision(floor / total));
  for (const [cls, m] of mass) out[cls] = toHalfPrecision((floor + m) / total);
}
