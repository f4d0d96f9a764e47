import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { computeNbb, ImgDb, imgDbNames, roundToHalf, writeImgDb, type ImageFeatures } from '../../src/data/imgdb.js';
import { LmdbReader, LmdbWriter } from '../../src/data/lmdb.js';
import { packMsgpack, unpackMsgpack } from '../../src/data/msgpack.js';
import { numpyToMsgpack } from '../../src/data/msgpack-numpy.js';
import { float32ToHalfArray, readBUTDNpz, readNpz } from '../../src/data/npz.js';
import { floatToHalf, halfToFloat } from '../../src/engine/host.js';
import { Rng } from '../../src/util/rng.js';

const OFFICIAL = fileURLToPath(new URL('../../../test/fixtures/data/official/', import.meta.url));
const OFFICIAL_DB = path.join(OFFICIAL, 'img_db/coco_tiny');
const NPZ_DIR = path.join(OFFICIAL, 'npz/coco_tiny');
const expected = JSON.parse(fs.readFileSync(path.join(OFFICIAL, 'expected_img.json'), 'utf8')) as Record<
  string,
  { num_boxes: number; nbb: number; features_sum: number; features_row0: number[]; norm_bb_row0: number[]; conf: number[]; soft_labels_row0: number[] }
>;
const FNAMES = Object.keys(expected).sort();

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-imgdb-'));
}

function sourceImages(): ImageFeatures[] {
  return FNAMES.map((fname) => {
    const f = readBUTDNpz(path.join(NPZ_DIR, fname));
    return { fname, features: f.features, normBb: f.normBb, conf: f.conf, softLabels: f.softLabels, numBoxes: f.numBoxes };
  });
}

function randomImages(n: number, imgDim: number, labelDim: number, seed: number): ImageFeatures[] {
  const rng = new Rng(seed, 'images');
  return Array.from({ length: n }, (_, i) => {
    const boxes = rng.int(5, 130);
    const fill = (len: number, f: () => number): Float32Array => Float32Array.from({ length: len }, f);
    return {
      fname: `img_${i}.npz`,
      numBoxes: boxes,
      features: fill(boxes * imgDim, () => rng.normal() * 3),
      normBb: fill(boxes * 6, () => rng.uniform()),
      conf: fill(boxes, () => rng.uniform() * 0.5),
      softLabels: fill(boxes * labelDim, () => rng.uniform() * 1e-4),
    };
  });
}

test('store names follow the official converter', () => {
  assert.deepEqual(imgDbNames(), { env: 'feat_th0.2_max100_min10', nbbJson: 'nbb_th0.2_max100_min10.json' });
  assert.deepEqual(imgDbNames({ compressed: true }), { env: 'feat_th0.2_max100_min10_compressed', nbbJson: 'nbb_th0.2_max100_min10.json' });
  assert.deepEqual(imgDbNames({ confTh: -1, numBb: 36 }), { env: 'feat_numbb36', nbbJson: null });
  assert.equal(imgDbNames({ confTh: 0, maxBb: 50, minBb: 5 }).env, 'feat_th0.0_max50_min5');
  assert.equal(imgDbNames({ confTh: 0.00001 }).env, 'feat_th1e-05_max100_min10');
});

test('nbb threshold compares float16 values: exactly float16(0.2) does not count, the next float16 does', () => {
  const th = halfToFloat(floatToHalf(0.2));
  const above = halfToFloat(floatToHalf(0.2) + 1);
  assert.ok(above > th);
  assert.equal(computeNbb([th, th, th], 0.2, 0, 100), 0);
  assert.equal(computeNbb([above, above, th], 0.2, 0, 100), 2);
  assert.equal(computeNbb([0.2], 0.2, 0, 100), 0, 'a float32 0.2 rounds to float16(0.2)');
  assert.equal(computeNbb([0.20001], 0.2, 0, 100), 0, 'rounds down to float16(0.2)');
  assert.equal(computeNbb([0.20002], 0.2, 0, 100), 1, 'rounds up past float16(0.2)');
  assert.equal(computeNbb(new Array(5).fill(0.9), 0.2, 10, 100), 10, 'clamped up to min');
  assert.equal(computeNbb(new Array(150).fill(0.9), 0.2, 10, 100), 100, 'clamped down to max');
  assert.equal(computeNbb([0.01, 0.02], -1, 1, 100), 2, 'conf_th -1 keeps every box');
  // The official converter's output for the fixture image with both edge values: 11 counted, not 12.
  assert.equal(JSON.parse(fs.readFileSync(path.join(OFFICIAL_DB, 'nbb_th0.2_max100_min10.json'), 'utf8'))['coco_tiny_a.npz'], 11);
  assert.equal(computeNbb(readBUTDNpz(path.join(NPZ_DIR, 'coco_tiny_a.npz')).conf, 0.2, 10, 100), 11);
});

for (const compressed of [false, true]) {
  test(`reads the official converter's ${compressed ? 'npz' : 'msgpack'} store`, () => {
    const db = ImgDb.open(OFFICIAL_DB, { compressed });
    try {
      assert.equal(path.basename(db.envDir), compressed ? 'feat_th0.2_max100_min10_compressed' : 'feat_th0.2_max100_min10');
      assert.equal(db.imgDim, 64);
      assert.equal(db.labelDim, 17);
      assert.deepEqual(db.keys().sort(), FNAMES);
      for (const fname of FNAMES) {
        const exp = expected[fname];
        assert.equal(db.nbb(fname), exp.nbb);
        const rec = db.get(fname);
        assert.equal(rec.nbb, exp.nbb);
        assert.equal(rec.features.length, exp.nbb * 64);
        assert.equal(rec.normBb.length, exp.nbb * 6);
        assert.deepEqual([...rec.features.subarray(0, 64)], exp.features_row0);
        assert.deepEqual([...rec.normBb.subarray(0, 6)], exp.norm_bb_row0);
        assert.equal(rec.features.reduce((s, v) => s + v, 0), exp.features_sum);
        const dump = db.getDump(fname);
        assert.deepEqual([...dump.conf], exp.conf);
        assert.deepEqual([...dump.softLabels.subarray(0, 17)], exp.soft_labels_row0);
        assert.equal(dump.softLabels.length, exp.nbb * 17);
      }
      assert.equal(db.has('coco_tiny_a.npz'), true);
      assert.equal(db.has('zzz.npz'), false);
    } finally {
      db.close();
    }
  });
}

test('reads the official fixed-count store (feat_numbb36): nbb bookkeeping says 36, rows are cut to 36', () => {
  const db = ImgDb.open(OFFICIAL_DB, { confTh: -1, numBb: 36 });
  try {
    assert.equal(db.fixedNbb, 36);
    for (const fname of FNAMES) {
      assert.equal(db.nbb(fname), 36);
      assert.equal(db.get(fname).nbb, Math.min(36, expected[fname].num_boxes));
    }
  } finally {
    db.close();
  }
});

test('our msgpack values are byte-identical to the official converter output', () => {
  const dir = tmpDir();
  try {
    const { dbDir } = writeImgDb(dir, sourceImages());
    const ours = LmdbReader.open(dbDir);
    const theirs = LmdbReader.open(path.join(OFFICIAL_DB, 'feat_th0.2_max100_min10'));
    for (const fname of FNAMES) assert.deepEqual(ours.get(fname), theirs.get(fname), fname);
    ours.close();
    theirs.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('byte-level layout: bytes keys in msgpack-numpy maps, <f2 type strings, __keys__ JSON, nbb file', () => {
  const dir = tmpDir();
  try {
    const images = randomImages(3, 8, 5, 1);
    const { count, dbDir } = writeImgDb(dir, images);
    assert.equal(count, 3);
    const env = LmdbReader.open(dbDir);
    const raw = Buffer.from(env.get('img_0.npz') as Uint8Array);
    // fixmap of 4, key "features" as str, then the array map: 5 entries with bin keys.
    assert.equal(raw[0], 0x84);
    assert.equal(raw.subarray(1, 10).toString('hex'), 'a8' + Buffer.from('features').toString('hex'));
    const arrayMapHead = '85' + 'c4026e64' + 'c3' + 'c404' + Buffer.from('type').toString('hex') + 'a3' + Buffer.from('<f2').toString('hex') + 'c404' + Buffer.from('kind').toString('hex') + 'c400' + 'c405' + Buffer.from('shape').toString('hex');
    assert.equal(raw.subarray(10, 10 + arrayMapHead.length / 2).toString('hex'), arrayMapHead);
    const decoded = unpackMsgpack(raw) as Record<string, Record<string, unknown>>;
    assert.deepEqual(Object.keys(decoded), ['features', 'norm_bb', 'conf', 'soft_labels']);
    const nbb = computeNbb(images[0].conf, 0.2, 10, 100);
    assert.deepEqual(decoded.conf.shape, [Math.min(nbb, images[0].numBoxes), 1]);
    assert.deepEqual(JSON.parse(Buffer.from(env.get('__keys__') as Uint8Array).toString('utf8')), ['img_0.npz', 'img_1.npz', 'img_2.npz']);
    env.close();
    const nbbFile = JSON.parse(fs.readFileSync(path.join(dir, 'nbb_th0.2_max100_min10.json'), 'utf8'));
    assert.deepEqual(nbbFile, Object.fromEntries(images.map((im) => [im.fname, Math.min(im.numBoxes, computeNbb(im.conf, 0.2, 10, 100))])));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

for (const variant of [{ compress: false }, { compress: true }, { confTh: -1, numBb: 50 }, { confTh: 0.1, maxBb: 40, minBb: 3 }]) {
  test(`write/read round trip ${JSON.stringify(variant)} (float16 rounding)`, () => {
    const dir = tmpDir();
    try {
      const images = randomImages(6, 16, 9, 2);
      writeImgDb(dir, images, variant);
      const db = ImgDb.open(dir, { ...variant, compressed: variant.compress });
      try {
        assert.equal(db.imgDim, 16);
        assert.equal(db.labelDim, 9);
        assert.deepEqual(db.keys(), images.map((im) => im.fname));
        for (const im of images) {
          const confTh = variant.confTh ?? 0.2;
          const stored = Math.min(im.numBoxes, computeNbb(im.conf, confTh, variant.minBb ?? 10, variant.maxBb ?? 100));
          const nbb = variant.confTh === -1 ? Math.min(stored, 50) : stored;
          const d = db.getDump(im.fname);
          assert.equal(d.nbb, nbb);
          assert.deepEqual(d.features, roundToHalf(im.features.subarray(0, nbb * 16)));
          assert.deepEqual(d.normBb, roundToHalf(im.normBb.subarray(0, nbb * 6)));
          assert.deepEqual(d.conf, roundToHalf(im.conf.subarray(0, nbb)));
          assert.deepEqual(d.softLabels, roundToHalf((im.softLabels as Float32Array).subarray(0, nbb * 9)));
          assert.deepEqual(db.get(im.fname).features, d.features);
        }
      } finally {
        db.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('compressed values are npz archives numpy can read (float16 members)', () => {
  const dir = tmpDir();
  try {
    const { dbDir } = writeImgDb(dir, randomImages(1, 4, 3, 3), { compress: true });
    const env = LmdbReader.open(dbDir);
    const arrays = readNpz(env.get('img_0.npz') as Uint8Array);
    env.close();
    assert.deepEqual([...arrays.keys()], ['features', 'norm_bb', 'conf', 'soft_labels']);
    for (const a of arrays.values()) assert.equal(a.dtype, '<f2');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an interrupted writer leaves no store, and an existing store survives it', () => {
  const dir = tmpDir();
  try {
    const images = randomImages(4, 8, 2, 4);
    function* failing(): Generator<ImageFeatures> {
      yield images[0];
      yield images[1];
      throw new Error('disk on fire');
    }
    assert.throws(() => writeImgDb(dir, failing()), /disk on fire/);
    assert.deepEqual(fs.readdirSync(dir), [], 'nothing left behind');
    assert.throws(() => ImgDb.open(dir), /no LMDB store/);

    writeImgDb(dir, images.slice(0, 3));
    assert.throws(() => writeImgDb(dir, failing()), /disk on fire/);
    const db = ImgDb.open(dir);
    assert.deepEqual(db.keys(), images.slice(0, 3).map((i) => i.fname));
    db.close();
    assert.deepEqual(fs.readdirSync(dir).sort(), ['feat_th0.2_max100_min10', 'nbb_th0.2_max100_min10.json']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a store without its nbb file is reported as incomplete', () => {
  const dir = tmpDir();
  try {
    writeImgDb(dir, randomImages(2, 4, 2, 5));
    fs.rmSync(path.join(dir, 'nbb_th0.2_max100_min10.json'));
    assert.throws(() => ImgDb.open(dir), /has no nbb_th0\.2_max100_min10\.json beside it \(incomplete store/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("without a precomputed store, nbb is counted from an 'all' store", () => {
  const dir = tmpDir();
  try {
    const official = LmdbReader.open(path.join(OFFICIAL_DB, 'feat_th0.2_max100_min10'));
    fs.mkdirSync(path.join(dir, 'all'));
    const w = new LmdbWriter(path.join(dir, 'all'));
    for (const [k, v] of official.entries()) w.put(k, v);
    w.finish();
    official.close();
    const db = ImgDb.open(dir);
    assert.equal(path.basename(db.envDir), 'all');
    for (const f of FNAMES) assert.equal(db.nbb(f), expected[f].nbb);
    db.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('reader errors name the store and the image: unknown key, corrupt value, wrong width, NaN', () => {
  const dir = tmpDir();
  try {
    const env = path.join(dir, 'feat_th0.2_max100_min10');
    fs.mkdirSync(env);
    const half = (shape: number[], values: number[]) => numpyToMsgpack({ dtype: '<f2', shape, data: float32ToHalfArray(values) });
    const value = (rows: number, width: number, fill: number) =>
      packMsgpack({ features: half([rows, width], new Array(rows * width).fill(fill)), norm_bb: half([rows, 6], new Array(rows * 6).fill(0.5)), conf: half([rows, 1], new Array(rows).fill(0.9)) });
    const w = new LmdbWriter(env);
    w.put('good.npz', value(2, 4, 1));
    w.put('wide.npz', value(2, 5, 1));
    w.put('nan.npz', value(2, 4, NaN));
    w.put('junk.npz', new Uint8Array([0x93, 0x01]));
    w.put('short.npz', value(1, 4, 1));
    w.put('__keys__', Buffer.from(JSON.stringify(['good.npz', 'wide.npz', 'nan.npz', 'junk.npz', 'short.npz'])));
    w.finish();
    fs.writeFileSync(path.join(dir, 'nbb_th0.2_max100_min10.json'), JSON.stringify({ 'good.npz': 2, 'wide.npz': 2, 'nan.npz': 2, 'junk.npz': 2, 'short.npz': 2 }));
    const db = ImgDb.open(dir);
    assert.equal(db.imgDim, 4);
    assert.equal(db.get('good.npz').nbb, 2);
    const named = (key: string, what: RegExp) => (e: Error) => e.message.includes(env) && e.message.includes(`"${key}"`) && what.test(e.message);
    assert.throws(() => db.get('missing.npz'), named('missing.npz', /no image/));
    assert.throws(() => db.get('wide.npz'), named('wide.npz', /width 5, the store's images have 4/));
    assert.throws(() => db.get('nan.npz'), named('nan.npz', /NaN or infinite/));
    assert.throws(() => db.get('junk.npz'), named('junk.npz', /corrupt/));
    assert.equal(db.nbb('short.npz'), 2, 'bookkeeping as the nbb file says');
    assert.equal(db.get('short.npz').nbb, 1, 'rows actually stored, as slicing [:nbb] gives');
    db.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('writer errors name the image: NaN features, width change, bad shapes', () => {
  const dir = tmpDir();
  try {
    const [a, b] = randomImages(2, 8, 2, 6);
    const nan = { ...a, fname: 'nan.npz', features: Float32Array.from(a.features, (v, i) => (i === 9 ? NaN : v)) };
    assert.throws(() => writeImgDb(dir, [nan]), /image "nan\.npz": feature row 1 holds NaN/);
    const wide = { ...b, fname: 'wide.npz', features: new Float32Array(b.numBoxes * 9) };
    assert.throws(() => writeImgDb(dir, [a, wide]), /image "wide\.npz": features have width 9, earlier images have 8/);
    assert.throws(() => writeImgDb(dir, [{ ...a, fname: 'c.npz', conf: new Float32Array(1) }]), /image "c\.npz": conf has 1 values/);
    assert.throws(() => writeImgDb(dir, [{ ...a, fname: 'bb.npz', normBb: new Float32Array(3) }]), /image "bb\.npz": normBb has 3 values/);
    assert.throws(() => writeImgDb(dir, [a, { ...b, fname: a.fname }]), /duplicate key "img_0\.npz"/);
    assert.deepEqual(fs.readdirSync(dir), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
