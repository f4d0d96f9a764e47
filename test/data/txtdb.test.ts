import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TxtDb, writeTxtDb } from '../../src/data/txtdb.js';
import type { TextRecord } from '../../src/data/types.js';
import { LmdbReader, LmdbWriter } from '../../src/data/lmdb.js';
import { lz4FrameCompress, lz4FrameDecompress } from '../../src/data/lz4frame.js';
import { packMsgpack, unpackMsgpack } from '../../src/data/msgpack.js';

const OFFICIAL = fileURLToPath(new URL('../../../test/fixtures/data/official/txt_db/', import.meta.url));
const expectedRecords = JSON.parse(fs.readFileSync(path.join(OFFICIAL, 'expected_records.json'), 'utf8')) as Record<string, Record<string, unknown>>;

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-txtdb-'));
}

const RECORDS: TextRecord[] = [
  { id: 'q1', input_ids: [1188, 1110, 170, 5650, 119], img_fname: 'coco_1.npz', question: 'Is it?', target: { labels: [3, 9], scores: [1, 0.3] } },
  { id: 'q2', input_ids: [], img_fname: 'coco_2.npz', answer: null, flag: true },
  { id: 'nlvr2-1-0', input_ids: [106, 28995], img_fname: ['nlvr2_a-img0.npz', 'nlvr2_a-img1.npz'], target: 1, sentence: 'Gauche – 東京 ✓' },
  { id: 'é/ü', input_ids: [2000], img_fname: 'coco_1.npz', big: 2 ** 40, neg: -7, raw: new Uint8Array([0, 255]) },
];

test("reads a txt_db written the official way (py-lmdb + msgpack + lz4.frame), meta without 'bert'", () => {
  const db = TxtDb.open(path.join(OFFICIAL, 'tiny.db'));
  try {
    assert.equal(db.meta.bert, undefined);
    assert.equal(db.meta.CLS, 101);
    const ids = db.ids();
    assert.deepEqual(ids, Object.keys(JSON.parse(fs.readFileSync(path.join(OFFICIAL, 'tiny.db/id2len.json'), 'utf8'))));
    assert.equal(ids.length, 400);
    for (const id of ids) {
      const rec = db.get(id);
      assert.deepEqual(rec, { ...expectedRecords[id], id }, id);
      assert.equal(db.len(id), rec.input_ids.length);
      assert.deepEqual(db.txt2img(id), expectedRecords[id].img_fname);
    }
    const pairs = ids.filter((id) => Array.isArray(expectedRecords[id].img_fname));
    assert.ok(pairs.length > 0);
    for (const f of ['coco_tiny_a.npz', 'coco_tiny_b.npz', 'coco_tiny_c.npz']) {
      const want = ids.filter((id) => {
        const img = expectedRecords[id].img_fname;
        return Array.isArray(img) ? img.includes(f) : img === f;
      });
      assert.deepEqual(db.img2txts(f), want, f);
    }
    assert.deepEqual(db.img2txts('none.npz'), []);
  } finally {
    db.close();
  }
});

test('maxTxtLen drops long examples like the official TxtTokLmdb', () => {
  const db = TxtDb.open(path.join(OFFICIAL, 'tiny.db'), { maxTxtLen: 10 });
  try {
    const want = Object.keys(expectedRecords).filter((id) => (expectedRecords[id].input_ids as number[]).length <= 10);
    assert.deepEqual(new Set(db.ids()), new Set(want));
    assert.ok(db.ids().length < 400);
  } finally {
    db.close();
  }
});

test('write/read round trip with side files and meta', () => {
  const dir = path.join(tmpDir(), 'tiny.db');
  try {
    assert.deepEqual(writeTxtDb(dir, RECORDS, { task: 'vqa' }), { count: 4 });
    const db = TxtDb.open(dir);
    assert.deepEqual(db.ids(), RECORDS.map((r) => r.id));
    for (const r of RECORDS) {
      assert.deepEqual(db.get(r.id), r);
      assert.equal(db.len(r.id), r.input_ids.length);
      assert.deepEqual(db.txt2img(r.id), r.img_fname);
    }
    assert.deepEqual(db.img2txts('coco_1.npz'), ['q1', 'é/ü']);
    assert.deepEqual(db.img2txts('nlvr2_a-img1.npz'), ['nlvr2-1-0']);
    assert.deepEqual(db.meta, { toker: 'bert-base-cased', tokenizer: 'bert-base-cased', bert: 'bert-base-cased', UNK: 100, CLS: 101, SEP: 102, MASK: 103, v_range: [106, 28996], task: 'vqa' });
    db.close();
  } finally {
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  }
});

test('byte-level layout: lz4 frame with content size, holding a msgpack map with string keys', () => {
  const dir = path.join(tmpDir(), 'x.db');
  try {
    writeTxtDb(dir, RECORDS);
    const env = LmdbReader.open(dir);
    const raw = env.get('q1') as Uint8Array;
    env.close();
    assert.deepEqual([...raw.subarray(0, 4)], [0x04, 0x22, 0x4d, 0x18]);
    assert.equal(raw[4] & 0x08, 0x08, 'content size flag');
    const inner = lz4FrameDecompress(raw);
    assert.equal(Buffer.from(raw).readBigUInt64LE(6), BigInt(inner.length));
    assert.equal(inner[0], 0x80 | 5, 'fixmap of the 5 record fields');
    assert.equal(Buffer.from(inner.subarray(1, 4)).toString('hex'), 'a2' + Buffer.from('id').toString('hex'), 'keys are msgpack str');
    assert.deepEqual(unpackMsgpack(inner), RECORDS[0]);
    assert.deepEqual(Object.keys(JSON.parse(fs.readFileSync(path.join(dir, 'id2len.json'), 'utf8'))), RECORDS.map((r) => r.id));
  } finally {
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  }
});

test('an interrupted writer leaves no store, and an existing store survives it', () => {
  const dir = path.join(tmpDir(), 'y.db');
  try {
    function* failing(): Generator<TextRecord> {
      yield RECORDS[0];
      throw new Error('power cut');
    }
    assert.throws(() => writeTxtDb(dir, failing()), /power cut/);
    assert.equal(fs.existsSync(dir), false);
    assert.deepEqual(fs.readdirSync(path.dirname(dir)), []);
    writeTxtDb(dir, RECORDS.slice(0, 2));
    assert.throws(() => writeTxtDb(dir, failing()), /power cut/);
    const db = TxtDb.open(dir);
    assert.deepEqual(db.ids(), ['q1', 'q2']);
    db.close();
  } finally {
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  }
});

test('bad records are rejected with an error naming the record', () => {
  const dir = path.join(tmpDir(), 'z.db');
  try {
    const bad: Array<[Record<string, unknown>, RegExp]> = [
      [{ id: 'a', img_fname: 'x.npz' }, /example "a": 'input_ids' must be a list/],
      [{ id: 'b', input_ids: [1, 2.5], img_fname: 'x.npz' }, /example "b": input_ids\[1\] = 2\.5 is not a token id/],
      [{ id: 'c', input_ids: [28996], img_fname: 'x.npz' }, /example "c": input_ids\[0\] = 28996 is not a token id in \[0, 28996\)/],
      [{ id: 'd', input_ids: [1], img_fname: '' }, /example "d": 'img_fname' must be a file name/],
      [{ id: '', input_ids: [1], img_fname: 'x.npz' }, /non-empty string id/],
      [{ id: 'e', input_ids: [1], img_fname: 'x.npz', when: new Date(0) }, /example "e": record\.when: cannot encode Date/],
    ];
    for (const [rec, msg] of bad) {
      assert.throws(() => writeTxtDb(dir, [RECORDS[0], rec as TextRecord]), msg);
      assert.equal(fs.existsSync(dir), false);
    }
    assert.throws(() => writeTxtDb(dir, [RECORDS[0], RECORDS[0]]), /example "q1": duplicate id/);
  } finally {
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  }
});

test('reader errors name the store and the example', () => {
  const root = tmpDir();
  try {
    const dir = path.join(root, 'bad.db');
    fs.mkdirSync(dir);
    const w = new LmdbWriter(dir);
    w.put('ok', lz4FrameCompress(packMsgpack({ input_ids: [5], img_fname: 'a.npz' })));
    w.put('notlz4', packMsgpack({ input_ids: [5], img_fname: 'a.npz' }));
    w.put('list', lz4FrameCompress(packMsgpack([1, 2])));
    w.put('noids', lz4FrameCompress(packMsgpack({ img_fname: 'a.npz' })));
    w.finish();
    fs.writeFileSync(path.join(dir, 'id2len.json'), JSON.stringify({ ok: 1, notlz4: 1, list: 1, noids: 1 }));
    assert.throws(() => TxtDb.open(dir), (e: Error) => e.message.includes(path.join(dir, 'meta.json')) && /cannot read meta\.json/.test(e.message));
    fs.writeFileSync(path.join(dir, 'meta.json'), JSON.stringify({ SEP: 102, MASK: 103, v_range: [106, 28996] }));
    assert.throws(() => TxtDb.open(dir), /'CLS' must be a token id/);
    fs.writeFileSync(path.join(dir, 'meta.json'), JSON.stringify({ CLS: 101, SEP: 102, MASK: 103, v_range: [106, 28996] }));
    const db = TxtDb.open(dir);
    assert.deepEqual(db.get('ok'), { id: 'ok', input_ids: [5], img_fname: 'a.npz' });
    const named = (id: string, what: RegExp) => (e: Error) => e.message.includes(dir) && e.message.includes(`"${id}"`) && what.test(e.message);
    assert.throws(() => db.get('notlz4'), named('notlz4', /corrupt: not a valid LZ4 frame: magic/));
    assert.throws(() => db.get('list'), named('list', /not a msgpack map/));
    assert.throws(() => db.get('noids'), named('noids', /'input_ids' must be a list/));
    assert.throws(() => db.get('absent'), named('absent', /no example/));
    assert.throws(() => db.len('absent'), named('absent', /no example/));
    assert.throws(() => db.txt2img('ok'), /txt2img\.json: cannot read txt2img/);
    db.close();
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('side files keep record order even for integer-like ids (as Python writes and reads them)', () => {
  const dir = path.join(tmpDir(), 'vqa.db');
  try {
    const ids = ['262148000', '2', '10', 'b', '1'];
    writeTxtDb(dir, ids.map((id, i) => ({ id, input_ids: new Array(i).fill(1000), img_fname: `img${i % 2}.npz` })));
    assert.equal(fs.readFileSync(path.join(dir, 'id2len.json'), 'utf8'), '{"262148000": 0, "2": 1, "10": 2, "b": 3, "1": 4}');
    const db = TxtDb.open(dir);
    assert.deepEqual(db.ids(), ids);
    assert.deepEqual(db.img2txts('img0.npz'), ['262148000', '10', '1']);
    db.close();
    // A hand-written file with nested values, escapes and odd spacing reads in file order too.
    fs.writeFileSync(path.join(dir, 'txt2img.json'), ' {\n "9": ["a\\"].npz", "b}.npz"] ,"3":"c.npz", "x\\u00e9": {"k": [1, {"z": "]"}]}}\n');
    const db2 = TxtDb.open(dir);
    assert.deepEqual(db2.txt2img('9'), ['a"].npz', 'b}.npz']);
    assert.equal(db2.txt2img('3'), 'c.npz');
    assert.deepEqual(db2.txt2img('xé'), { k: [1, { z: ']' }] });
    db2.close();
    fs.writeFileSync(path.join(dir, 'id2len.json'), '{"a": 1,, "b": 2}');
    assert.throws(() => TxtDb.open(dir), (e: Error) => e.message.includes(path.join(dir, 'id2len.json')) && /invalid JSON at character 8: expected a string key/.test(e.message));
  } finally {
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  }
});
