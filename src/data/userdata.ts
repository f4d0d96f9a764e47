/**
 * Bringing your own data: a JSON Lines file of examples plus a folder of per-image BUTD feature
 * files (`.npz`: features [n, D], norm_bb [n, 6], conf [n] or [n, 1], optional soft_labels),
 * turned into the official stores (`txt_db/<name>.db` and `img_db/<name>/`); and a checker that
 * summarises any txt_db / img_db and lists the problems it finds.
 *
 * A JSON line: {"id"?: ..., "text" | "caption" | "question" | "statement" | "expression": "...",
 * "image": "<file>.npz" (or a list of two for pairs), ...any task fields}. Task fields are kept
 * in the text record as they are (e.g. `target`, `answers`, `label`).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TextRecord } from './types.js';
import { defaultTokenizer, type BertTokenizer } from './tokenizer.js';
import { readBUTDNpz, type ButdFeatures } from './npz.js';
import { ImgDb, writeImgDb, type ImageFeatures, type ImgDbOptions } from './imgdb.js';
import { TOKENIZER_NAME } from '../model/model-card.js';
import { TxtDb, writeTxtDb } from './txtdb.js';
import type { PhaseProgress } from '../util/progress.js';

export const TEXT_FIELDS = ['text', 'caption', 'question', 'statement', 'expression'] as const;

export class UserDataError extends Error {}

export interface UserExample {
  id: string;
  /** 1-based line number in the JSONL file. */
  line: number;
  text: string;
  /** Feature file name(s) relative to the images folder. */
  image: string | string[];
  /** Every field of the line except `id` and `image`. */
  fields: Record<string, unknown>;
}

function checkImageName(name: unknown, where: string): string {
  if (typeof name !== 'string' || name.length === 0) throw new UserDataError(`${where}: 'image' must be a feature file name (or a list of them)`);
  if (path.isAbsolute(name) || name.split(/[\\/]/).includes('..')) throw new UserDataError(`${where}: image "${name}" must be a path inside the images folder`);
  return name;
}

/** Parse a JSONL file of examples; malformed lines are fatal errors naming file and line. */
export function parseUserJsonl(content: string, file: string): UserExample[] {
  const out: UserExample[] = [];
  const seen = new Set<string>();
  content.split('\n').forEach((raw, i) => {
    const lineNo = i + 1;
    const where = `${file}:${lineNo}`;
    if (raw.trim() === '') return;
    let obj: unknown;
    try {
      obj = JSON.parse(raw);
    } catch (e) {
      throw new UserDataError(`${where}: not valid JSON (${(e as Error).message})`);
    }
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new UserDataError(`${where}: each line must be a JSON object`);
    const rec = obj as Record<string, unknown>;
    let id: string;
    if (rec.id === undefined) id = String(lineNo);
    else if (typeof rec.id === 'string' || typeof rec.id === 'number') id = String(rec.id);
    else throw new UserDataError(`${where}: 'id' must be a string or a number`);
    if (id === '') throw new UserDataError(`${where}: 'id' must not be empty`);
    if (seen.has(id)) throw new UserDataError(`${where}: duplicate id "${id}"`);
    seen.add(id);
    const textField = TEXT_FIELDS.find((f) => f in rec);
    if (!textField) throw new UserDataError(`${where}: record "${id}" has no text (expected one of ${TEXT_FIELDS.join(', ')})`);
    const text = rec[textField];
    if (typeof text !== 'string') throw new UserDataError(`${where}: record "${id}": '${textField}' must be a string`);
    if (rec.image === undefined) throw new UserDataError(`${where}: record "${id}" has no 'image'`);
    const image = Array.isArray(rec.image) ? rec.image.map((n) => checkImageName(n, `${where}: record "${id}"`)) : checkImageName(rec.image, `${where}: record "${id}"`);
    if (Array.isArray(image) && image.length === 0) throw new UserDataError(`${where}: record "${id}": 'image' list is empty`);
    const fields: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(rec)) if (k !== 'id' && k !== 'image') Object.defineProperty(fields, k, { value: v, enumerable: true, writable: true, configurable: true });
    out.push({ id, line: lineNo, text, image, fields });
  });
  return out;
}

export interface BuildOptions extends Pick<ImgDbOptions, 'confTh' | 'maxBb' | 'minBb'> {
  jsonl: string;
  imagesDir: string;
  outDir: string;
  /** Store name; default: the JSONL file name without extension. */
  name?: string;
  /** npz-valued img_db (`_compressed`). */
  compress?: boolean;
  /** Replace stores of the same name (otherwise an existing store is an error). */
  overwrite?: boolean;
  /** The feature width to keep (default: the width most valid images have). */
  imgDim?: number;
  tokenizer?: BertTokenizer;
  /** Progress of the long phases (checking and writing images), for the command's display. */
  onProgress?: PhaseProgress;
}


export interface BuildReport {
  name: string;
  txtDb: string;
  imgDb: string;
  texts: number;
  images: number;
  /** Records or images left out, each naming the record or image. */
  warnings: string[];
}

/**
 * Tokenize the examples and write `<outDir>/txt_db/<name>.db` and `<outDir>/img_db/<name>/`.
 * Records whose image is missing or unusable (unreadable, NaN features, width unlike the first
 * image) and records with no tokens are left out with a warning; malformed JSON lines are fatal.
 */
export function buildUserData(opts: BuildOptions): BuildReport {
  let content: string;
  try {
    content = fs.readFileSync(opts.jsonl, 'utf8');
  } catch (e) {
    throw new UserDataError(`${opts.jsonl}: cannot read (${(e as Error).message})`);
  }
  if (!fs.existsSync(opts.imagesDir) || !fs.statSync(opts.imagesDir).isDirectory()) throw new UserDataError(`${opts.imagesDir}: images folder does not exist`);
  const examples = parseUserJsonl(content, opts.jsonl);
  const name = opts.name ?? path.basename(opts.jsonl).replace(/\.[^.]*$/, '');
  if (!name || /[\\/]/.test(name) || name === '.' || name === '..') throw new UserDataError(`bad store name ${JSON.stringify(name)}`);
  const tokenizer = opts.tokenizer ?? defaultTokenizer();
  const warnings: string[] = [];

  const wanted: string[] = [];
  const users = new Map<string, string[]>();
  for (const ex of examples) {
    for (const img of Array.isArray(ex.image) ? ex.image : [ex.image]) {
      const list = users.get(img);
      if (list) list.push(ex.id);
      else {
        users.set(img, [ex.id]);
        wanted.push(img);
      }
    }
  }

  // Pass 1: every image on its own (readable, finite, required fields, sane boxes, >= 1 box).
  const imageProblem = new Map<string, string>();
  const dimsOf = new Map<string, { imgDim: number; labelDim: number }>();
  let checked = 0;
  for (const img of wanted) {
    opts.onProgress?.('checking images', checked++, wanted.length);
    const file = path.join(opts.imagesDir, img);
    if (!fs.existsSync(file)) {
      imageProblem.set(img, `image "${img}" not found in ${opts.imagesDir}`);
      continue;
    }
    let f: ButdFeatures;
    try {
      f = readBUTDNpz(file);
    } catch (e) {
      imageProblem.set(img, `image "${img}" is unreadable: ${(e as Error).message}`);
      continue;
    }
    const problem = butdProblem(f);
    if (problem) imageProblem.set(img, `image "${img}" ${problem}`);
    else dimsOf.set(img, { imgDim: f.imgDim, labelDim: f.labelDim });
  }
  // The feature width: --img-dim, else the one most valid images have (the first seen on a tie),
  // so one odd file listed first cannot drop every good record.
  const tally = new Map<string, { imgDim: number; labelDim: number; count: number }>();
  for (const d of dimsOf.values()) {
    const key = `${d.imgDim}/${d.labelDim}`;
    const t = tally.get(key) ?? { ...d, count: 0 };
    t.count++;
    tally.set(key, t);
  }
  const candidates = [...tally.values()].filter((t) => opts.imgDim === undefined || t.imgDim === opts.imgDim);
  const width = candidates.reduce<(typeof candidates)[number] | undefined>((best, t) => (!best || t.count > best.count ? t : best), undefined);
  const widthSource = opts.imgDim !== undefined ? `--img-dim ${opts.imgDim}` : `the majority of images (${width?.count ?? 0} of ${dimsOf.size})`;
  const good = new Set<string>();
  for (const [img, d] of dimsOf) {
    if (width && d.imgDim === width.imgDim && d.labelDim === width.labelDim) good.add(img);
    else imageProblem.set(img, `image "${img}" has feature width ${d.imgDim} / ${d.labelDim} labels, unlike ${width ? `${width.imgDim} / ${width.labelDim}` : `${opts.imgDim}`} of ${widthSource}`);
  }

  // The records that survive, before anything is written.
  const records: TextRecord[] = [];
  const used = new Set<string>();
  const skipped: Array<{ id: string; line: number; reason: string }> = [];
  for (const ex of examples) {
    const imgs = Array.isArray(ex.image) ? ex.image : [ex.image];
    const missing = imgs.find((i) => !good.has(i));
    if (missing !== undefined) {
      skipped.push({ id: ex.id, line: ex.line, reason: imageProblem.get(missing) ?? `image "${missing}" unusable` });
      continue;
    }
    const ids = tokenizer.encode(ex.text);
    if (ids.length === 0) {
      skipped.push({ id: ex.id, line: ex.line, reason: 'empty caption (no tokens)' });
      continue;
    }
    for (const i of imgs) used.add(i);
    records.push({ ...ex.fields, id: ex.id, input_ids: ids, img_fname: ex.image });
  }
  for (const k of skipped) warnings.push(`record "${k.id}" (line ${k.line}) skipped: ${k.reason}`);
  if (records.length === 0) {
    const shown = warnings.slice(0, 5).join('; ');
    throw new UserDataError(`${opts.jsonl}: no valid record, nothing written (${examples.length} record${examples.length === 1 ? '' : 's'} skipped: ${shown}${warnings.length > 5 ? `; and ${warnings.length - 5} more` : ''})`);
  }

  // Never replace a store unless asked, and then atomically: both stores are built under a
  // staging folder and renamed into place.
  const imgDir = path.join(opts.outDir, 'img_db', name);
  const txtDir = path.join(opts.outDir, 'txt_db', `${name}.db`);
  const existing = [imgDir, txtDir].filter((d) => fs.existsSync(d));
  if (existing.length && !opts.overwrite) throw new UserDataError(`${existing.join(' and ')} already exist${existing.length === 1 ? 's' : ''}; pass --overwrite to replace, or choose another --name or --out`);
  for (const d of [opts.outDir, path.dirname(imgDir), path.dirname(txtDir)]) {
    if (fs.existsSync(d) && !fs.statSync(d).isDirectory()) throw new UserDataError(`${d} is a file, not a folder`);
  }
  fs.mkdirSync(path.dirname(imgDir), { recursive: true });
  fs.mkdirSync(path.dirname(txtDir), { recursive: true });
  const stage = path.join(opts.outDir, `.build-${name}-${process.pid}-${Date.now()}`);
  fs.mkdirSync(stage);
  let imageCount: number;
  let textCount: number;
  try {
    opts.onProgress?.('checking images', wanted.length, wanted.length);
    function* images(): Generator<ImageFeatures> {
      let written = 0;
      for (const img of wanted) {
        if (!used.has(img)) continue;
        opts.onProgress?.('writing img_db', written++, used.size);
        const f = readBUTDNpz(path.join(opts.imagesDir, img));
        yield { fname: img, features: f.features, normBb: f.normBb, conf: f.conf, softLabels: f.softLabels, numBoxes: f.numBoxes };
      }
    }
    imageCount = writeImgDb(path.join(stage, 'img'), images(), { confTh: opts.confTh, maxBb: opts.maxBb, minBb: opts.minBb, compress: opts.compress }).count;
    opts.onProgress?.('writing img_db', used.size, used.size);
    // The official prepro.py fields: its options (annotation, output, toker), then the tokenizer facts.
    const meta = {
      annotation: path.resolve(opts.jsonl),
      output: path.resolve(txtDir),
      toker: TOKENIZER_NAME,
      tokenizer: TOKENIZER_NAME,
      bert: TOKENIZER_NAME,
      UNK: tokenizer.unk,
      CLS: tokenizer.cls,
      SEP: tokenizer.sep,
      MASK: tokenizer.mask,
      v_range: [tokenizer.convertTokensToIds(['!'])[0], tokenizer.vocabSize],
    };
    textCount = writeTxtDb(path.join(stage, 'txt'), records, meta).count;
    for (const [from, to] of [['img', imgDir], ['txt', txtDir]] as const) {
      if (fs.existsSync(to)) fs.renameSync(to, path.join(stage, `old-${from}`));
      fs.renameSync(path.join(stage, from), to);
    }
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
  if (existing.length) warnings.push(`--overwrite: replaced ${existing.join(' and ')}`);
  return { name, txtDb: txtDir, imgDb: imgDir, texts: textCount, images: imageCount, warnings };
}

/**
 * What is wrong with one image's BUTD features on its own, or null: no boxes, a missing
 * soft_labels array, NaN or infinite values, boxes outside the image, inverted or negative.
 */
export function butdProblem(f: Pick<ButdFeatures, 'numBoxes' | 'imgDim' | 'features' | 'normBb' | 'softLabels' | 'conf'>): string | null {
  if (!(f.numBoxes >= 1)) return 'has no boxes (0 regions)';
  if (!f.softLabels) return "has no 'soft_labels' array (required: the class distribution of each box)";
  const bad = f.features.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) return `has NaN or infinite features (box ${Math.floor(bad / f.imgDim)}: ${f.features[bad]})`;
  for (const [field, a] of [['soft_labels', f.softLabels], ['conf', f.conf]] as const) {
    const i = a.findIndex((v) => !Number.isFinite(v));
    if (i >= 0) return `has NaN or infinite ${field} (value ${i}: ${a[i]})`;
  }
  return boxProblem(f.normBb, f.numBoxes);
}

/** Sanity of normalised boxes [x1, y1, x2, y2, w, h] (rows of 6): finite, inside [0, 1], x1 <= x2, y1 <= y2, w, h >= 0. */
export function boxProblem(normBb: Float32Array, n: number): string | null {
  const TOL = 0.01;
  for (let b = 0; b < n; b++) {
    const [x1, y1, x2, y2, w, h] = normBb.subarray(b * 6, b * 6 + 6);
    const box = `[${[x1, y1, x2, y2].map((v) => +v.toFixed(4)).join(', ')}]`;
    if (![x1, y1, x2, y2, w, h].every(Number.isFinite)) return `has a NaN or infinite box (box ${b}: ${box})`;
    if (x2 < x1 || y2 < y1) return `has an inverted box (box ${b}: ${box}; expected x1 <= x2 and y1 <= y2)`;
    if (w < 0 || h < 0) return `has a box with negative size (box ${b}: w ${w}, h ${h})`;
    if ([x1, y1, x2, y2].some((v) => v < -TOL || v > 1 + TOL)) return `has a box outside the image (box ${b}: ${box}; expected normalised coordinates in [0, 1])`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Inspection

export interface Problem {
  kind: 'missing image' | 'empty caption' | 'bad features' | 'bad boxes' | 'wrong width' | 'corrupt record' | 'length mismatch';
  /** The example id or image name. */
  record: string;
  detail: string;
}

export interface HistogramBin {
  lo: number;
  hi: number;
  count: number;
}

export interface TxtDbSummary {
  dir: string;
  examples: number;
  lengths: HistogramBin[];
  minLen: number;
  maxLen: number;
  meanLen: number;
}

export interface ImgDbSummary {
  dir: string;
  env: string;
  images: number;
  imgDim: number;
  labelDim: number;
  regions: HistogramBin[];
  minNbb: number;
  maxNbb: number;
}

export interface InspectReport {
  path: string;
  txtDbs: TxtDbSummary[];
  imgDbs: ImgDbSummary[];
  problems: Problem[];
}

/** Counts of `values` in bins of width `width` (aligned to multiples of it), from the lowest to the highest value. */
export function histogram(values: readonly number[], width: number): HistogramBin[] {
  if (values.length === 0) return [];
  const max = Math.max(...values);
  const first = Math.floor(Math.min(...values) / width);
  const bins: HistogramBin[] = [];
  for (let lo = first * width; lo <= max; lo += width) bins.push({ lo, hi: lo + width - 1, count: 0 });
  for (const v of values) bins[Math.floor(v / width) - first].count++;
  return bins;
}

function isTxtDb(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'data.mdb')) && fs.existsSync(path.join(dir, 'meta.json'));
}

const ENV_NAME = /^(?:feat_th([0-9.e+-]+)_max(\d+)_min(\d+)|feat_numbb(\d+)|all)(_compressed)?$/;

function imgDbEnvs(dir: string): Array<{ env: string; opts: ImgDbOptions }> {
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out: Array<{ env: string; opts: ImgDbOptions }> = [];
  for (const e of entries.sort()) {
    const m = ENV_NAME.exec(e);
    if (!m || !fs.existsSync(path.join(dir, e, 'data.mdb'))) continue;
    const compressed = m[5] !== undefined;
    if (m[1] !== undefined) out.push({ env: e, opts: { confTh: Number(m[1]), maxBb: Number(m[2]), minBb: Number(m[3]), compressed } });
    else if (m[4] !== undefined) out.push({ env: e, opts: { confTh: -1, numBb: Number(m[4]), compressed } });
    else if (!entries.some((x) => x.startsWith('feat_th'))) out.push({ env: e, opts: { compressed } }); // `all` is read through the default threshold
  }
  return out;
}

function findStores(root: string, depth: number, txt: string[], img: string[]): void {
  if (isTxtDb(root)) {
    txt.push(root);
    return;
  }
  if (imgDbEnvs(root).length) {
    img.push(root);
    return;
  }
  if (depth === 0) return;
  let entries: fs.Dirent[] = [];
  try {
    entries = fs.readdirSync(root, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) if (e.isDirectory()) findStores(path.join(root, e.name), depth - 1, txt, img);
}

/**
 * Summarise a txt_db, an img_db, or a folder holding stores (searched three levels deep), and
 * list problems: records that cannot be read, empty captions, id2len disagreeing with a record,
 * images with NaN features or an odd feature width, and (when img_dbs are present) text records
 * whose image is in none of them.
 */
export function inspectData(p: string, onProgress?: PhaseProgress): InspectReport {
  if (!fs.existsSync(p)) throw new UserDataError(`${p}: no such file or directory`);
  const txtDirs: string[] = [];
  const imgDirs: string[] = [];
  findStores(p, 3, txtDirs, imgDirs);
  if (!txtDirs.length && !imgDirs.length) throw new UserDataError(`${p}: no txt_db (data.mdb + meta.json) or img_db (feat_*/data.mdb) found here`);
  const report: InspectReport = { path: p, txtDbs: [], imgDbs: [], problems: [] };
  const problems = report.problems;
  const knownImages = new Set<string>();

  for (const dir of imgDirs) {
    for (const { env, opts } of imgDbEnvs(dir)) {
      let db: ImgDb;
      try {
        db = ImgDb.open(dir, opts);
      } catch (e) {
        problems.push({ kind: 'corrupt record', record: path.join(dir, env), detail: (e as Error).message });
        continue;
      }
      try {
        const nbbs: number[] = [];
        const keys = db.keys();
        let n = 0;
        for (const k of keys) {
          onProgress?.(`reading ${path.basename(dir)}`, n++, keys.length);
          knownImages.add(k);
          try {
            const rec = db.get(k);
            nbbs.push(rec.nbb);
            const bp = rec.nbb < 1 ? 'has no boxes (0 regions)' : boxProblem(rec.normBb, rec.nbb);
            if (bp) problems.push({ kind: 'bad boxes', record: k, detail: `image "${k}" ${bp}` });
          } catch (e) {
            const msg = (e as Error).message;
            const kind: Problem['kind'] = /NaN|infinite/.test(msg) ? 'bad features' : /width/.test(msg) ? 'wrong width' : 'corrupt record';
            problems.push({ kind, record: k, detail: msg });
          }
        }
        report.imgDbs.push({
          dir,
          env,
          images: db.keys().length,
          imgDim: db.imgDim,
          labelDim: db.labelDim,
          regions: histogram(nbbs, 10),
          minNbb: nbbs.length ? Math.min(...nbbs) : 0,
          maxNbb: nbbs.length ? Math.max(...nbbs) : 0,
        });
      } finally {
        db.close();
      }
    }
  }

  for (const dir of txtDirs) {
    let db: TxtDb;
    try {
      db = TxtDb.open(dir);
    } catch (e) {
      problems.push({ kind: 'corrupt record', record: dir, detail: (e as Error).message });
      continue;
    }
    try {
      const lens: number[] = [];
      const ids = db.ids();
      let n = 0;
      for (const id of ids) {
        onProgress?.(`reading ${path.basename(dir)}`, n++, ids.length);
        const len = db.len(id);
        lens.push(len);
        let rec: TextRecord;
        try {
          rec = db.get(id);
        } catch (e) {
          problems.push({ kind: 'corrupt record', record: id, detail: (e as Error).message });
          continue;
        }
        if (rec.input_ids.length === 0) problems.push({ kind: 'empty caption', record: id, detail: `example "${id}" has no tokens` });
        if (rec.input_ids.length !== len) problems.push({ kind: 'length mismatch', record: id, detail: `id2len says ${len}, the record has ${rec.input_ids.length} tokens` });
        if (imgDirs.length) {
          const names = Array.isArray(rec.img_fname) ? rec.img_fname : [rec.img_fname];
          for (const n of names) if (!knownImages.has(n)) problems.push({ kind: 'missing image', record: id, detail: `image "${n}" is in no img_db under ${p}` });
        }
      }
      report.txtDbs.push({
        dir,
        examples: lens.length,
        lengths: histogram(lens, 5),
        minLen: lens.length ? Math.min(...lens) : 0,
        maxLen: lens.length ? Math.max(...lens) : 0,
        meanLen: lens.length ? lens.reduce((a, b) => a + b, 0) / lens.length : 0,
      });
    } finally {
      db.close();
    }
  }
  return report;
}

function renderHistogram(bins: HistogramBin[], indent: string): string[] {
  const top = Math.max(1, ...bins.map((b) => b.count));
  const labelWidth = Math.max(...bins.map((b) => `${b.lo}-${b.hi}`.length));
  return bins.map((b) => `${indent}${`${b.lo}-${b.hi}`.padStart(labelWidth)} | ${'#'.repeat(Math.round((b.count / top) * 40)).padEnd(40)} ${b.count}`);
}

/** Human-readable report; lists at most `maxPerKind` problems of each kind. */
export function formatInspectReport(r: InspectReport, maxPerKind = 10): string {
  const out: string[] = [];
  for (const t of r.txtDbs) {
    out.push(`txt_db ${t.dir}: ${t.examples} examples, text length ${t.minLen}..${t.maxLen} wordpieces (mean ${t.meanLen.toFixed(1)})`);
    out.push(...renderHistogram(t.lengths, '  '));
  }
  for (const i of r.imgDbs) {
    out.push(`img_db ${i.dir} [${i.env}]: ${i.images} images, feature width ${i.imgDim}, ${i.labelDim} soft labels, regions ${i.minNbb}..${i.maxNbb}`);
    out.push(...renderHistogram(i.regions, '  '));
  }
  if (!r.problems.length) out.push('no problems found');
  else {
    out.push(`${r.problems.length} problem${r.problems.length === 1 ? '' : 's'} found:`);
    const kinds = [...new Set(r.problems.map((p) => p.kind))];
    for (const kind of kinds) {
      const list = r.problems.filter((p) => p.kind === kind);
      out.push(`  ${kind}: ${list.length}`);
      for (const p of list.slice(0, maxPerKind)) out.push(`    ${p.record}: ${p.detail}`);
      if (list.length > maxPerKind) out.push(`    ... and ${list.length - maxPerKind} more`);
    }
  }
  return out.join('\n');
}
