/**
 * Issue 15, cases 1 (data build part), 7 and 9: `uniter data build` validates every image on its
 * own (readable, >= 1 box, soft_labels present, finite, sane boxes), takes the feature width from
 * the majority of valid images or --img-dim, skips records with the reason, fails when nothing
 * valid would be written, and never replaces a store unless asked (--overwrite, atomically).
 * `uniter data inspect` flags bad boxes and exits 1 when it reports problems.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { command } from '../../src/cli/data.js';
import { buildUserData, inspectData } from '../../src/data/userdata.js';
import { TxtDb } from '../../src/data/txtdb.js';
import { writeImgDb } from '../../src/data/imgdb.js';
import { float32ToHalfArray, readBUTDNpz, readNpz, writeNpz, type NpyArray } from '../../src/data/npz.js';

const NPZ_DIR = fileURLToPath(new URL('../../../test/fixtures/data/official/npz/coco_tiny/', import.meta.url));
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-databuild-'));
process.on('exit', () => fs.rmSync(root, { recursive: true, force: true }));

const images = path.join(root, 'images');
fs.mkdirSync(images);
for (const f of fs.readdirSync(NPZ_DIR)) fs.copyFileSync(path.join(NPZ_DIR, f), path.join(images, f));
const base = readNpz(fs.readFileSync(path.join(NPZ_DIR, 'coco_tiny_b.npz')));
const n = base.get('features')!.shape[0];
function variant(name: string, change: (a: Map<string, NpyArray>) => void): void {
  const a = new Map(base);
  change(a);
  fs.writeFileSync(path.join(images, name), writeNpz(a, false));
}
const boxes = (edit: (bb: Float32Array) => void): NpyArray => {
  const bb = Float32Array.from(readBUTDNpz(path.join(NPZ_DIR, 'coco_tiny_b.npz')).normBb);
  edit(bb);
  return { dtype: '<f4', shape: [n, 6], data: bb };
};
variant('wide.npz', (a) => a.set('features', { dtype: '<f2', shape: [n, 32], data: float32ToHalfArray(new Float32Array(n * 32).fill(1)) }));
variant('nosoft.npz', (a) => a.delete('soft_labels'));
variant('inverted.npz', (a) => a.set('norm_bb', boxes((bb) => ([bb[6 + 0], bb[6 + 2]] = [0.9, 0.1]))));
variant('negative.npz', (a) => a.set('norm_bb', boxes((bb) => (bb[12 + 1] = -0.5))));
variant('zero.npz', (a) => {
  for (const [k, v] of a) a.set(k, { ...v, shape: [0, ...v.shape.slice(1)], data: v.data.subarray(0, 0) } as NpyArray);
});

function jsonl(name: string, lines: Array<Record<string, unknown>>): string {
  const file = path.join(root, `${name}.jsonl`);
  fs.writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n'));
  return file;
}
const GOOD = ['coco_tiny_a.npz', 'coco_tiny_b.npz', 'coco_tiny_c.npz'].map((image, i) => ({ id: `good${i}`, caption: 'A dog runs on the grass.', image }));
const BAD = ['wide.npz', 'nosoft.npz', 'inverted.npz', 'negative.npz', 'zero.npz'].map((image) => ({ id: image.replace('.npz', ''), caption: 'something odd', image }));

test('case 7: an odd file listed first does not fix the width; every bad image is skipped with its reason, none aborts the build', () => {
  const out = path.join(root, 'out7');
  const r = buildUserData({ jsonl: jsonl('mixed', [...BAD, ...GOOD]), imagesDir: images, outDir: out });
  assert.equal(r.texts, 3);
  assert.equal(r.images, 3);
  assert.deepEqual(TxtDb.open(r.txtDb).ids(), ['good0', 'good1', 'good2']);
  const reason = (id: string) => r.warnings.find((w) => w.startsWith(`record "${id}"`)) ?? `no warning for ${id}`;
  assert.match(reason('wide'), /feature width 32 \/ 17 labels, unlike 64 \/ 17 of the majority of images \(3 of 4\)/);
  assert.match(reason('nosoft'), /has no 'soft_labels' array/);
  assert.match(reason('inverted'), /has an inverted box \(box 1: \[0\.9, .*expected x1 <= x2/);
  assert.match(reason('negative'), /has a box outside the image \(box 2: .*-0\.5/);
  assert.match(reason('zero'), /has no boxes \(0 regions\)/);
});

test('case 7: --img-dim picks the width', () => {
  const r = buildUserData({ jsonl: jsonl('dim', [...BAD, ...GOOD]), imagesDir: images, outDir: path.join(root, 'outdim'), imgDim: 32 });
  assert.deepEqual(TxtDb.open(r.txtDb).ids(), ['wide']);
  assert.ok(r.warnings.some((w) => /record "good0".*unlike 32 \/ 17 of --img-dim 32/.test(w)));
});

test('case 7: nothing valid is an error and writes nothing; the CLI exits 1', async () => {
  const out = path.join(root, 'out-empty');
  const file = jsonl('allbad', BAD.slice(1)); // alone, the wide image would set the width and be valid
  assert.throws(() => buildUserData({ jsonl: file, imagesDir: images, outDir: out }), /allbad\.jsonl: no valid record, nothing written \(4 records skipped: record "nosoft"/);
  assert.equal(fs.existsSync(out), false);
  const code = await command.run(['build', '--jsonl', file, '--images', images, '--out', out]);
  assert.equal(code, 1);
});

test('case 1: data build never replaces a store of the same name unless --overwrite, and then whole', async () => {
  const out = path.join(root, 'out-own');
  const first = buildUserData({ jsonl: jsonl('own', GOOD), imagesDir: images, outDir: out });
  assert.equal(first.texts, 3);
  const second = jsonl('own', GOOD.slice(0, 1));
  assert.throws(() => buildUserData({ jsonl: second, imagesDir: images, outDir: out }), /img_db\/own and .*txt_db\/own\.db already exist; pass --overwrite to replace/);
  assert.equal(await command.run(['build', '--jsonl', second, '--images', images, '--out', out]), 1);
  assert.equal(TxtDb.open(first.txtDb).ids().length, 3, 'the first store is intact');
  const r = buildUserData({ jsonl: second, imagesDir: images, outDir: out, overwrite: true });
  assert.deepEqual(TxtDb.open(r.txtDb).ids(), ['good0']);
  assert.equal(r.images, 1);
  assert.deepEqual(fs.readdirSync(out).sort(), ['img_db', 'txt_db'], 'no staging folder left');
});

test('case 9: data inspect reports inverted boxes in a store and exits 1 when it reports problems, 0 otherwise', async () => {
  const good = readBUTDNpz(path.join(NPZ_DIR, 'coco_tiny_a.npz'));
  const okStore = path.join(root, 'inspect-ok');
  buildUserData({ jsonl: jsonl('fine', GOOD), imagesDir: images, outDir: okStore });
  assert.equal(await command.run(['inspect', okStore]), 0);

  const badStore = path.join(root, 'inspect-bad');
  const bb = Float32Array.from(good.normBb);
  [bb[0], bb[2]] = [0.8, 0.2];
  writeImgDb(path.join(badStore, 'img_db/set'), [{ fname: 'a.npz', features: good.features, normBb: bb, conf: good.conf, softLabels: good.softLabels, numBoxes: good.numBoxes }]);
  const r = inspectData(badStore);
  assert.deepEqual(r.problems.map((p) => [p.kind, p.record]), [['bad boxes', 'a.npz']]);
  assert.match(r.problems[0].detail, /inverted box \(box 0/);
  assert.equal(await command.run(['inspect', badStore]), 1);
});
