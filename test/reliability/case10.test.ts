/**
 * Issue 15, case 10 (the parts outside convert): an export whose verification fails leaves no
 * file; the library API names a wrong argument; the synthetic world has a bound; fine-tuning
 * configs refuse integers above 2^53 - 1 as pre-training configs do.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Uniter } from '../../src/api/uniter.js';
import { loadPretrained } from '../../src/api/pretrained.js';
import { command as exportCommand } from '../../src/cli/export-onnx.js';
import { command as worldCommand } from '../../src/cli/world.js';
import { MAX_WORLD_IMAGES, resolveWorldOptions } from '../../src/data/world.js';
import type { HostTensor } from '../../src/engine/host.js';
import { ExportVerificationError, exportModel, exportOnnx } from '../../src/export/export.js';
import { parseFinetuneConfig } from '../../src/finetune/defaults.js';
import { getTask } from '../../src/finetune/task-registry.js';
import { runCommand } from '../helpers/cli.js';
import { TINY, randomParams, removeTempDirs, tempDir, writeModelFolder } from '../export/model-folders.js';

after(removeTempDirs);

/** Finite weights so large that the scores overflow to infinity (they load: every value is finite). */
function hugeItmFolder(dir: string): string {
  const params = randomParams(TINY, 'pretrain');
  for (const [name, t] of params) if (/itm_output\.weight$/.test(name)) (t.data as Float32Array).fill(3e38);
  return writeModelFolder(dir, TINY, params);
}

const listing = (dir: string) => fs.readdirSync(dir).sort();

test('case 10b: export --verify on weights whose scores overflow fails clearly and leaves no file', async () => {
  const root = tempDir('case10-export-');
  const dir = hugeItmFolder(path.join(root, 'huge'));
  const out = path.join(root, 'out', 'itm.onnx');
  fs.mkdirSync(path.dirname(out));
  await assert.rejects(exportOnnx({ checkpoint: dir, out, verify: true }), (e: Error) => {
    assert.ok(e instanceof ExportVerificationError, String(e));
    assert.match(e.message, /export verification of .*itm\.onnx failed: .*output 'itm_scores' holds (-?Infinity|NaN).*; nothing was written/);
    return true;
  });
  assert.deepEqual(listing(path.dirname(out)), [], 'no model, data, sidecar or staging folder left');

  // The command line: exit 1, the message, nothing written (external data too).
  const r = await runCommand(exportCommand, ['--checkpoint', dir, out, '--verify', '--external-data']);
  assert.equal(r.code, 1);
  assert.match(r.err, /uniter export-onnx: export verification of .*itm\.onnx failed: .*nothing was written/);
  assert.doesNotMatch(r.out, /wrote /);
  assert.deepEqual(listing(path.dirname(out)), []);
});

test('case 10b: an export whose outputs differ from the library is refused with the comparison, leaving no file', async () => {
  const root = tempDir('case10-mismatch-');
  const dir = writeModelFolder(path.join(root, 'itm'), TINY, randomParams(TINY, 'pretrain'));
  const model = loadPretrained(dir);
  // The library side of the comparison sees a different head than the one exported.
  const original = model.params;
  const shifted = new Map([...original].map(([k, v]) => [k, /itm_output\.bias$/.test(k) ? { ...v, data: (v.data as Float32Array).map((x) => x + 1) } : v] as [string, HostTensor]));
  class TwoFaced extends Map<string, HostTensor> {
    override get(k: string): HostTensor | undefined {
      return (/UniterRunner/.test(new Error().stack ?? '') ? shifted : original).get(k);
    }
  }
  const out = path.join(root, 'o', 'itm.onnx');
  fs.mkdirSync(path.dirname(out));
  await assert.rejects(exportModel({ ...model, params: new TwoFaced(original) }, { out, verify: true }), (e: Error) => {
    assert.ok(e instanceof ExportVerificationError);
    assert.match(e.message, /outputs differ from the library's float32 run by more than the tolerance 0.00001 \(itm_scores \[B=\d+ Lt=\d+ N=\d+ Lj=\d+\] max \|diff\| 1\.00e\+0;.*nothing was written/);
    assert.equal(e.report?.ok, false);
    return true;
  });
  assert.deepEqual(listing(path.dirname(out)), []);
  // The same export verified against the same weights is written, sidecar and all.
  const ok = await exportModel(model, { out, verify: true });
  assert.equal(ok.verification?.ok, true);
  assert.deepEqual(listing(path.dirname(out)), ['itm.onnx', 'itm.onnx.json']);
});

test('case 10f: scoreItm and the other entry points name a wrong batch argument', async () => {
  const root = tempDir('case10-api-');
  const uniter = Uniter.fromPretrained(writeModelFolder(path.join(root, 'itm'), TINY, randomParams(TINY, 'pretrain')));
  await assert.rejects(uniter.scoreItm({ text: 'a red cube' } as never), /^TypeError: scoreItm\(batch\): 'batch' must be an array of inputs \(\{text, image\} objects\) or a collated batch \(a Map of tensors\), got an object \(Object\)$/);
  await assert.rejects(uniter.scoreItm('a red cube' as never), /scoreItm\(batch\): .* got string "a red cube"/);
  await assert.rejects(uniter.scoreItm(null as never), /scoreItm\(batch\): .* got null/);
  await assert.rejects(uniter.scoreItm(undefined as never), /scoreItm\(batch\): .* got undefined/);
  await assert.rejects(uniter.forward(42 as never), /forward\(batch\): .* got number 42/);
  await assert.rejects(uniter.scores(new Set() as never), /scores\(batch\): .* got an object \(Set\)/);
  await assert.rejects(uniter.scoreItm([]), /itm: expected a non-empty array of inputs/);
});

test('case 10g: the synthetic world is bounded: 100000000 images are refused at once, naming the bound and the memory', async () => {
  assert.throws(() => resolveWorldOptions({ numImages: 100_000_000 }), /world options: numImages must be at most 50000, got 100000000: the synthetic world is held in memory \(about 34 KiB per image, so 3\.48 TB for 100000000 images\); build bigger data sets as stores with 'uniter data build'/);
  assert.equal(resolveWorldOptions({ numImages: MAX_WORLD_IMAGES }).numImages, MAX_WORLD_IMAGES);
  assert.throws(() => resolveWorldOptions({ imgDim: 1e9 }), /imgDim must be an integer in \[16, 16384\]/);
  assert.throws(() => resolveWorldOptions({ labelDim: 1e9 }), /labelDim must be an integer in \[\d+, 65536\]/);
  const root = tempDir('case10-world-');
  const out = path.join(root, 'w');
  const t0 = Date.now();
  const r = await runCommand(worldCommand, ['--out', out, '--images', '100000000']);
  assert.equal(r.code, 1);
  assert.match(r.err, /uniter world: world options: numImages must be at most 50000/);
  assert.ok(Date.now() - t0 < 2000, 'refused before generating anything');
  assert.ok(!fs.existsSync(out));
});

test('case 10e: fine-tuning configs refuse integers above 2^53 - 1 (num_train_steps 1e308), naming the field', () => {
  const where = { source: 'cfg.json', baseDir: '.' };
  assert.throws(() => parseFinetuneConfig({ num_train_steps: 1e308 }, getTask('vqa'), where), /cfg\.json: invalid fine-tuning config for 'vqa':\n {2}- field 'num_train_steps' must be an integer <= 2\^53 - 1, got 1e\+308/);
  for (const field of ['train_batch_size', 'valid_steps', 'seed', 'warmup_steps']) {
    assert.throws(() => parseFinetuneConfig({ [field]: 2 ** 60 }, getTask('ve'), where), new RegExp(`field '${field}' must be an integer <= 2\\^53 - 1`));
  }
  assert.equal(parseFinetuneConfig({ num_train_steps: 5 }, getTask('vqa'), where).settings.steps, 5);
});
