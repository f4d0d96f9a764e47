/**
 * Stores a generated world on disk in the official layouts:
 *   DIR/img_db/<store>/        img_db (LMDB + nbb json): world (detections, dynamic 10-100 boxes),
 *                              world_gt (ground-truth boxes, fixed count), world_det (noisier detections)
 *   DIR/txt_db/<name>.db/      txt_db (LMDB + meta/id2len/txt2img/img2txts json) + task side files
 *   DIR/ans2label.json         VQA answer vocabulary
 *   DIR/world.json             manifest: options, counts, stores, splits, files
 * The directory is built under a temporary name and swapped in whole, so a reader sees the old
 * world or the new one, never a mix.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeImgDb, type WriteImgDbOptions } from '../imgdb.js';
import { writeTxtDb } from '../txtdb.js';
import { replaceDirAtomic, writeFileAtomic } from '../../util/atomic.js';
import { CONF_THRESHOLD, MAX_BB, MIN_BB, type WorldImageStore } from './features.js';
import type { World, WorldCounts } from '../world.js';
import { readJsonObject } from '../../util/json.js';

export const WORLD_MANIFEST = 'world.json';
export const WORLD_FORMAT = 'uniter-world';
export const WORLD_FORMAT_VERSION = 1;

export interface WorldManifest {
  format: typeof WORLD_FORMAT;
  version: number;
  options: World['options'];
  counts: WorldCounts;
  tokenizer: string;
  ans2label: string;
  /** Image store name -> directory (relative) and the reader options it was written for. */
  imgDbs: Record<string, { dir: string; images: number } & WriteImgDbOptions>;
  /** txt_db name -> directory (relative), records, and the image stores its img_fname values name. */
  txtDbs: Record<string, { dir: string; records: number; imageStores: readonly string[]; sideFiles: string[] }>;
  /** Image ids per split (pre-training val and every downstream val/test use disjoint images). */
  splits: Record<string, number[]>;
  files: string[];
}

export interface WriteWorldOptions {
  /** Store img_db values as npz archives (`_compressed` variant) instead of msgpack. */
  compress?: boolean;
  /** Called before each store is written (progress for the CLI). */
  onStore?: (kind: 'img_db' | 'txt_db', name: string) => void;
}

/** Reader options of each image store: dynamic rule for detections, fixed count for ground truth. */
export function imgDbOptionsFor(store: WorldImageStore, compress = false): WriteImgDbOptions {
  return store.profile.fixedCount ? { confTh: -1, numBb: MAX_BB, compress } : { confTh: CONF_THRESHOLD, minBb: MIN_BB, maxBb: MAX_BB, compress };
}

/** Throws unless `dir` may receive a world: absent, empty, or an earlier world (has world.json). */
export function checkWorldTarget(dir: string): void {
  if (!fs.existsSync(dir)) return;
  if (!fs.statSync(dir).isDirectory()) throw new Error(`writeWorld: ${dir} exists and is not a directory`);
  const entries = fs.readdirSync(dir);
  if (entries.length > 0 && !entries.includes(WORLD_MANIFEST)) {
    throw new Error(`writeWorld: ${dir} is not empty and holds no ${WORLD_MANIFEST}; refusing to replace it (choose an empty or new directory)`);
  }
}

/**
 * Writes `world` into `dir`. An existing `dir` is replaced only if it is empty or holds a world
 * (has world.json), so a wrong --out cannot wipe unrelated files.
 */
export function writeWorld(world: World, dir: string, opts: WriteWorldOptions = {}): WorldManifest {
  checkWorldTarget(dir);
  let manifest: WorldManifest | undefined;
  replaceDirAtomic(path.resolve(dir), (tmp) => {
    const files: string[] = [];
    const imgDbs: WorldManifest['imgDbs'] = {};
    for (const [name, store] of world.imageStores) {
      opts.onStore?.('img_db', name);
      const rel = path.join('img_db', name);
      const storeOpts = imgDbOptionsFor(store, opts.compress);
      const keys = store.keys();
      writeImgDb(path.join(tmp, rel), (function* () {
        for (const k of keys) yield store.detections(k);
      })(), storeOpts);
      imgDbs[name] = { dir: rel, images: keys.length, ...storeOpts };
      files.push(rel);
    }
    const txtDbs: WorldManifest['txtDbs'] = {};
    for (const [name, db] of world.textDbs) {
      opts.onStore?.('txt_db', name);
      const rel = path.join('txt_db', `${name}.db`);
      const abs = path.join(tmp, rel);
      writeTxtDb(abs, (function* () {
        for (const id of db.ids()) yield db.get(id);
      })());
      // Task side files go in after the store itself (the txt_db writer replaces its directory).
      const sideFiles = Object.keys(db.sideFiles).sort();
      for (const f of sideFiles) writeFileAtomic(path.join(abs, f), JSON.stringify(db.sideFiles[f]));
      txtDbs[name] = { dir: rel, records: db.size, imageStores: db.imageStores, sideFiles };
      files.push(rel);
    }
    writeFileAtomic(path.join(tmp, 'ans2label.json'), JSON.stringify(world.ans2label, null, 1));
    files.push('ans2label.json', WORLD_MANIFEST);
    manifest = {
      format: WORLD_FORMAT,
      version: WORLD_FORMAT_VERSION,
      options: world.options,
      counts: world.counts(),
      tokenizer: 'bert-base-cased',
      ans2label: 'ans2label.json',
      imgDbs,
      txtDbs,
      splits: Object.fromEntries(Object.entries(world.splits).map(([s, scenes]) => [s, scenes.map((sc) => sc.imageId)])),
      files,
    };
    writeFileAtomic(path.join(tmp, WORLD_MANIFEST), JSON.stringify(manifest, null, 1));
  });
  return manifest!;
}

/** Reads and checks a world manifest (DIR/world.json). */
export function readWorldManifest(dir: string): WorldManifest {
  const file = path.join(dir, WORLD_MANIFEST);
  const m = readJsonObject(file, 'the world manifest') as Partial<WorldManifest>;
  if (m.format !== WORLD_FORMAT) throw new Error(`${file}: field 'format' is ${JSON.stringify(m.format)}, expected '${WORLD_FORMAT}'`);
  if (m.version !== WORLD_FORMAT_VERSION) throw new Error(`${file}: field 'version' is ${JSON.stringify(m.version)}, expected ${WORLD_FORMAT_VERSION}`);
  for (const k of ['imgDbs', 'txtDbs', 'splits', 'options'] as const) {
    if (typeof m[k] !== 'object' || m[k] === null) throw new Error(`${file}: field '${k}' is missing or not an object`);
  }
  return m as WorldManifest;
}
