import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LmdbReader, LmdbWriter, writeLmdb } from '../../src/data/lmdb.js';
import { compressBlock, decompressBlock, lz4FrameCompress, lz4FrameDecompress, xxh32 } from '../../src/data/lz4frame.js';
import { packMsgpack, unpackMsgpack } from '../../src/data/msgpack.js';
import { Rng } from '../../src/util/rng.js';

const OFFICIAL = fileURLToPath(new URL('../../../test/fixtures/data/official/', import.meta.url));

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-lmdb-'));
}

test('reads an LMDB file written by py-lmdb in several transactions (branch pages, free list)', () => {
  const env = LmdbReader.open(path.join(OFFICIAL, 'txt_db/tiny.db'));
  try {
    assert.equal(env.stat.entries, 400);
    assert.ok(env.stat.depth >= 2, 'multi-level tree');
    const keys = [...env.keys()].map((k) => Buffer.from(k).toString('utf8'));
    assert.equal(keys.length, 400);
    const sorted = [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    assert.deepEqual(keys, sorted, 'keys come in byte order');
    for (const k of keys) assert.ok(env.get(k), k);
    assert.equal(env.get('no such key'), undefined);
    assert.equal(env.has('ex0001'), true);
  } finally {
    env.close();
  }
});

test('reads overflow values written by py-lmdb', () => {
  const env = LmdbReader.open(path.join(OFFICIAL, 'img_db/coco_tiny/feat_th0.2_max100_min10'));
  try {
    assert.ok(env.stat.overflowPages > 0);
    const v = env.get('coco_tiny_c.npz') as Uint8Array;
    assert.ok(v.length > 4096, 'value spans several pages');
    assert.deepEqual(JSON.parse(Buffer.from(env.get('__keys__') as Uint8Array).toString()).sort(), ['coco_tiny_a.npz', 'coco_tiny_b.npz', 'coco_tiny_c.npz']);
  } finally {
    env.close();
  }
});

test('writer round trip: many keys in any order, inline and overflow values, deep tree', () => {
  const dir = tmpDir();
  try {
    const rng = new Rng(11, 'lmdb');
    const entries = new Map<string, Uint8Array>();
    for (let i = 0; i < 3000; i++) {
      const key = `${rng.int(0, 1e6)}-${'k'.repeat(rng.int(0, 300))}-${i}`;
      const size = rng.uniform() < 0.05 ? rng.int(2000, 20000) : rng.int(0, 300);
      const v = new Uint8Array(size);
      for (let j = 0; j < size; j++) v[j] = rng.int(0, 256);
      entries.set(key, v);
    }
    const stat = writeLmdb(dir, entries);
    assert.equal(stat.entries, 3000);
    assert.ok(stat.depth >= 3 && stat.overflowPages > 0 && stat.branchPages > 1);
    const env = LmdbReader.open(dir);
    assert.deepEqual(env.stat, stat);
    for (const [k, v] of entries) assert.deepEqual(env.get(k), v, k);
    const back = [...env.entries()];
    assert.equal(back.length, 3000);
    const keys = back.map(([k]) => Buffer.from(k));
    for (let i = 1; i < keys.length; i++) assert.ok(Buffer.compare(keys[i - 1], keys[i]) < 0);
    env.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('writer file layout: meta pages say LMDB 0.9 (magic, version 1, page size) and an empty store works', () => {
  const dir = tmpDir();
  try {
    writeLmdb(dir, []);
    const data = fs.readFileSync(path.join(dir, 'data.mdb'));
    assert.equal(data.length, 2 * 4096);
    for (const page of [0, 1]) {
      const m = data.subarray(page * 4096);
      assert.equal(m.readUInt16LE(10), 0x08, 'P_META');
      assert.equal(m.readUInt32LE(16), 0xbeefc0de);
      assert.equal(m.readUInt32LE(20), 1, 'data format version 1');
      assert.equal(m.readUInt32LE(40), 4096, 'page size in the free db pad');
      assert.equal(m.readBigUInt64LE(128), 0xffffffffffffffffn, 'empty main db root');
    }
    const env = LmdbReader.open(dir);
    assert.equal(env.stat.entries, 0);
    assert.deepEqual([...env.keys()], []);
    assert.equal(env.get('x'), undefined);
    env.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('writer rejects duplicate, empty and oversized keys; abort removes the data file', () => {
  const dir = tmpDir();
  try {
    const w = new LmdbWriter(dir);
    w.put('a', new Uint8Array([1]));
    assert.throws(() => w.put('a', new Uint8Array([2])), /duplicate key "a"/);
    assert.throws(() => w.put('', new Uint8Array(0)), /keys must be 1\.\.511 bytes/);
    assert.throws(() => w.put('k'.repeat(512), new Uint8Array(0)), /is 512 bytes/);
    w.abort();
    assert.equal(fs.existsSync(path.join(dir, 'data.mdb')), false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('reader errors name the file: not LMDB, truncated, LMDB format version 2', () => {
  const dir = tmpDir();
  try {
    const junk = path.join(dir, 'junk.mdb');
    fs.writeFileSync(junk, Buffer.alloc(9000, 7));
    assert.throws(() => LmdbReader.open(junk), (e: Error) => e.message.startsWith(junk) && /not an LMDB file/.test(e.message));
    writeLmdb(path.join(dir, 'env'), [['k', new Uint8Array(5000)]]);
    const file = path.join(dir, 'env', 'data.mdb');
    const bytes = fs.readFileSync(file);
    fs.writeFileSync(file, bytes.subarray(0, bytes.length - 4096));
    assert.throws(() => LmdbReader.open(path.join(dir, 'env')), /truncated LMDB file/);
    const v2 = Buffer.from(bytes);
    v2.writeUInt32LE(2, 20);
    v2.writeUInt32LE(2, 4096 + 20);
    fs.writeFileSync(file, v2);
    assert.throws(() => LmdbReader.open(path.join(dir, 'env')), /data format version 2 is not supported/);
    assert.throws(() => LmdbReader.open(path.join(dir, 'nothing')), /no LMDB environment here/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- LZ4 frames ----

/** The bytes python-lz4 compressed into the fixture frames (see make_official_fixtures.py). */
function pattern(n: number): Uint8Array {
  const a = new Uint8Array(n);
  for (let i = 0; i < n; i++) a[i] = ((i % 251) ^ (i >> 12)) & 255;
  return a;
}

test('decodes python-lz4 frames: default, linked blocks with checksums, no stored size, HC', () => {
  const expected = pattern(200000);
  for (const name of ['default', 'linked_checksums', 'no_size_4mb', 'hc']) {
    const frame = fs.readFileSync(path.join(OFFICIAL, `lz4/pattern_${name}.lz4`));
    assert.deepEqual(lz4FrameDecompress(frame), expected, name);
  }
});

test('frame layout: magic, content-size flag, size and header checksum', () => {
  const data = new TextEncoder().encode('hello hello hello hello hello hello hello!');
  const f = lz4FrameCompress(data);
  assert.deepEqual([...f.subarray(0, 4)], [0x04, 0x22, 0x4d, 0x18]);
  assert.equal(f[4] & 0x08, 0x08, 'content size present');
  assert.equal(f[4] & 0xc0, 0x40, 'version 01');
  assert.equal(Buffer.from(f).readBigUInt64LE(6), BigInt(data.length));
  assert.equal(f[14], (xxh32(f, 0, 4, 14) >>> 8) & 0xff);
  assert.ok(f.length < data.length + 19, 'repetitive text is compressed');
  assert.deepEqual(lz4FrameDecompress(f), data);
});

test('xxh32 known values', () => {
  assert.equal(xxh32(new Uint8Array(0)), 0x02cc5d05);
  assert.equal(xxh32(new TextEncoder().encode('abc')), 0x32d153ff);
  assert.equal(xxh32(new TextEncoder().encode('Nobody inspects the spammish repetition')), 0xe2293b2f);
});

test('compress/decompress round trip over sizes and contents', () => {
  const rng = new Rng(5, 'lz4');
  for (const n of [0, 1, 12, 13, 100, 65535, 65536, 65537, 150001]) {
    for (const kind of ['random', 'runs', 'pattern']) {
      const a = kind === 'pattern' ? pattern(n) : new Uint8Array(n);
      if (kind === 'random') for (let i = 0; i < n; i++) a[i] = rng.int(0, 256);
      if (kind === 'runs') for (let i = 0; i < n; i++) a[i] = Math.floor(i / 37) % 3;
      assert.deepEqual(lz4FrameDecompress(lz4FrameCompress(a)), a, `${kind} ${n}`);
    }
  }
});

test('blocks keep the end-of-block rules (last 5 bytes literal, no match in the last 12)', () => {
  const a = new Uint8Array(4096).fill(9);
  const c = compressBlock(a) as Uint8Array;
  assert.ok(c && c.length < 100);
  // Decode into a buffer of exactly the original size: the strict decoder bound.
  const out = new Uint8Array(a.length);
  assert.equal(decompressBlock(c, 0, c.length, out, 0), a.length);
  assert.deepEqual(out, a);
  // The final sequence is literals only and carries at least the last 5 bytes.
  let ip = 0;
  let lastLiterals = 0;
  while (ip < c.length) {
    const token = c[ip++];
    let lit = token >> 4;
    if (lit === 15) for (let b = 255; b === 255; lit += b) b = c[ip++];
    ip += lit;
    lastLiterals = lit;
    if (ip >= c.length) break;
    ip += 2;
    if ((token & 15) === 15) for (let b = 255; b === 255; ) b = c[ip++];
  }
  assert.ok(lastLiterals >= 5);
});

test('corrupt frames give errors', () => {
  const good = lz4FrameCompress(pattern(5000));
  assert.throws(() => lz4FrameDecompress(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])), /magic/);
  const badHc = Uint8Array.from(good);
  badHc[14] ^= 0xff;
  assert.throws(() => lz4FrameDecompress(badHc), /header checksum/);
  assert.throws(() => lz4FrameDecompress(good.subarray(0, good.length - 10)), /truncated/);
  const badOffset = Uint8Array.from(good);
  badOffset.fill(0xff, 20, 40);
  assert.throws(() => lz4FrameDecompress(badOffset));
});

// ---- msgpack ----

test('msgpack encodes like Python msgpack (use_bin_type=True)', () => {
  const hex = (v: unknown): string => Buffer.from(packMsgpack(v)).toString('hex');
  // Bytes from Python: msgpack.dumps(v, use_bin_type=True).hex()
  assert.equal(hex({ input_ids: [1, 2, 3], img_fname: 'a.npz', x: 1.5 }), '83a9696e7075745f69647393010203a9696d675f666e616d65a5612e6e707aa178cb3ff8000000000000');
  assert.equal(hex([127, 128, 255, 256, 65536, 2 ** 32, -1, -32, -33, -129, -32769, -(2 ** 31) - 1]), '9c7fcc80ccffcd0100ce00010000cf0000000100000000ffe0d0dfd1ff7fd2ffff7fffd3ffffffff7fffffff');
  assert.equal(hex([null, true, false, new Uint8Array([1, 2]), 'é']), '95c0c3c2c4020102a2c3a9');
  assert.equal(hex('x'.repeat(32)).slice(0, 4), 'd920');
  assert.equal(hex(new Map([[new Uint8Array([0x6e, 0x64]), true]])), '81c4026e64c3');
});

test('msgpack decodes what it encodes; bytes keys read as text', () => {
  const v = { a: [1, -2, 3.25, 'text', null, true, { nested: new Uint8Array([9]) }], big: 2n ** 60n, neg: -(2 ** 40), s: 'x'.repeat(70000), arr: Array.from({ length: 70000 }, (_, i) => i % 7) };
  assert.deepEqual(unpackMsgpack(packMsgpack(v)), { ...v, big: 2n ** 60n });
  assert.deepEqual(unpackMsgpack(Buffer.from('81c4026e64c3', 'hex')), { nd: true });
  assert.deepEqual(unpackMsgpack(Buffer.from('81a95f5f70726f746f5f5f01', 'hex')), JSON.parse('{"__proto__": 1}'));
  assert.throws(() => unpackMsgpack(Buffer.from('93 01 02'.replace(/ /g, ''), 'hex')), /truncated msgpack data/);
  assert.throws(() => unpackMsgpack(Buffer.from('0102', 'hex')), /1 trailing bytes/);
  assert.throws(() => unpackMsgpack(Buffer.from('d40000', 'hex')), /extension types are not supported/);
  assert.throws(() => packMsgpack({ a: { b: undefined } }, 'rec'), /rec\.a\.b: cannot encode undefined/);
});
