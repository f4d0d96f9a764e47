/**
 * Issue 15, cases 2 and 6: non-finite numbers are errors, not results. NaN/Inf weights are
 * refused when loaded or converted (naming the tensor); NaN region features or boxes are refused
 * when collated (naming the row, field and region); a non-finite output during evaluation stops
 * `uniter evaluate` before any results file is written. An example with 0 regions is an error,
 * alone or inside a batch.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runEvaluate } from '../../src/cli/evaluate.js';
import { runFinetune } from '../../src/cli/finetune.js';
import { collateRows, type SeqRow } from '../../src/data/collate.js';
import { readSafetensors, writeSafetensors } from '../../src/engine/safetensors.js';
import { readWeightsAny } from '../../src/model/load.js';
import { loadModelFolder } from '../../src/pretrain/checkpoint.js';
import { toOfficialWeights } from '../../src/interop/official-names.js';
import { NonFiniteError } from '../../src/util/finite.js';
import { makeSandbox, silent, type Sandbox } from '../finetune/fixtures.js';

let box: Sandbox;
let best: string;
before(async () => {
  box = makeSandbox('uniter-finite-');
  const out = path.join(box.dir, 'run-vqa');
  const cfg = box.config('vqa', { num_train_steps: 1, valid_steps: 1, warmup_steps: 1, train_batch_size: 768, val_batch_size: 2048 });
  await runFinetune(['vqa', '--config', cfg, '--data', box.worldDir, '--out', out, '--quiet'], silent);
  best = path.join(out, 'best');
});
after(() => box.cleanup());

/** A copy of the fine-tuned model folder with one value of one tensor replaced. */
function damagedCopy(name: string, tensor: RegExp, value: number, all = false): { dir: string; tensorName: string } {
  const dir = path.join(box.dir, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(path.join(best, 'config.json'), path.join(dir, 'config.json'));
  const { tensors, metadata } = readSafetensors(path.join(best, 'model.safetensors'));
  const tensorName = [...tensors.keys()].find((k) => tensor.test(k))!;
  assert.ok(tensorName, `a tensor matching ${tensor}`);
  if (all) (tensors.get(tensorName)!.data as Float32Array).fill(value);
  else (tensors.get(tensorName)!.data as Float32Array)[3] = value;
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, metadata);
  return { dir, tensorName };
}

test('case 2: NaN and infinite weights are refused on load, naming the file and the tensor', () => {
  for (const [tag, v, shown] of [['nan', NaN, 'NaN'], ['inf', Infinity, 'Infinity'], ['-inf', -Infinity, '-Infinity']] as const) {
    const { dir, tensorName } = damagedCopy(`w-${tag}`, /vqa_output\.0\.weight$/, v);
    const re = new RegExp(`model\\.safetensors: tensor '${tensorName.replace(/\./g, '\\.')}' holds ${shown.replace('-', '\\-')} at \\[0, 3\\]`);
    assert.throws(() => loadModelFolder(dir), (e: Error) => e instanceof NonFiniteError && re.test(e.message));
    assert.throws(() => readWeightsAny(dir), (e: Error) => e instanceof NonFiniteError && /weights must be finite/.test(e.message));
  }
});

test('case 2: a PyTorch state dict with a NaN tensor is refused when converted', () => {
  const data = Float32Array.from([1, NaN, 3]);
  assert.throws(
    () => toOfficialWeights({ file: 'x.pt', tensors: new Map([['bert.pooler.dense.bias', { dtype: 'float32', shape: [3], data }]]), sourceDtypes: new Map(), ties: new Map() } as never),
    /x\.pt: tensor 'bert\.pooler\.dense\.bias' holds NaN at \[1\] \(shape \[3\]\); weights must be finite/,
  );
});

test('case 2: uniter evaluate on NaN weights stops with the tensor named and writes no results file', async () => {
  const { dir } = damagedCopy('eval-nan', /vqa_output\.0\.weight$/, NaN);
  const out = path.join(box.dir, 'eval-nan-out');
  await assert.rejects(runEvaluate(['vqa', '--checkpoint', dir, '--data', box.worldDir, '--out', out, '--quiet'], silent), /vqa_output\.0\.weight' holds NaN/);
  assert.equal(fs.existsSync(out), false, 'no results folder');
});

test('case 2: finite weights whose outputs overflow stop evaluation (no "yes" to every question), no results file', async () => {
  const { dir } = damagedCopy('eval-overflow', /vqa_output\.3\.weight$/, 3e38, true);
  const out = path.join(box.dir, 'eval-overflow-out');
  await assert.rejects(runEvaluate(['vqa', '--checkpoint', dir, '--data', box.worldDir, '--out', out, '--quiet'], silent), (e: Error) => e instanceof NonFiniteError && /task 'vqa\w*': output '\w+' holds (NaN|-?Infinity)/.test(e.message));
  assert.equal(fs.existsSync(out), false, 'no results folder');
  // The untouched model still evaluates and writes its results.
  const ok = await runEvaluate(['vqa', '--checkpoint', best, '--data', box.worldDir, '--out', path.join(box.dir, 'eval-ok'), '--quiet'], silent);
  assert.ok(ok.files.length > 0 && ok.files.every((f) => fs.existsSync(f)));
});

function seqRow(nbb: number, dim = 4, id?: string): SeqRow {
  const r: SeqRow = { inputIds: [101, 7, 102], imgFeat: new Float32Array(nbb * dim).fill(0.5), imgPosFeat: new Float32Array(nbb * 7).fill(0.25), nbb };
  if (id !== undefined) r.id = id;
  return r;
}

test('case 2: NaN region features or boxes are refused at collate, naming row, example, field, region and column', () => {
  const feat = seqRow(3, 4, 'img-17');
  feat.imgFeat[2 * 4 + 1] = NaN;
  assert.throws(() => collateRows([seqRow(2), feat]), (e: Error) => e instanceof NonFiniteError && e.message === "collate: row 1 (example 'img-17') field 'img_feat' holds NaN at region 2, column 1; inputs must be finite");
  const box_ = seqRow(2);
  box_.imgPosFeat[7 + 3] = Infinity;
  assert.throws(() => collateRows([box_]), /collate: row 0 field 'img_pos_feat' holds Infinity at region 1, column 3/);
});

test('case 6: an example with 0 regions is an error, alone and inside a batch', () => {
  assert.throws(() => collateRows([seqRow(0)], 4), /collate: row 0 has 0 image regions; every example needs at least one region/);
  assert.throws(() => collateRows([seqRow(2), seqRow(0, 4, 'q9')]), /collate: row 1 \(example 'q9'\) has 0 image regions/);
});
