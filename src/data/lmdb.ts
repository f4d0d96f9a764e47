/**
 * LMDB data files in pure TypeScript, data format version 1: the on-disk format of LMDB 0.9.x,
 * which py-lmdb (and so every official UNITER txt_db / img_db) writes. The `lmdb` npm package
 * ships a build of LMDB that uses data format version 2: it cannot open these files (it crashes
 * on them) and what it writes cannot be opened by py-lmdb, so the stores read and write the
 * format here directly.
 *
 * Layout (64-bit little-endian): the file is an array of pages. Pages 0 and 1 are meta pages (the
 * one with the larger transaction id is current); the main database is a B+tree of branch and
 * leaf pages; a value too large for a leaf node lives on consecutive overflow pages. Only the
 * plain main database is supported (no named sub-databases, no duplicate-sorted keys), which is
 * all the official stores use. Keys compare as bytes (memcmp, then length).
 *
 * The writer bulk-loads a fresh file in one pass: large values go straight to overflow pages as
 * they arrive, small ones are held until `finish()`, which sorts the keys, packs the leaves and
 * the branch levels above them and writes the two meta pages last. Nothing is visible as a
 * committed database before the meta pages are written.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const MAGIC = 0xbeefc0de;
const DATA_VERSION = 1;
const PAGE_HEADER = 16;
const NODE_HEADER = 8;
const P_INVALID = 0xffffffffffffffffn;

const P_BRANCH = 0x01;
const P_LEAF = 0x02;
const P_OVERFLOW = 0x04;
const P_META = 0x08;
const P_LEAF2 = 0x20;

const F_BIGDATA = 0x01;
const F_SUBDATA = 0x02;
const F_DUPDATA = 0x04;

/** Main-database flags a plain byte-keyed table never has (reverse/integer keys, duplicates). */
const UNSUPPORTED_DB_FLAGS = 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40;
/** The free-page database is keyed by transaction id: LMDB marks it MDB_INTEGERKEY. */
const FREE_DB_FLAGS = 0x08;

/** LMDB 0.9's default maximum key size. */
export const LMDB_MAX_KEY_SIZE = 511;

// Byte offsets inside a meta page.
const META_MAGIC = PAGE_HEADER;
const META_VERSION = PAGE_HEADER + 4;
const META_MAPSIZE = PAGE_HEADER + 16;
const META_FREE_DB = PAGE_HEADER + 24;
const META_MAIN_DB = META_FREE_DB + 48;
const META_LAST_PG = META_MAIN_DB + 48;
const META_TXNID = META_LAST_PG + 8;

export interface LmdbStat {
  pageSize: number;
  depth: number;
  branchPages: number;
  leafPages: number;
  overflowPages: number;
  entries: number;
}

export class LmdbError extends Error {}

export type LmdbKey = string | Uint8Array;

function keyBytes(key: LmdbKey): Buffer {
  return typeof key === 'string' ? Buffer.from(key, 'utf8') : Buffer.from(key.buffer, key.byteOffset, key.byteLength);
}

function showKey(key: Uint8Array): string {
  return JSON.stringify(Buffer.from(key).toString('utf8'));
}

/** Path of the data file for an environment directory (or a data file given directly). */
export function lmdbDataFile(envPath: string): string {
  let isDir = false;
  try {
    isDir = fs.statSync(envPath).isDirectory();
  } catch (e) {
    throw new LmdbError(`${envPath}: no LMDB environment here (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return isDir ? path.join(envPath, 'data.mdb') : envPath;
}

interface DbRecord {
  flags: number;
  depth: number;
  branchPages: number;
  leafPages: number;
  overflowPages: number;
  entries: number;
  root: bigint;
}

function readDb(page: Buffer, at: number): DbRecord {
  return {
    flags: page.readUInt16LE(at + 4),
    depth: page.readUInt16LE(at + 6),
    branchPages: Number(page.readBigUInt64LE(at + 8)),
    leafPages: Number(page.readBigUInt64LE(at + 16)),
    overflowPages: Number(page.readBigUInt64LE(at + 24)),
    entries: Number(page.readBigUInt64LE(at + 32)),
    root: page.readBigUInt64LE(at + 40),
  };
}

/** Read-only access to one LMDB data file through positioned reads (no memory map in Node). */
export class LmdbReader {
  readonly file: string;
  readonly stat: LmdbStat;
  private fd: number;
  private readonly pageSize: number;
  private readonly lastPage: number;
  private readonly root: number;
  private readonly pageCache = new Map<number, Buffer>();
  private static readonly CACHE_PAGES = 512;

  private constructor(file: string, fd: number, pageSize: number, lastPage: number, main: DbRecord) {
    this.file = file;
    this.fd = fd;
    this.pageSize = pageSize;
    this.lastPage = lastPage;
    this.root = main.root === P_INVALID ? -1 : Number(main.root);
    this.stat = {
      pageSize,
      depth: main.depth,
      branchPages: main.branchPages,
      leafPages: main.leafPages,
      overflowPages: main.overflowPages,
      entries: main.entries,
    };
  }

  /** Open the environment directory `envPath` (holding data.mdb) or a data file. */
  static open(envPath: string): LmdbReader {
    const file = lmdbDataFile(envPath);
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      throw new LmdbError(`${file}: cannot open LMDB data file (${(e as Error).message})`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      const first = Buffer.alloc(Math.min(size, PAGE_HEADER + 152));
      fs.readSync(fd, first, 0, first.length, 0);
      const meta0 = parseMeta(file, first, 0);
      const pageSize = meta0.pageSize;
      if (size < 2 * pageSize) throw new LmdbError(`${file}: truncated LMDB file (${size} bytes, page size ${pageSize} needs at least two meta pages)`);
      const second = Buffer.alloc(PAGE_HEADER + 152);
      fs.readSync(fd, second, 0, second.length, pageSize);
      const meta1 = parseMeta(file, second, 1);
      if (meta1.pageSize !== pageSize) throw new LmdbError(`${file}: meta pages disagree on the page size (${pageSize} vs ${meta1.pageSize})`);
      const meta = meta1.txnid > meta0.txnid ? meta1 : meta0;
      const needed = (meta.lastPage + 1) * pageSize;
      if (size < needed) throw new LmdbError(`${file}: truncated LMDB file (${size} bytes, last page ${meta.lastPage} needs ${needed})`);
      if (meta.main.root !== P_INVALID && (meta.main.root < 2n || meta.main.root > BigInt(meta.lastPage))) {
        throw new LmdbError(`${file}: root page ${meta.main.root} lies outside pages 2..${meta.lastPage} (corrupt file)`);
      }
      if (meta.main.flags & UNSUPPORTED_DB_FLAGS) {
        throw new LmdbError(`${file}: main database flags 0x${meta.main.flags.toString(16)} (duplicate or integer keys) are not supported; expected a plain byte-keyed table`);
      }
      return new LmdbReader(file, fd, pageSize, meta.lastPage, meta.main);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
    this.pageCache.clear();
  }

  /** The value stored under `key` (a fresh copy), or undefined. */
  get(key: LmdbKey): Uint8Array | undefined {
    const k = keyBytes(key);
    if (this.root < 0) return undefined;
    let page = this.page(this.root, k);
    for (let level = 0; level < 64; level++) {
      const flags = page.readUInt16LE(10);
      const n = (page.readUInt16LE(12) - PAGE_HEADER) >> 1;
      if (flags & P_BRANCH) {
        // The first node's key is implicitly "lowest": search the others for the last key <= k.
        let lo = 1;
        let hi = n - 1;
        let child = 0;
        while (lo <= hi) {
          const mid = (lo + hi) >> 1;
          const c = Buffer.compare(this.nodeKey(page, mid), k);
          if (c <= 0) {
            child = mid;
            lo = mid + 1;
          } else hi = mid - 1;
        }
        page = this.page(this.branchChild(page, child, k), k);
        continue;
      }
      if (flags & P_LEAF2) throw new LmdbError(`${this.file}: key ${showKey(k)}: fixed-size duplicate pages are not supported`);
      if (!(flags & P_LEAF)) throw new LmdbError(`${this.file}: key ${showKey(k)}: corrupt page (flags 0x${flags.toString(16)}, expected a branch or leaf page)`);
      let lo = 0;
      let hi = n - 1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        const c = Buffer.compare(this.nodeKey(page, mid), k);
        if (c === 0) return this.leafValue(page, mid, k);
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
      }
      return undefined;
    }
    throw new LmdbError(`${this.file}: key ${showKey(k)}: B-tree deeper than 64 levels (corrupt file)`);
  }

  has(key: LmdbKey): boolean {
    return this.get(key) !== undefined;
  }

  /** All keys in byte order. */
  *keys(): Generator<Uint8Array> {
    for (const [k] of this.walk(false)) yield k;
  }

  /** All entries in key order. */
  *entries(): Generator<[Uint8Array, Uint8Array]> {
    for (const [k, v] of this.walk(true)) yield [k, v as Uint8Array];
  }

  private *walk(withValues: boolean): Generator<[Uint8Array, Uint8Array | undefined]> {
    if (this.root < 0) return;
    const stack: Array<{ page: Buffer; i: number }> = [{ page: this.page(this.root), i: 0 }];
    while (stack.length) {
      const top = stack[stack.length - 1];
      const flags = top.page.readUInt16LE(10);
      const n = (top.page.readUInt16LE(12) - PAGE_HEADER) >> 1;
      if (top.i >= n) {
        stack.pop();
        continue;
      }
      const i = top.i++;
      if (flags & P_BRANCH) {
        if (stack.length > 64) throw new LmdbError(`${this.file}: B-tree deeper than 64 levels (corrupt file)`);
        stack.push({ page: this.page(this.branchChild(top.page, i)), i: 0 });
      } else if (flags & P_LEAF && !(flags & P_LEAF2)) {
        const key = new Uint8Array(this.nodeKey(top.page, i));
        yield [key, withValues ? this.leafValue(top.page, i, key) : undefined];
      } else {
        throw new LmdbError(`${this.file}: corrupt page ${top.page.readBigUInt64LE(0)} (flags 0x${flags.toString(16)})`);
      }
    }
  }

  private nodeOffset(page: Buffer, i: number): number {
    const off = page.readUInt16LE(PAGE_HEADER + 2 * i);
    if (off < PAGE_HEADER || off + NODE_HEADER > this.pageSize) throw new LmdbError(`${this.file}: corrupt node offset ${off} in page ${page.readBigUInt64LE(0)}`);
    return off;
  }

  private nodeKey(page: Buffer, i: number): Buffer {
    const off = this.nodeOffset(page, i);
    const ksize = page.readUInt16LE(off + 6);
    if (off + NODE_HEADER + ksize > this.pageSize) throw new LmdbError(`${this.file}: corrupt key size ${ksize} in page ${page.readBigUInt64LE(0)}`);
    return page.subarray(off + NODE_HEADER, off + NODE_HEADER + ksize);
  }

  private branchChild(page: Buffer, i: number, forKey?: Uint8Array): number {
    const off = this.nodeOffset(page, i);
    const pgno = page.readUInt32LE(off) + page.readUInt16LE(off + 4) * 2 ** 32;
    if (pgno < 2 || pgno > this.lastPage) {
      throw new LmdbError(`${this.file}: ${forKey ? `key ${showKey(forKey)}: ` : ''}branch points at page ${pgno} outside 2..${this.lastPage} (corrupt file)`);
    }
    return pgno;
  }

  private leafValue(page: Buffer, i: number, key: Uint8Array): Uint8Array {
    const off = this.nodeOffset(page, i);
    const dsize = page.readUInt32LE(off);
    const nflags = page.readUInt16LE(off + 4);
    const ksize = page.readUInt16LE(off + 6);
    const dataAt = off + NODE_HEADER + ksize;
    if (nflags & F_DUPDATA) throw new LmdbError(`${this.file}: key ${showKey(key)} has duplicate values (not supported)`);
    if (nflags & F_SUBDATA) throw new LmdbError(`${this.file}: key ${showKey(key)} names a sub-database, not a value (not supported)`);
    if (!(nflags & F_BIGDATA)) {
      if (dataAt + dsize > this.pageSize) throw new LmdbError(`${this.file}: key ${showKey(key)}: value of ${dsize} bytes overruns its page (corrupt file)`);
      return new Uint8Array(page.subarray(dataAt, dataAt + dsize));
    }
    const pgno = Number(page.readBigUInt64LE(dataAt));
    const pages = Math.floor((PAGE_HEADER - 1 + dsize) / this.pageSize) + 1;
    if (pgno < 2 || pgno + pages - 1 > this.lastPage) {
      throw new LmdbError(`${this.file}: key ${showKey(key)}: overflow pages ${pgno}..${pgno + pages - 1} lie outside the file (corrupt file)`);
    }
    const head = Buffer.alloc(PAGE_HEADER);
    fs.readSync(this.fd, head, 0, PAGE_HEADER, pgno * this.pageSize);
    if (!(head.readUInt16LE(10) & P_OVERFLOW) || Number(head.readBigUInt64LE(0)) !== pgno || head.readUInt32LE(12) < pages) {
      throw new LmdbError(`${this.file}: key ${showKey(key)}: page ${pgno} is not the overflow page its node points at (corrupt file)`);
    }
    const out = new Uint8Array(dsize);
    let got = 0;
    while (got < dsize) {
      const r = fs.readSync(this.fd, out, got, dsize - got, pgno * this.pageSize + PAGE_HEADER + got);
      if (r <= 0) throw new LmdbError(`${this.file}: key ${showKey(key)}: short read of a ${dsize}-byte value`);
      got += r;
    }
    return out;
  }

  private page(pgno: number, forKey?: Uint8Array): Buffer {
    const cached = this.pageCache.get(pgno);
    if (cached) return cached;
    if (this.fd < 0) throw new LmdbError(`${this.file}: read after close()`);
    const buf = Buffer.alloc(this.pageSize);
    const r = fs.readSync(this.fd, buf, 0, this.pageSize, pgno * this.pageSize);
    if (r !== this.pageSize) throw new LmdbError(`${this.file}: short read of page ${pgno}`);
    if (Number(buf.readBigUInt64LE(0)) !== pgno) {
      throw new LmdbError(`${this.file}: ${forKey ? `key ${showKey(forKey)}: ` : ''}page ${pgno} carries page number ${buf.readBigUInt64LE(0)} (corrupt file)`);
    }
    const lower = buf.readUInt16LE(12);
    const upper = buf.readUInt16LE(14);
    if (lower < PAGE_HEADER || lower > upper || upper > this.pageSize) {
      throw new LmdbError(`${this.file}: page ${pgno} has corrupt bounds (lower ${lower}, upper ${upper})`);
    }
    if (this.pageCache.size >= LmdbReader.CACHE_PAGES) this.pageCache.delete(this.pageCache.keys().next().value as number);
    this.pageCache.set(pgno, buf);
    return buf;
  }
}

function parseMeta(file: string, buf: Buffer, which: number): { pageSize: number; lastPage: number; txnid: bigint; main: DbRecord } {
  if (buf.length < META_TXNID + 8) throw new LmdbError(`${file}: not an LMDB file (too short for meta page ${which})`);
  const magic = buf.readUInt32LE(META_MAGIC);
  if (magic !== MAGIC) throw new LmdbError(`${file}: not an LMDB file (meta page ${which} magic 0x${magic.toString(16)}, expected 0xbeefc0de)`);
  if (!(buf.readUInt16LE(10) & P_META)) throw new LmdbError(`${file}: page ${which} is not a meta page (corrupt file)`);
  const version = buf.readUInt32LE(META_VERSION);
  if (version !== DATA_VERSION) {
    throw new LmdbError(
      `${file}: LMDB data format version ${version} is not supported (expected ${DATA_VERSION}, the format of LMDB 0.9 / py-lmdb and the official stores;` +
        ` version 2 is written by LMDB 1.0 builds such as the lmdb npm package)`,
    );
  }
  const pageSize = buf.readUInt32LE(META_FREE_DB);
  if (pageSize < 512 || pageSize > 65536 || pageSize & (pageSize - 1)) throw new LmdbError(`${file}: implausible page size ${pageSize} in meta page ${which}`);
  return {
    pageSize,
    lastPage: Number(buf.readBigUInt64LE(META_LAST_PG)),
    txnid: buf.readBigUInt64LE(META_TXNID),
    main: readDb(buf, META_MAIN_DB),
  };
}

interface PendingNode {
  key: Buffer;
  /** Inline value, or null when the value is on overflow pages. */
  value: Buffer | null;
  size: number;
  overflowPage: number;
}

interface BuiltPage {
  pgno: number;
  firstKey: Buffer;
}

const even = (n: number): number => (n + 1) & ~1;

/**
 * Writes a new LMDB data file `<envDir>/data.mdb` (the directory must exist; an existing data file
 * is replaced). Keys may arrive in any order; a repeated key is an error.
 */
export class LmdbWriter {
  readonly file: string;
  private fd: number;
  private readonly pageSize: number;
  private readonly nodeMax: number;
  private nextPage = 2;
  private overflowPages = 0;
  private readonly nodes: PendingNode[] = [];
  private readonly seen = new Set<string>();

  constructor(envDir: string, opts: { pageSize?: number } = {}) {
    this.pageSize = opts.pageSize ?? 4096;
    if (this.pageSize < 1024 || this.pageSize > 65536 || this.pageSize & (this.pageSize - 1)) throw new LmdbError(`LMDB page size ${this.pageSize} must be a power of two in 1024..65536`);
    // LMDB moves a value to overflow pages when its node would exceed half a page (two nodes per page minimum).
    this.nodeMax = (((this.pageSize - PAGE_HEADER) / 2) & ~1) - 2;
    this.file = path.join(envDir, 'data.mdb');
    this.fd = fs.openSync(this.file, 'w');
  }

  put(key: LmdbKey, value: Uint8Array): void {
    if (this.fd < 0) throw new LmdbError(`${this.file}: put() after finish() or abort()`);
    const k = Buffer.from(keyBytes(key));
    if (k.length === 0 || k.length > LMDB_MAX_KEY_SIZE) throw new LmdbError(`${this.file}: key ${showKey(k)} is ${k.length} bytes; LMDB keys must be 1..${LMDB_MAX_KEY_SIZE} bytes`);
    if (value.length > 0xffffffff) throw new LmdbError(`${this.file}: key ${showKey(k)}: value of ${value.length} bytes exceeds 4 GiB`);
    const id = k.toString('latin1');
    if (this.seen.has(id)) throw new LmdbError(`${this.file}: duplicate key ${showKey(k)}`);
    this.seen.add(id);
    if (NODE_HEADER + k.length + value.length > this.nodeMax) {
      const pages = Math.floor((PAGE_HEADER - 1 + value.length) / this.pageSize) + 1;
      const head = Buffer.alloc(PAGE_HEADER);
      head.writeBigUInt64LE(BigInt(this.nextPage), 0);
      head.writeUInt16LE(P_OVERFLOW, 10);
      head.writeUInt32LE(pages, 12);
      const at = this.nextPage * this.pageSize;
      this.writeAt(head, at);
      this.writeAt(value, at + PAGE_HEADER);
      // Pad the last overflow page so that the file always ends on a page boundary.
      const end = at + pages * this.pageSize;
      const written = at + PAGE_HEADER + value.length;
      if (end > written) this.writeAt(Buffer.alloc(end - written), written);
      this.nodes.push({ key: k, value: null, size: value.length, overflowPage: this.nextPage });
      this.nextPage += pages;
      this.overflowPages += pages;
    } else {
      this.nodes.push({ key: k, value: Buffer.from(value), size: value.length, overflowPage: -1 });
    }
  }

  /** Sort, write the tree and the meta pages, flush to disk. */
  finish(): LmdbStat {
    if (this.fd < 0) throw new LmdbError(`${this.file}: finish() called twice`);
    this.nodes.sort((a, b) => Buffer.compare(a.key, b.key));
    let level = this.writeLeaves();
    const leafPages = level.length;
    let branchPages = 0;
    let depth = level.length ? 1 : 0;
    while (level.length > 1) {
      level = this.writeBranches(level);
      branchPages += level.length;
      depth++;
    }
    const stat: LmdbStat = { pageSize: this.pageSize, depth, branchPages, leafPages, overflowPages: this.overflowPages, entries: this.nodes.length };
    const root = level.length ? BigInt(level[0].pgno) : P_INVALID;
    this.writeAt(this.metaPage(0, 0n, 1, { ...stat, depth: 0, branchPages: 0, leafPages: 0, overflowPages: 0, entries: 0 }, P_INVALID), 0);
    this.writeAt(this.metaPage(1, 1n, this.nextPage - 1, stat, root), this.pageSize);
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.fd = -1;
    return stat;
  }

  /** Close without finishing and delete the partial data file. */
  abort(): void {
    if (this.fd < 0) return;
    fs.closeSync(this.fd);
    this.fd = -1;
    fs.rmSync(this.file, { force: true });
  }

  private writeAt(data: Uint8Array, position: number): void {
    let done = 0;
    while (done < data.length) done += fs.writeSync(this.fd, data, done, data.length - done, position + done);
  }

  private newPage(flags: number): { buf: Buffer; pgno: number } {
    const buf = Buffer.alloc(this.pageSize);
    const pgno = this.nextPage++;
    buf.writeBigUInt64LE(BigInt(pgno), 0);
    buf.writeUInt16LE(flags, 10);
    return { buf, pgno };
  }

  private writeLeaves(): BuiltPage[] {
    const out: BuiltPage[] = [];
    let i = 0;
    while (i < this.nodes.length) {
      const { buf, pgno } = this.newPage(P_LEAF);
      let lower = PAGE_HEADER;
      let upper = this.pageSize;
      const first = i;
      while (i < this.nodes.length) {
        const node = this.nodes[i];
        const dataLen = node.value ? node.size : 8;
        const size = even(NODE_HEADER + node.key.length + dataLen);
        if (upper - size < lower + 2) break;
        upper -= size;
        buf.writeUInt16LE(upper, lower);
        lower += 2;
        buf.writeUInt32LE(node.size, upper);
        buf.writeUInt16LE(node.value ? 0 : F_BIGDATA, upper + 4);
        buf.writeUInt16LE(node.key.length, upper + 6);
        node.key.copy(buf, upper + NODE_HEADER);
        if (node.value) node.value.copy(buf, upper + NODE_HEADER + node.key.length);
        else buf.writeBigUInt64LE(BigInt(node.overflowPage), upper + NODE_HEADER + node.key.length);
        i++;
      }
      buf.writeUInt16LE(lower, 12);
      buf.writeUInt16LE(upper, 14);
      this.writeAt(buf, pgno * this.pageSize);
      out.push({ pgno, firstKey: this.nodes[first].key });
    }
    return out;
  }

  private writeBranches(children: BuiltPage[]): BuiltPage[] {
    // Group children greedily; the first node of a branch page carries no key.
    const groups: BuiltPage[][] = [];
    let group: BuiltPage[] = [];
    let used = 0;
    for (const child of children) {
      const size = even(NODE_HEADER + (group.length ? child.firstKey.length : 0)) + 2;
      if (group.length && used + size > this.pageSize - PAGE_HEADER) {
        groups.push(group);
        group = [];
        used = 0;
      }
      used += even(NODE_HEADER + (group.length ? child.firstKey.length : 0)) + 2;
      group.push(child);
    }
    groups.push(group);
    // LMDB expects at least two children per branch page: borrow one for a lone last child.
    if (groups.length > 1 && groups[groups.length - 1].length === 1) {
      const prev = groups[groups.length - 2];
      groups[groups.length - 1].unshift(prev.pop() as BuiltPage);
    }
    const out: BuiltPage[] = [];
    for (const g of groups) {
      const { buf, pgno } = this.newPage(P_BRANCH);
      let lower = PAGE_HEADER;
      let upper = this.pageSize;
      g.forEach((child, j) => {
        const key = j === 0 ? Buffer.alloc(0) : child.firstKey;
        upper -= even(NODE_HEADER + key.length);
        buf.writeUInt16LE(upper, lower);
        lower += 2;
        // A branch node keeps the child page number in its size and flag fields (48 bits).
        buf.writeUInt32LE(child.pgno % 2 ** 32, upper);
        buf.writeUInt16LE(Math.floor(child.pgno / 2 ** 32), upper + 4);
        buf.writeUInt16LE(key.length, upper + 6);
        key.copy(buf, upper + NODE_HEADER);
      });
      buf.writeUInt16LE(lower, 12);
      buf.writeUInt16LE(upper, 14);
      this.writeAt(buf, pgno * this.pageSize);
      out.push({ pgno, firstKey: g[0].firstKey });
    }
    return out;
  }

  private metaPage(pgno: number, txnid: bigint, lastPage: number, main: LmdbStat, root: bigint): Buffer {
    const buf = Buffer.alloc(this.pageSize);
    buf.writeBigUInt64LE(BigInt(pgno), 0);
    buf.writeUInt16LE(P_META, 10);
    buf.writeUInt32LE(MAGIC, META_MAGIC);
    buf.writeUInt32LE(DATA_VERSION, META_VERSION);
    // Map size: what py-lmdb opens with at least (1 GiB), or the whole file when larger.
    const fileBytes = (lastPage + 1) * this.pageSize;
    buf.writeBigUInt64LE(BigInt(Math.max(2 ** 30, fileBytes)), META_MAPSIZE);
    writeDb(buf, META_FREE_DB, this.pageSize, FREE_DB_FLAGS, { depth: 0, branchPages: 0, leafPages: 0, overflowPages: 0, entries: 0 }, P_INVALID);
    writeDb(buf, META_MAIN_DB, 0, 0, main, root);
    buf.writeBigUInt64LE(BigInt(lastPage), META_LAST_PG);
    buf.writeBigUInt64LE(txnid, META_TXNID);
    return buf;
  }
}

function writeDb(buf: Buffer, at: number, pad: number, flags: number, s: Omit<LmdbStat, 'pageSize'>, root: bigint): void {
  buf.writeUInt32LE(pad, at);
  buf.writeUInt16LE(flags, at + 4);
  buf.writeUInt16LE(s.depth, at + 6);
  buf.writeBigUInt64LE(BigInt(s.branchPages), at + 8);
  buf.writeBigUInt64LE(BigInt(s.leafPages), at + 16);
  buf.writeBigUInt64LE(BigInt(s.overflowPages), at + 24);
  buf.writeBigUInt64LE(BigInt(s.entries), at + 32);
  buf.writeBigUInt64LE(root, at + 40);
}

/** Write all `entries` into a new environment directory `envDir` (created if needed). */
export function writeLmdb(envDir: string, entries: Iterable<[LmdbKey, Uint8Array]>, opts: { pageSize?: number } = {}): LmdbStat {
  fs.mkdirSync(envDir, { recursive: true });
  const w = new LmdbWriter(envDir, opts);
  try {
    for (const [k, v] of entries) w.put(k, v);
    return w.finish();
  } catch (e) {
    w.abort();
    throw e;
  }
}
