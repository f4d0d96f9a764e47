/**
 * The extraction machinery (store, resumption, report, overwrite, --npz files) driven by the
 * GridDetector test helper, which computes real per-cell values from the pixels; and the real
 * tiny detector against the golden UNITER npz files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { CACHE_DIR, detectionToButd, detectorIdentity, extractRegions, ExtractError, imageKey, listImages, REPORT_FILE, type ExtractEvent, type ExtractOptions } from '../../src/detector/extract.js';
import { computeNbb, ImgDb, imgDbNames, roundToHalf } from '../../src/data/imgdb.js';
import { LmdbReader } from '../../src/data/lmdb.js';
import { npyToFloat32, readBUTDNpz, readNpz } from '../../src/data/npz.js';
import { buildUserData } from '../../src/data/userdata.js';
import { TxtDb } from '../../src/data/txtdb.js';
import { decodeImage } from '../../src/vision/decode.js';
import { Detector } from '../../src/detector/detector.js';
import { encodePng } from '../helpers/png.js';
import { GRID_FEATURE_DIM, GRID_LABEL_DIM, GridDetector } from '../helpers/grid-detector.js';

const FIXTURE = fileURLToPath(new URL('../../../test/fixtures/detector/frcnn-tiny/', import.meta.url));

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-extract-'));
}

/** A w x h PNG with a pattern that depends on `seed` (so each image has its own features). */
function png(w: number, h: number, seed: number): Buffer {
  const data: number[] = [];
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) data.push((x * 7 + seed * 40) % 256, (y * 5 + seed * 13) % 256, ((x ^ y) * 3 + seed) % 256);
  return encodePng({ width: w, height: h, channels: 3, data });
}

function writeImages(dir: string, specs: Array<[string, Uint8Array]>): string[] {
  fs.mkdirSync(dir, { recursive: true });
  return specs.map(([name, bytes]) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, bytes);
    return f;
  });
}

function goodImages(dir: string, n = 4): string[] {
  return writeImages(
    dir,
    Array.from({ length: n }, (_, i) => [`img${i}.png`, png(20 + 7 * i, 30 - 3 * i, i)] as [string, Uint8Array]),
  );
}

function opts(images: string[], out: string, extra: Partial<ExtractOptions> = {}): ExtractOptions {
  return { detector: new GridDetector(), detectorId: 'grid-4', images, out, ...extra };
}

test('image keys are the file name without extension + .npz', () => {
  assert.equal(imageKey('/a/b/COCO_val2014_000000000042.jpg'), 'COCO_val2014_000000000042.npz');
  assert.equal(imageKey('x.tar.png'), 'x.tar.npz');
  assert.equal(imageKey('noext'), 'noext.npz');
});

test('extract writes an img_db that ImgDb.open reads, with the nbb rule, float16 values and the official keys', async () => {
  const dir = tmp();
  const images = goodImages(path.join(dir, 'imgs'));
  const out = path.join(dir, 'store');
  const det = new GridDetector();
  const events: ExtractEvent[] = [];
  const report = await extractRegions(opts(images, out, { detector: det, rule: { minBb: 3, maxBb: 12 }, onImage: (e) => events.push(e) }));
  assert.equal(report.complete, true);
  assert.deepEqual(report.counts, { images: 4, done: 4, extracted: 4, resumed: 0, failed: 0, ignored: 0 });
  assert.equal(det.calls.length, 4);
  assert.deepEqual(events.map((e) => [e.index, e.total, e.status]), [[1, 4, 'done'], [2, 4, 'done'], [3, 4, 'done'], [4, 4, 'done']]);
  assert.ok(!fs.existsSync(path.join(out, CACHE_DIR)), 'a complete run removes its cache');
  const names = imgDbNames({ confTh: 0.2, maxBb: 12, minBb: 3 });
  assert.equal(report.imgDb, path.join(out, names.env));
  const saved = JSON.parse(fs.readFileSync(path.join(out, REPORT_FILE), 'utf8'));
  assert.equal(saved.complete, true);
  assert.deepEqual(saved.done.map((d: { key: string }) => d.key), ['img0.npz', 'img1.npz', 'img2.npz', 'img3.npz']);

  // The official layout: __keys__ in input order, float16 msgpack values.
  const env = LmdbReader.open(path.join(out, names.env));
  assert.deepEqual(JSON.parse(Buffer.from(env.get('__keys__')!).toString()), ['img0.npz', 'img1.npz', 'img2.npz', 'img3.npz']);
  env.close();

  const db = ImgDb.open(out, { maxBb: 12, minBb: 3 });
  try {
    assert.equal(db.compressed, false);
    assert.equal(db.imgDim, GRID_FEATURE_DIM);
    assert.equal(db.labelDim, GRID_LABEL_DIM);
    const ref = new GridDetector();
    for (const f of images) {
      const d = await ref.detect(await decodeImage(f));
      const nbb = Math.min(d.numBoxes, computeNbb(d.conf, 0.2, 3, 12));
      const key = imageKey(f);
      assert.equal(db.nbb(key), nbb);
      assert.equal(report.done.find((x) => x.key === key)?.nbb, nbb);
      const got = db.getDump(key);
      assert.deepEqual(got.features, roundToHalf(d.features.slice(0, nbb * GRID_FEATURE_DIM)));
      assert.deepEqual(got.normBb, roundToHalf(d.normBb.slice(0, nbb * 6)));
      assert.deepEqual(got.conf, roundToHalf(d.conf.slice(0, nbb)));
      assert.deepEqual(got.softLabels, roundToHalf(d.softLabels.slice(0, nbb * GRID_LABEL_DIM)));
    }
  } finally {
    db.close();
  }
});

test('--compress writes the npz-valued store; --npz writes BUTD npz files that `uniter data build` accepts', async () => {
  const dir = tmp();
  const images = goodImages(path.join(dir, 'imgs'), 3);
  const out = path.join(dir, 'store');
  const npzDir = path.join(dir, 'npz');
  const report = await extractRegions(opts(images, out, { compress: true, npzDir }));
  assert.equal(report.complete, true);
  const db = ImgDb.open(out, { compressed: true });
  assert.equal(db.compressed, true);
  assert.deepEqual(db.keys(), ['img0.npz', 'img1.npz', 'img2.npz']);
  db.close();

  const ref = new GridDetector();
  for (const f of images) {
    const key = imageKey(f);
    const arrays = readNpz(fs.readFileSync(path.join(npzDir, key)));
    const d = await ref.detect(await decodeImage(f));
    assert.deepEqual([...arrays.keys()], ['norm_bb', 'features', 'conf', 'soft_labels']);
    assert.deepEqual([...arrays.values()].map((a) => [a.dtype, a.shape]), [
      ['<f2', [16, 6]],
      ['<f2', [16, GRID_FEATURE_DIM]],
      ['<f2', [16, 1]],
      ['<f2', [16, GRID_LABEL_DIM]],
    ]);
    const b = readBUTDNpz(path.join(npzDir, key));
    assert.deepEqual(b.features, roundToHalf(d.features));
    assert.deepEqual(b.conf, roundToHalf(d.conf));
  }

  const jsonl = path.join(dir, 'captions.jsonl');
  fs.writeFileSync(jsonl, images.map((f, i) => JSON.stringify({ id: `c${i}`, caption: `a picture number ${i}`, image: imageKey(f) })).join('\n') + '\n');
  const built = buildUserData({ jsonl, imagesDir: npzDir, outDir: path.join(dir, 'data'), name: 'mine' });
  assert.equal(built.images, 3);
  assert.equal(built.texts, 3);
  assert.deepEqual(built.warnings, []);
  const db2 = ImgDb.open(built.imgDb);
  assert.deepEqual(db2.keys(), ['img0.npz', 'img1.npz', 'img2.npz']);
  db2.close();
  const txt = TxtDb.open(built.txtDb);
  txt.close();
});

test('bad images are reported with the file and the reason, the run goes on, the store holds the good ones', async () => {
  const dir = tmp();
  const imgs = path.join(dir, 'imgs');
  const good = goodImages(imgs, 2);
  const gif = await sharp(png(20, 20, 1)).gif().toBuffer();
  const full = png(30, 30, 5);
  const bad = writeImages(imgs, [
    ['tiny.png', encodePng({ width: 1, height: 1, channels: 3, data: [1, 2, 3] })],
    ['broken.png', full.subarray(0, full.length - 30)],
    ['anim.gif', gif],
    ['notes.txt', Buffer.from('not an image')],
  ]);
  const missing = path.join(imgs, 'gone.jpg');
  const out = path.join(dir, 'store');
  const report = await extractRegions(opts([...good, ...bad, missing], out));
  assert.equal(report.complete, false);
  assert.equal(report.counts.done, 2);
  assert.equal(report.counts.failed, 5);
  const why = Object.fromEntries(report.failed.map((f) => [path.basename(f.file), `${f.kind}: ${f.reason}`]));
  assert.match(why['tiny.png'], /^too-small: image is 1 x 1 px/);
  assert.match(why['broken.png'], /^corrupt: corrupt or truncated PNG data/);
  assert.match(why['anim.gif'], /^unsupported: unsupported image format GIF/);
  assert.match(why['notes.txt'], /^unsupported: not a JPEG, PNG or WebP image/);
  assert.match(why['gone.jpg'], /^unreadable: cannot read image \(no such file\)/);
  const saved = JSON.parse(fs.readFileSync(path.join(out, REPORT_FILE), 'utf8'));
  assert.equal(saved.failed.length, 5);
  assert.equal(saved.complete, false);
  const db = ImgDb.open(out);
  assert.deepEqual(db.keys(), ['img0.npz', 'img1.npz']);
  db.close();
  assert.ok(fs.existsSync(path.join(out, CACHE_DIR, 'img0.npz')), 'the cache stays while something failed');

  // Fix one image and run again: only that one is extracted, without --overwrite.
  fs.writeFileSync(bad[1], full);
  const det = new GridDetector();
  const again = await extractRegions(opts([...good, bad[1]], out, { detector: det }));
  assert.equal(det.calls.length, 1);
  assert.equal(again.complete, true);
  assert.deepEqual(again.counts, { images: 3, done: 3, extracted: 1, resumed: 2, failed: 0, ignored: 0 });
  const db2 = ImgDb.open(out);
  assert.deepEqual(db2.keys(), ['img0.npz', 'img1.npz', 'broken.npz']);
  db2.close();
});

test('an interrupted run resumes: nothing extracted twice, leftovers of a killed write ignored', async () => {
  const dir = tmp();
  const images = goodImages(path.join(dir, 'imgs'), 5);
  const out = path.join(dir, 'store');
  const ac = new AbortController();
  const first = new GridDetector();
  const r1 = await extractRegions(
    opts(images, out, {
      detector: first,
      signal: ac.signal,
      onImage: (e) => {
        if (e.index === 2) ac.abort();
      },
    }),
  );
  assert.equal(r1.aborted, true);
  assert.equal(r1.complete, false);
  assert.equal(first.calls.length, 2);
  assert.equal(r1.imgDb, null);
  assert.deepEqual(fs.readdirSync(path.join(out, CACHE_DIR)).sort(), ['identity.json', 'img0.npz', 'img1.npz']);
  // What a process killed inside writeFileAtomic leaves behind.
  fs.writeFileSync(path.join(out, CACHE_DIR, '.img2.npz.999.1.tmp'), 'half');

  const second = new GridDetector();
  const r2 = await extractRegions(opts(images, out, { detector: second }));
  assert.equal(second.calls.length, 3);
  assert.deepEqual(r2.counts, { images: 5, done: 5, extracted: 3, resumed: 2, failed: 0, ignored: 0 });
  assert.equal(r2.complete, true);
  const db = ImgDb.open(out);
  assert.deepEqual(db.keys(), images.map(imageKey));
  db.close();
});

test('a cache from another detector is refused unless --overwrite, which starts over', async () => {
  const dir = tmp();
  const images = goodImages(path.join(dir, 'imgs'), 3);
  const out = path.join(dir, 'store');
  const ac = new AbortController();
  await extractRegions(opts(images, out, { signal: ac.signal, onImage: () => ac.abort() }));
  await assert.rejects(
    extractRegions(opts(images, out, { detectorId: 'grid-other' })),
    (e: unknown) => e instanceof ExtractError && e.code === 'mismatch' && /unfinished extraction made with detector grid-4 \(now grid-other\).*--overwrite/.test(e.message),
  );
  await assert.rejects(extractRegions(opts(images, out, { limits: { minSide: 5 } })), /image size limits/);
  const det = new GridDetector();
  const r = await extractRegions(opts(images, out, { detectorId: 'grid-other', detector: det, overwrite: true }));
  assert.equal(det.calls.length, 3);
  assert.equal(r.complete, true);
  assert.equal(r.detector, 'grid-other');
});

test('a complete store is not replaced without --overwrite; with it the store is rebuilt and a stale variant removed', async () => {
  const dir = tmp();
  const images = goodImages(path.join(dir, 'imgs'), 2);
  const out = path.join(dir, 'store');
  await extractRegions(opts(images, out));
  const before = fs.readFileSync(path.join(out, REPORT_FILE), 'utf8');
  await assert.rejects(
    extractRegions(opts(images, out)),
    (e: unknown) => e instanceof ExtractError && e.code === 'exists' && /holds a complete img_db from an earlier extraction \(2 images\).*--overwrite/.test(e.message),
  );
  assert.equal(fs.readFileSync(path.join(out, REPORT_FILE), 'utf8'), before, 'a refused run changes nothing');

  const det = new GridDetector();
  const r = await extractRegions(opts(images, out, { detector: det, overwrite: true, compress: true, rule: { minBb: 2 } }));
  assert.equal(det.calls.length, 2);
  assert.equal(r.compress, true);
  const entries = fs.readdirSync(out).sort();
  assert.deepEqual(entries, [REPORT_FILE, imgDbNames({ minBb: 2, compressed: true }).env, imgDbNames({ minBb: 2 }).nbbJson!].sort());
  const db = ImgDb.open(out, { minBb: 2 });
  assert.equal(db.compressed, true);
  db.close();

  // A folder that extraction did not write is not taken over either.
  const foreign = path.join(dir, 'foreign');
  fs.mkdirSync(foreign);
  fs.writeFileSync(path.join(foreign, 'keep.txt'), 'mine');
  await assert.rejects(extractRegions(opts(images, foreign)), /exists and is not empty/);
});

test('detector failures and non-finite outputs fail that image only; duplicate keys fail the second file', async () => {
  const dir = tmp();
  const a = writeImages(path.join(dir, 'a'), [['x.png', png(20, 20, 1)], ['y.png', png(24, 20, 2)], ['z.png', png(28, 20, 3)]]);
  const b = writeImages(path.join(dir, 'b'), [['x.webp', await sharp(png(20, 20, 4)).webp({ lossless: true }).toBuffer()]]);
  const det = new GridDetector(4, (img) => (img.width === 24 ? 'throw' : img.width === 28 ? 'nan' : null));
  const r = await extractRegions(opts([...a, ...b, a[0]], path.join(dir, 'store'), { detector: det }));
  assert.equal(r.counts.images, 4, 'the same file twice counts once');
  assert.deepEqual(r.done.map((d) => d.key), ['x.npz']);
  const why = r.failed.map((f) => `${path.relative(dir, f.file)} ${f.kind}: ${f.reason}`).sort();
  assert.match(why[0], /^a\/y\.png detector: grid detector: sabotaged$/);
  assert.match(why[1], /^a\/z\.png detector: detector output: features row 0 holds NaN \(NaN or infinite\)$/);
  assert.match(why[2], /^b\/x\.webp duplicate-key: its store key x\.npz is already taken by .*a\/x\.png/);
});

test('detectionToButd refuses values a float16 store cannot hold', async () => {
  const d = await new GridDetector(2).detect({ width: 10, height: 10, data: new Uint8Array(300).fill(9) });
  d.features[1] = 1e6;
  assert.throws(() => detectionToButd(d, 'img'), /img: features row 0 holds 1000000 \(outside the float16 range of the store\)/);
  d.features[1] = 0;
  d.conf = d.conf.subarray(1);
  assert.throws(() => detectionToButd(d, 'img'), /img: conf has 3 values, expected 4 x 1/);
});

test('listImages picks image extensions only and the detector identity hashes the folder', () => {
  const dir = tmp();
  writeImages(dir, [['b.JPG', Buffer.from('x')], ['a.png', Buffer.from('x')], ['c.gif', Buffer.from('x')], ['readme.txt', Buffer.from('x')], ['.hidden.png', Buffer.from('x')]]);
  const { images, ignored } = listImages(dir);
  assert.deepEqual(images.map((f) => path.basename(f)), ['a.png', 'b.JPG', 'c.gif']);
  assert.deepEqual(ignored.map((f) => path.basename(f)), ['readme.txt']);
  const id1 = detectorIdentity(dir);
  fs.writeFileSync(path.join(dir, 'a.png'), 'y');
  assert.notEqual(detectorIdentity(dir), id1);
  assert.match(id1, /^sha256:[0-9a-f]{64}$/);
});

// ---------------------------------------------------------------------------------------------
// The real detector.

test('the tiny BUTD detector: extract reproduces the golden UNITER npz and nbb', async () => {
  const dir = tmp();
  const detDir = path.join(dir, 'detector');
  fs.mkdirSync(detDir);
  fs.copyFileSync(path.join(FIXTURE, 'config.json'), path.join(detDir, 'config.json'));
  fs.copyFileSync(path.join(FIXTURE, 'weights.safetensors'), path.join(detDir, 'model.safetensors'));
  const detector = await Detector.fromPretrained(detDir, { threads: 1 });
  const images = ['img0', 'img1'].map((n) => path.join(FIXTURE, 'images', `${n}.png`));
  const npzDir = path.join(dir, 'npz');
  const r = await extractRegions({ detector, detectorId: detectorIdentity(detDir), images, out: path.join(dir, 'store'), npzDir });
  assert.equal(r.complete, true);
  assert.deepEqual(r.done.map((d) => [d.key, d.nbb]), [['img0.npz', 10], ['img1.npz', 14]]);
  for (const n of ['img0', 'img1']) {
    const want = readNpz(fs.readFileSync(path.join(FIXTURE, 'uniter', `${n}.npz`)));
    const got = readNpz(fs.readFileSync(path.join(npzDir, `${n}.npz`)));
    for (const [k, w] of want) {
      const g = got.get(k);
      assert.ok(g, `${n}: ${k} missing`);
      assert.deepEqual(g.shape, w.shape, `${n}/${k} shape`);
      assert.equal(g.dtype, '<f2', `${n}/${k} dtype`);
      const a = npyToFloat32(g);
      const b = npyToFloat32(w);
      for (let i = 0; i < a.length; i++) {
        // One float16 step of slack: values within the golden tolerance can round to neighbours.
        assert.ok(Math.abs(a[i] - b[i]) <= 1e-6 + 2 * 0.000977 * Math.abs(b[i]), `${n}/${k}[${i}]: ${a[i]} vs ${b[i]}`);
      }
    }
  }
});
