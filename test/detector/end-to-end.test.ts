/**
 * From pictures to UNITER, through the commands a user types: convert the reference detector's
 * PyTorch checkpoint, extract regions from PNG/JPEG files into an img_db and .npz files, build
 * stores from captions, pre-train on them, and score an image and a sentence in three lines.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { Detector } from '../../src/detector/detector.js';
import { ImgDb } from '../../src/data/imgdb.js';
import { Uniter } from '../../src/api/uniter.js';
import { TINY, randomParams, removeTempDirs, tempDir, writeModelFolder } from '../export/model-folders.js';

after(removeTempDirs);

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const FIXTURE = path.join(ROOT, 'test/fixtures/detector');
const uniter = (args: string[]) => execFileSync(process.execPath, [path.join(ROOT, 'bin/uniter.js'), ...args], { encoding: 'utf8', cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });

const work = tempDir('detector-e2e-');
const detDir = path.join(work, 'detector');
const imagesDir = path.join(work, 'photos');

test('convert -> extract -> data build -> pretrain -> score, on the tiny reference detector', async () => {
  // 1. The reference's PyTorch checkpoint becomes a detector folder.
  uniter(['convert', path.join(FIXTURE, 'frcnn-tiny-torch/pytorch_model.bin'), detDir, '--config', path.join(FIXTURE, 'frcnn-tiny/config.json')]);
  assert.ok(fs.existsSync(path.join(detDir, 'model.safetensors')));

  // 2. Four pictures: the fixture's two PNGs, a JPEG and a WebP made from them.
  fs.mkdirSync(imagesDir);
  for (const n of ['img0', 'img1']) fs.copyFileSync(path.join(FIXTURE, 'frcnn-tiny/images', `${n}.png`), path.join(imagesDir, `${n}.png`));
  await sharp(path.join(imagesDir, 'img0.png')).flop().jpeg({ quality: 92 }).toFile(path.join(imagesDir, 'mirror.jpg'));
  await sharp(path.join(imagesDir, 'img1.png')).resize(90, 180).webp({ lossless: true }).toFile(path.join(imagesDir, 'tall.webp'));

  const store = path.join(work, 'img_db');
  const npzDir = path.join(work, 'npz');
  const summary = JSON.parse(uniter(['extract', '--detector', detDir, '--images-dir', imagesDir, '--out', store, '--npz', npzDir, '--threads', '1', '--json']).trim().split('\n').pop()!);
  assert.equal(summary.done, 4);
  assert.equal(summary.failed, 0);
  const db = ImgDb.open(store);
  const names = ['img0.npz', 'img1.npz', 'mirror.npz', 'tall.npz'];
  for (const n of names) {
    const rec = db.get(n);
    assert.ok(rec.nbb >= 10 && rec.nbb <= 20, `${n}: nbb ${rec.nbb}`);
    assert.equal(rec.features.length, rec.nbb * 256);
  }
  // The fixture images give the golden box counts (conf > 0.2, clamped to [10, 100]).
  assert.equal(db.get('img0.npz').nbb, 10);
  assert.equal(db.get('img1.npz').nbb, 14);

  // 3. Captions + the .npz files -> official stores.
  const jsonl = path.join(work, 'captions.jsonl');
  const captions = ['a red ball on the grass', 'a tall thin tower', 'a mirrored scene with shapes', 'a narrow picture of a street'];
  // Three captions per picture: a token-bucket batch holds 8 examples.
  const records = [0, 1, 2].flatMap((k) => names.map((n, i) => ({ id: `c${k}-${i}`, text: `${captions[(i + k) % 4]} ${k}`, image: n })));
  fs.writeFileSync(jsonl, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const dataDir = path.join(work, 'data');
  uniter(['data', 'build', '--jsonl', jsonl, '--images', npzDir, '--out', dataDir, '--name', 'photos']);
  const built = ImgDb.open(path.join(dataDir, 'img_db/photos'));
  for (const n of names) assert.equal(built.get(n).nbb, db.get(n).nbb, `${n}: data build keeps the extracted box count`);

  // 4. Pre-training reads them (img_dim 256 = the tiny detector's feature width).
  const cfg = {
    model: { config: { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, img_dim: 256, img_label_dim: 22 } },
    output_dir: path.join(work, 'pretrain'),
    train_datasets: [{ name: 'p', db: [path.join(dataDir, 'txt_db/photos.db')], img: [path.join(dataDir, 'img_db/photos')], tasks: ['itm', 'mlm', 'mrfr', 'mrckl'], mix_ratio: [1, 1, 1, 1] }],
    val_datasets: [{ name: 'p', db: [path.join(dataDir, 'txt_db/photos.db')], img: [path.join(dataDir, 'img_db/photos')], tasks: ['itm', 'mlm'] }],
    train_batch_size: 260, val_batch_size: 2000, gradient_accumulation_steps: 1, learning_rate: 1e-3, warmup_steps: 1,
    num_train_steps: 4, valid_steps: 100, seed: 3,
  };
  fs.writeFileSync(path.join(work, 'pretrain.json'), JSON.stringify(cfg));
  const pt = JSON.parse(uniter(['pretrain', '--config', path.join(work, 'pretrain.json'), '--json', '--quiet']).trim().split('\n').pop()!);
  assert.equal(pt.steps, 4);
  assert.ok(Number.isFinite(pt.mlm_acc));

  // 5. Three lines from a picture and a sentence to a score; the same numbers as the stored regions.
  const cfgItm = { ...TINY, vocab_size: 28996, img_dim: 256, img_label_dim: 22 };
  const modelDir = writeModelFolder(path.join(work, 'itm-model'), cfgItm, randomParams(cfgItm, 'pretrain'));
  const det = await Detector.fromPretrained(detDir, { threads: 1 });
  const model = Uniter.fromPretrained(modelDir, { task: 'itm', threads: 1 });
  const [p] = await model.scoreItm([{ text: 'a red ball', image: await det.regions(path.join(imagesDir, 'mirror.jpg')) }]);
  assert.ok(p > 0 && p < 1);
  const [fromStore] = await model.scoreItm([{ text: 'a red ball', image: db.get('mirror.npz') }]);
  assert.ok(Math.abs(p - fromStore) < 1e-6, `regions() and the stored img_db agree: ${p} vs ${fromStore}`);
  // A Buffer works as well as a path, and gives the same regions.
  const fromBuffer = await det.regions(fs.readFileSync(path.join(imagesDir, 'mirror.jpg')));
  assert.deepEqual(Array.from(fromBuffer.features.slice(0, 16)), Array.from(db.get('mirror.npz').features.slice(0, 16)));
});
