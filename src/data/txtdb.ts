/**
 * txt_db: the official store of tokenized text examples (`TxtLmdb` / `TxtTokLmdb`, written by
 * `prepro.py`). A directory (conventionally `<name>.db`) that is itself an LMDB environment
 * (key = example id, value = lz4 frame of a msgpack map with string keys) plus JSON side files:
 *   meta.json     tokenizer facts: bert (tokenizer name), CLS, SEP, MASK, UNK, v_range
 *   id2len.json   {id: number of wordpieces}
 *   txt2img.json  {id: img_fname (a name, or a list for NLVR2 pairs / VCR gt+det)}
 *   img2txts.json {img_fname: [ids]}
 * Every record has `input_ids` (wordpieces without [CLS]/[SEP]) and `img_fname`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TextRecord, TextSource } from './types.js';
import { LmdbReader, LmdbWriter } from './lmdb.js';
import { lz4FrameCompress, lz4FrameDecompress } from './lz4frame.js';
import { packMsgpack, unpackMsgpack } from './msgpack.js';
import { parseJsonEntries, stringifyJsonEntries } from './ordered-json.js';
import { replaceDirAtomic, writeFileAtomic } from '../util/atomic.js';

export class TxtDbError extends Error {}

/**
 * meta.json of a store written with the bundled bert-base-cased vocabulary: the fields the official
 * prepro.py writes (`toker` is its --toker option, which the official trainers read, e.g. the
 * referring-expression trainer; `tokenizer` and `bert` repeat it).
 */
export const BERT_BASE_CASED_META = {
  toker: 'bert-base-cased',
  tokenizer: 'bert-base-cased',
  bert: 'bert-base-cased',
  UNK: 100,
  CLS: 101,
  SEP: 102,
  MASK: 103,
  v_range: [106, 28996],
} as const;

/** The top-level object of a JSON side file as pairs in file order. */
function readJsonEntries(file: string, what: string): Array<[string, unknown]> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new TxtDbError(`${file}: cannot read ${what} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    return parseJsonEntries(text, `${file}: ${what}`);
  } catch (e) {
    throw new TxtDbError((e as Error).message);
  }
}

export interface TxtDbOpenOptions {
  /** Drop examples longer than this many wordpieces, as the official training does (default: keep all; official default 60). */
  maxTxtLen?: number;
}

/** Read access to a txt_db directory. */
export class TxtDb implements TextSource {
  readonly dir: string;
  readonly meta: Record<string, unknown>;
  private readonly env: LmdbReader;
  private readonly id2len: Map<string, number>;
  private txt2imgCache?: Map<string, string | string[]>;
  private img2txtsCache?: Map<string, string[]>;

  private constructor(dir: string, env: LmdbReader, meta: Record<string, unknown>, id2len: Map<string, number>) {
    this.dir = dir;
    this.env = env;
    this.meta = meta;
    this.id2len = id2len;
  }

  static open(dir: string, opts: TxtDbOpenOptions = {}): TxtDb {
    if (!fs.existsSync(path.join(dir, 'data.mdb'))) throw new TxtDbError(`txt_db ${dir}: no LMDB data file (data.mdb) in this directory`);
    const metaFile = path.join(dir, 'meta.json');
    const meta = Object.fromEntries(readJsonEntries(metaFile, 'meta.json'));
    for (const k of ['CLS', 'SEP', 'MASK']) {
      if (!Number.isInteger(meta[k])) throw new TxtDbError(`${metaFile}: '${k}' must be a token id, got ${JSON.stringify(meta[k])}`);
    }
    const vr = meta.v_range;
    if (!Array.isArray(vr) || vr.length !== 2 || !vr.every((x) => Number.isInteger(x))) throw new TxtDbError(`${metaFile}: 'v_range' must be [first, end) token ids, got ${JSON.stringify(vr)}`);
    // VCR stores name their length file after the question/answer layout.
    const lenFile = ['id2len.json', 'id2len_qa.json'].map((f) => path.join(dir, f)).find((f) => fs.existsSync(f)) ?? path.join(dir, 'id2len.json');
    const id2len = new Map<string, number>();
    for (const [id, len] of readJsonEntries(lenFile, 'id2len')) {
      if (!Number.isInteger(len) || (len as number) < 0) throw new TxtDbError(`${lenFile}: example "${id}" has length ${JSON.stringify(len)}, expected a non-negative integer`);
      if (opts.maxTxtLen !== undefined && opts.maxTxtLen >= 0 && (len as number) > opts.maxTxtLen) continue;
      id2len.set(id, len as number);
    }
    return new TxtDb(dir, LmdbReader.open(dir), meta, id2len);
  }

  close(): void {
    this.env.close();
  }

  /** Example ids in the order of id2len.json (after the length filter). */
  ids(): string[] {
    return [...this.id2len.keys()];
  }

  has(id: string): boolean {
    return this.id2len.has(id);
  }

  len(id: string): number {
    const n = this.id2len.get(id);
    if (n === undefined) throw new TxtDbError(`txt_db ${this.dir}: no example "${id}"`);
    return n;
  }

  /** The stored record with `id` set to its key. */
  get(id: string): TextRecord {
    const raw = this.env.get(id);
    if (!raw) throw new TxtDbError(`txt_db ${this.dir}: no example "${id}"`);
    let rec: unknown;
    try {
      rec = unpackMsgpack(lz4FrameDecompress(raw));
    } catch (e) {
      throw new TxtDbError(`txt_db ${this.dir}: example "${id}" is corrupt: ${(e as Error).message}`);
    }
    if (typeof rec !== 'object' || rec === null || Array.isArray(rec) || rec instanceof Uint8Array) {
      throw new TxtDbError(`txt_db ${this.dir}: example "${id}" is not a msgpack map`);
    }
    const r = rec as Record<string, unknown>;
    const ids = r.input_ids;
    if (!Array.isArray(ids) || !ids.every((x) => Number.isInteger(x))) throw new TxtDbError(`txt_db ${this.dir}: example "${id}": 'input_ids' must be a list of token ids`);
    return { ...r, id, input_ids: ids as number[], img_fname: r.img_fname as string | string[] };
  }

  txt2img(id: string): string | string[] {
    if (!this.txt2imgCache) {
      const file = path.join(this.dir, 'txt2img.json');
      this.txt2imgCache = new Map(readJsonEntries(file, 'txt2img') as Array<[string, string | string[]]>);
    }
    const f = this.txt2imgCache.get(id);
    if (f === undefined) throw new TxtDbError(`txt_db ${this.dir}: txt2img.json has no example "${id}"`);
    return f;
  }

  /** Ids of the examples about image `fname` (empty when none). */
  img2txts(fname: string): string[] {
    if (!this.img2txtsCache) {
      const file = path.join(this.dir, 'img2txts.json');
      this.img2txtsCache = new Map(readJsonEntries(file, 'img2txts') as Array<[string, string[]]>);
    }
    return this.img2txtsCache.get(fname) ?? [];
  }
}

function checkRecord(rec: TextRecord, where: string, vocabSize: number): void {
  if (typeof rec.id !== 'string' || rec.id.length === 0) throw new TxtDbError(`${where}: record needs a non-empty string id`);
  if (!Array.isArray(rec.input_ids)) throw new TxtDbError(`${where}: 'input_ids' must be a list of token ids`);
  rec.input_ids.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 0 || t >= vocabSize) throw new TxtDbError(`${where}: input_ids[${i}] = ${JSON.stringify(t)} is not a token id in [0, ${vocabSize})`);
  });
  const f = rec.img_fname;
  const ok = (typeof f === 'string' && f.length > 0) || (Array.isArray(f) && f.length > 0 && f.every((x) => typeof x === 'string' && x.length > 0));
  if (!ok) throw new TxtDbError(`${where}: 'img_fname' must be a file name or a list of file names`);
}

/**
 * Write a txt_db into `dir`, replacing any store there. The directory is built under a temporary
 * name and renamed into place at the end, so an interrupted run leaves the old store (or none).
 * `meta` is merged over the bert-base-cased defaults.
 */
export function writeTxtDb(dir: string, records: Iterable<TextRecord>, meta: Record<string, unknown> = {}): { count: number } {
  const fullMeta: Record<string, unknown> = { ...BERT_BASE_CASED_META, v_range: [...BERT_BASE_CASED_META.v_range], ...meta };
  const vr = fullMeta.v_range;
  const vocabSize = Array.isArray(vr) && Number.isInteger(vr[1]) ? (vr[1] as number) : BERT_BASE_CASED_META.v_range[1];
  let count = 0;
  replaceDirAtomic(dir, (tmp) => {
    const id2len = new Map<string, number>();
    const txt2img = new Map<string, string | string[]>();
    const img2txts = new Map<string, string[]>();
    const w = new LmdbWriter(tmp);
    try {
      for (const rec of records) {
        const where = `txt_db ${dir}: example "${String(rec?.id)}"`;
        checkRecord(rec, where, vocabSize);
        let packed: Uint8Array;
        try {
          packed = packMsgpack(rec, 'record');
        } catch (e) {
          throw new TxtDbError(`${where}: ${(e as Error).message}`);
        }
        if (id2len.has(rec.id)) throw new TxtDbError(`${where}: duplicate id`);
        w.put(rec.id, lz4FrameCompress(packed));
        id2len.set(rec.id, rec.input_ids.length);
        txt2img.set(rec.id, rec.img_fname);
        for (const f of Array.isArray(rec.img_fname) ? rec.img_fname : [rec.img_fname]) {
          const list = img2txts.get(f);
          if (list) {
            if (list[list.length - 1] !== rec.id) list.push(rec.id);
          } else img2txts.set(f, [rec.id]);
        }
        count++;
      }
      w.finish();
    } catch (e) {
      w.abort();
      throw e;
    }
    // Written pair by pair so that the file keeps the records' order even for integer-like ids.
    writeFileAtomic(path.join(tmp, 'meta.json'), JSON.stringify(fullMeta, null, 1));
    writeFileAtomic(path.join(tmp, 'id2len.json'), stringifyJsonEntries(id2len));
    writeFileAtomic(path.join(tmp, 'txt2img.json'), stringifyJsonEntries(txt2img));
    writeFileAtomic(path.join(tmp, 'img2txts.json'), stringifyJsonEntries(img2txts));
  });
  return { count };
}
