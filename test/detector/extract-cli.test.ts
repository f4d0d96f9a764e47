/** `uniter extract` end to end with the GridDetector test helper in place of the network. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runExtract, type ExtractDeps } from '../../src/cli/extract.js';
import { ImgDb } from '../../src/data/imgdb.js';
import { ProgressDisplay } from '../../src/pretrain/progress.js';
import { encodePng } from '../helpers/png.js';
import { textSink } from '../helpers/cli.js';
import { GridDetector } from '../helpers/grid-detector.js';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-extract-cli-'));
}

const sink = textSink;

function png(w: number, h: number, seed: number): Buffer {
  const data: number[] = [];
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) data.push((x * 11 + seed * 50) % 256, (y * 3 + seed) % 256, (x + y + seed * 7) % 256);
  return encodePng({ width: w, height: h, channels: 3, data });
}

/** A detector folder as the command checks it (config.json + model.safetensors). */
function detectorDir(root: string, tag = 'a'): string {
  const d = path.join(root, `det-${tag}`);
  fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(d, 'config.json'), '{}');
  fs.writeFileSync(path.join(d, 'model.safetensors'), tag);
  return d;
}

async function run(argv: string[], extra: Partial<ExtractDeps> & { detector?: GridDetector } = {}) {
  const stderr = sink();
  const stdout = sink();
  const det = extra.detector ?? new GridDetector();
  const code = await runExtract(argv, { loadDetector: async () => det, stderr, stdout, signal: extra.signal ?? new AbortController().signal });
  return { code, err: stderr.text, out: stdout.text, det };
}

test('without --detector, or with a folder lacking weights, the command says where the public weights are and how to convert them', async () => {
  const dir = tmp();
  for (const argv of [['--out', path.join(dir, 's'), 'x.png'], ['--detector', path.join(dir, 'nope'), '--out', path.join(dir, 's'), 'x.png']]) {
    const r = await run(argv);
    assert.equal(r.code, 2);
    assert.match(r.err, /resnet101_faster_rcnn_final\.caffemodel/);
    assert.match(r.err, /test\.prototxt/);
    assert.match(r.err, /unc-nlp\/frcnn-vg-finetuned, pytorch_model\.bin/);
    assert.match(r.err, /uniter convert resnet101_faster_rcnn_final\.caffemodel --prototxt test\.prototxt DIR/);
    assert.match(r.err, /uniter convert pytorch_model\.bin DIR/);
  }
  const empty = path.join(dir, 'empty');
  fs.mkdirSync(empty);
  fs.writeFileSync(path.join(empty, 'config.json'), '{}');
  const r = await run(['--detector', empty, '--out', path.join(dir, 's'), 'x.png']);
  assert.equal(r.code, 2);
  assert.match(r.err, /--detector .*empty: no weights \(model\.safetensors\) in the folder/);
});

test('argument errors exit 2 naming the argument', async () => {
  const dir = tmp();
  const det = detectorDir(dir);
  const imgs = path.join(dir, 'imgs');
  fs.mkdirSync(imgs);
  const cases: Array<[string[], RegExp]> = [
    [['--detector', det, 'a.png'], /--out STORE is required/],
    [['--detector', det, '--out', 's'], /no images/],
    [['--detector', det, '--out', 's', '--images-dir', imgs, 'a.png'], /not both/],
    [['--detector', det, '--out', 's', '--images-dir', imgs], /no image files/],
    [['--detector', det, '--out', 's', '--conf-th', 'abc', 'a.png'], /--conf-th must be a number, got 'abc'/],
    [['--detector', det, '--out', 's', '--max-bb', '2.5', 'a.png'], /--max-bb must be an integer >= 1, got '2\.5'/],
    [['--detector', det, '--out', path.join(dir, 's'), '--min-bb', '20', '--max-bb', '10', 'a.png'], /max-bb must be an integer >= min-bb \(20\)/],
    [['--detector', det, '--out', 's', '--threads', '0', 'a.png'], /--threads must be an integer >= 1, got '0'/],
    [['--detector', det, '--out', 's', '--frobnicate', 'a.png'], /unknown option --frobnicate\n/],
  ];
  for (const [argv, re] of cases) {
    const r = await run(argv);
    assert.equal(r.code, 2, argv.join(' '));
    assert.match(r.err, re);
  }
});

test('a run with bad images exits 1, lists each one, writes the good ones; the rerun finishes; a complete store needs --overwrite', async () => {
  const dir = tmp();
  const det = detectorDir(dir);
  const imgs = path.join(dir, 'imgs');
  fs.mkdirSync(imgs);
  for (let i = 0; i < 3; i++) fs.writeFileSync(path.join(imgs, `p${i}.png`), png(30 + i, 20, i));
  fs.writeFileSync(path.join(imgs, 'dot.png'), encodePng({ width: 1, height: 1, channels: 3, data: [0, 0, 0] }));
  fs.writeFileSync(path.join(imgs, 'cut.jpg'), Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 16, 0x4a, 0x46]));
  fs.writeFileSync(path.join(imgs, 'README.txt'), 'not an image');
  const store = path.join(dir, 'store');
  const npz = path.join(dir, 'npz');

  const r1 = await run(['--detector', det, '--images-dir', imgs, '--out', store, '--npz', npz, '--json']);
  assert.equal(r1.code, 1);
  assert.match(r1.err, /cut\.jpg: corrupt or truncated image header/);
  assert.match(r1.err, /dot\.png: image is 1 x 1 px; the shorter side must be at least 10 px/);
  assert.match(r1.err, /3 of 5 images in .*feat_th0\.2_max100_min10; 3 extracted in .* images\/s\); 2 failed \(listed in .*extract-report\.json; rerun to retry them\); 1 non-image files ignored/);
  const j1 = JSON.parse(r1.out.trim());
  assert.equal(r1.out.trim().split('\n').length, 1, 'one JSON line');
  assert.deepEqual([j1.complete, j1.exitCode, j1.images, j1.done, j1.extracted, j1.failed, j1.ignored], [false, 1, 5, 3, 3, 2, 1]);
  assert.equal(typeof j1.imagesPerSecond, 'number');
  assert.equal(j1.store, store);
  assert.deepEqual(fs.readdirSync(npz).sort(), ['p0.npz', 'p1.npz', 'p2.npz']);
  const db = ImgDb.open(store);
  assert.deepEqual(db.keys(), ['p0.npz', 'p1.npz', 'p2.npz']);
  db.close();
  // Plain (non-terminal) progress lines with the rate.
  assert.match(r1.err, /images 5\/5 100\.0% \| .*images\/s \| ETA/);

  fs.rmSync(path.join(imgs, 'dot.png'));
  fs.rmSync(path.join(imgs, 'cut.jpg'));
  const r2 = await run(['--detector', det, '--images-dir', imgs, '--out', store, '--npz', npz, '--json']);
  assert.equal(r2.code, 0);
  assert.equal(r2.det.calls.length, 0, 'nothing extracted twice');
  assert.equal(JSON.parse(r2.out).complete, true);

  const r3 = await run(['--detector', det, '--images-dir', imgs, '--out', store]);
  assert.equal(r3.code, 2);
  assert.match(r3.err, /holds a complete img_db from an earlier extraction \(3 images\); it is not replaced without --overwrite/);
  const r4 = await run(['--detector', det, '--images-dir', imgs, '--out', store, '--overwrite', '--compress', '--quiet']);
  assert.equal(r4.code, 0);
  assert.equal(r4.det.calls.length, 3);
  assert.doesNotMatch(r4.err, /images 3\/3/);
  const db2 = ImgDb.open(store);
  assert.equal(db2.compressed, true);
  db2.close();
});

test('an interrupted run exits 130 and the same command resumes it; another detector is refused', async () => {
  const dir = tmp();
  const det = detectorDir(dir);
  const files = Array.from({ length: 4 }, (_, i) => {
    const f = path.join(dir, `q${i}.png`);
    fs.writeFileSync(f, png(20, 20 + i, i));
    return f;
  });
  const store = path.join(dir, 'store');
  const ac = new AbortController();
  const stopping = new GridDetector(4, () => {
    ac.abort();
    return null;
  });
  const r1 = await run(['--detector', det, '--out', store, ...files], { detector: stopping, signal: ac.signal });
  assert.equal(r1.code, 130);
  assert.equal(stopping.calls.length, 1);
  assert.match(r1.err, /interrupted with 1 of 4 images done .*rerun the same command to resume/);

  const other = detectorDir(dir, 'b');
  const r2 = await run(['--detector', other, '--out', store, ...files]);
  assert.equal(r2.code, 2);
  assert.match(r2.err, /unfinished extraction made with detector sha256:/);

  const r3 = await run(['--detector', det, '--out', store, ...files]);
  assert.equal(r3.code, 0);
  assert.equal(r3.det.calls.length, 3);
});

test('ProgressDisplay with a unit counts images and shows images/s', () => {
  const s = sink();
  let t = 0;
  const p = new ProgressDisplay({ total: 10, stream: s, unit: 'images', now: () => t, lineIntervalMs: 0 });
  for (let i = 1; i <= 4; i++) {
    t += 500;
    p.update({ step: i });
  }
  assert.match(s.text.trim().split('\n').pop()!, /^images  4\/10  40\.0% \| 2\.00 images\/s \| ETA 3s$/);
});
