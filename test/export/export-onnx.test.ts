import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { HostTensor } from '../../src/engine/host.js';
import { fromOrt, toOrt } from '../../src/engine/runtime.js';
import { readSafetensors } from '../../src/engine/safetensors.js';
import type { HeadName } from '../../src/model/params.js';
import { Uniter } from '../../src/api/uniter.js';
import { SCORE_OUTPUT, ScoringTask, TaskRequest } from '../../src/api/scoring-heads.js';
import { exportOnnx } from '../../src/export/export.js';
import { sampleBatch } from '../../src/export/sample.js';
import type { Batch } from '../../src/data/types.js';
import { GOLDEN, TINY, goldenModelFolder, randomParams, removeTempDirs, tempDir, writeModelFolder } from './model-folders.js';

after(removeTempDirs);

const OFFICIAL = ['input_ids', 'position_ids', 'img_feat', 'img_pos_feat', 'attn_masks', 'gather_index'];

async function runFile(file: string, batch: Batch): Promise<{ inputs: readonly string[]; outputs: Map<string, HostTensor> }> {
  const session = await ort.InferenceSession.create(file, { intraOpNumThreads: 1 });
  try {
    const feeds: Record<string, ort.Tensor> = {};
    for (const name of session.inputNames) {
      const t = batch.get(name);
      assert.ok(t, `batch has the model input '${name}'`);
      feeds[name] = toOrt(t);
    }
    const out = await session.run(feeds);
    return { inputs: session.inputNames, outputs: new Map(Object.entries(out).map(([k, v]) => [k, fromOrt(v)])) };
  } finally {
    await session.release();
  }
}

function maxAbsDiff(a: HostTensor, b: HostTensor): number {
  assert.deepEqual(a.shape, b.shape);
  let m = 0;
  for (let i = 0; i < a.data.length; i++) m = Math.max(m, Math.abs(Number(a.data[i]) - Number(b.data[i])));
  return m;
}

const CASES: Array<{ task: ScoringTask; head: HeadName; extra: string[]; rowsPerExample?: number }> = [
  { task: 'itm', head: 'pretrain', extra: [] },
  { task: 'vqa', head: 'vqa', extra: [] },
  { task: 've', head: 've', extra: [] },
  { task: 'nlvr2_paired', head: 'nlvr2_paired', extra: ['img_type_ids'], rowsPerExample: 2 },
  { task: 'nlvr2_paired_attn', head: 'nlvr2_paired_attn', extra: ['img_type_ids'], rowsPerExample: 2 },
  { task: 'nlvr2_triplet', head: 'nlvr2_triplet', extra: ['img_type_ids'] },
  { task: 're_mlp1', head: 're_mlp1', extra: ['obj_masks'] },
  { task: 're_mlp2', head: 're_mlp2', extra: ['obj_masks'] },
  { task: 'retrieval', head: 'retrieval', extra: [] },
  { task: 'vcr', head: 'vcr', extra: ['txt_type_ids'], rowsPerExample: 2 },
];

test('every task exports to a standalone file that matches the library at several batch and sequence sizes', async () => {
  const root = tempDir('export-tasks-');
  for (const c of CASES) {
    const cfg = c.task === 'vcr' ? { ...TINY, type_vocab_size: 4 } : TINY;
    const dir = writeModelFolder(path.join(root, c.task), cfg, randomParams(cfg, c.head, { numAnswers: 5 }));
    const out = path.join(root, `${c.task}.onnx`);
    const r = await exportOnnx({ checkpoint: dir, out, task: c.task, verify: true });
    assert.equal(r.task, c.task);
    assert.ok(r.verification?.ok, `${c.task}: built-in verification passes (${JSON.stringify(r.verification)})`);
    assert.equal(r.verification!.cases.length, 2);
    assert.notDeepEqual(r.verification!.cases[0].dims, r.verification!.cases[1].dims);

    // Independently: a fresh session on the file, fed only official batch fields, against the library API.
    const model = Uniter.fromPretrained(dir, { task: c.task, threads: 1 });
    const shapes = [
      { examples: 1, words: [12, 12] as [number, number], regions: [1, 1] as [number, number] },
      { examples: 4, words: [1, 9] as [number, number], regions: [3, 11] as [number, number] },
    ];
    const seen = new Set<string>();
    for (const [i, shape] of shapes.entries()) {
      const batch = sampleBatch(c.task, cfg, shape, 100 + i);
      const { inputs, outputs } = await runFile(out, batch);
      assert.deepEqual([...inputs].sort(), [...OFFICIAL, ...c.extra].sort(), `${c.task}: inputs are the official batch fields`);
      const name = SCORE_OUTPUT[c.task];
      assert.deepEqual([...outputs.keys()], [name]);
      const want = (await model.forward(batch)).get(name)!;
      const got = outputs.get(name)!;
      assert.ok(maxAbsDiff(got, want) <= 1e-5, `${c.task} ${name}: max |diff| ${maxAbsDiff(got, want)}`);
      assert.equal(got.shape[0], shape.examples * (c.rowsPerExample ?? 1) / (c.task.startsWith('nlvr2_paired') ? 2 : 1));
      seen.add(batch.get('attn_masks')!.shape.join('x'));
    }
    assert.equal(seen.size, 2, 'the two batches differ in size');

    const side = JSON.parse(fs.readFileSync(`${out}.json`, 'utf8'));
    assert.equal(side.task, c.task);
    assert.deepEqual(side.inputs.map((x: { name: string }) => x.name), r.inputs.map((x) => x.name));
    assert.deepEqual(side.config, cfg);
    for (const io of [...side.inputs, ...side.outputs]) {
      assert.ok(io.description.length > 0);
      for (const d of io.shape) if (typeof d === 'string') assert.ok(side.dims[d], `dim ${d} is described`);
    }
    assert.equal(side.verification.ok, true);
  }
  // Nothing but the outputs (no temporary files) is left next to them.
  const leftovers = fs.readdirSync(root).filter((f) => f.startsWith('.'));
  assert.deepEqual(leftovers, []);
});

test('exported heads reproduce the official PyTorch numbers on the golden batches', async () => {
  const root = tempDir('export-golden-');
  const cases: Array<{ head: string; expected: string; batch: string; task: TaskRequest; output: string }> = [
    { head: 'vqa/head.safetensors', expected: 'vqa/expected.safetensors', batch: 'vqa/batch.safetensors', task: 'vqa', output: 'answer_scores' },
    { head: 've/head.safetensors', expected: 've/expected.safetensors', batch: 've/batch.safetensors', task: 've', output: 'answer_scores' },
    { head: 'nlvr2/head_paired.safetensors', expected: 'nlvr2/expected_paired.safetensors', batch: 'nlvr2/batch_paired.safetensors', task: 'nlvr2', output: 'answer_scores' },
    { head: 'nlvr2/head_paired_attn.safetensors', expected: 'nlvr2/expected_paired_attn.safetensors', batch: 'nlvr2/batch_paired.safetensors', task: 'nlvr2', output: 'answer_scores' },
    { head: 'nlvr2/head_triplet.safetensors', expected: 'nlvr2/expected_triplet.safetensors', batch: 'nlvr2/batch_triplet.safetensors', task: 'nlvr2', output: 'answer_scores' },
    { head: 're/head_mlp1.safetensors', expected: 're/expected_mlp1.safetensors', batch: 're/batch.safetensors', task: 'refexp', output: 'scores' },
    { head: 're/head_mlp2.safetensors', expected: 're/expected_mlp2.safetensors', batch: 're/batch.safetensors', task: 'refexp', output: 'scores' },
    { head: 'itm_retrieval/head.safetensors', expected: 'itm_retrieval/expected.safetensors', batch: 'itm_retrieval/batch.safetensors', task: 'retrieval', output: 'rank_scores' },
  ];
  for (const [i, c] of cases.entries()) {
    const dir = goldenModelFolder(path.join(root, `m${i}`), c.head);
    const out = path.join(root, `m${i}.onnx`);
    await exportOnnx({ checkpoint: dir, out, task: c.task });
    const batch = readSafetensors(path.join(GOLDEN, 'downstream', c.batch)).tensors;
    const expected = readSafetensors(path.join(GOLDEN, 'downstream', c.expected)).tensors.get(c.output)!;
    const got = (await runFile(out, batch)).outputs.get(c.output)!;
    const scale = Math.max(1, ...Array.from(expected.data as Float32Array, (v) => (Math.abs(v) < 1e3 ? Math.abs(v) : 0)));
    assert.ok(maxAbsDiff(got, expected) <= 1e-4 * scale, `${c.head}: max |diff| ${maxAbsDiff(got, expected)} vs official`);
  }
});

test('external data, opset 21 and pooled_output load in a fresh session and give the same numbers', async () => {
  const root = tempDir('export-external-');
  const dir = writeModelFolder(path.join(root, 'm'), TINY, randomParams(TINY, 'pretrain'));
  const inline = await exportOnnx({ checkpoint: dir, out: path.join(root, 'inline.onnx'), task: 'itm', pooledOutput: true });
  const ext = await exportOnnx({ checkpoint: dir, out: path.join(root, 'ext.onnx'), task: 'itm', pooledOutput: true, externalData: true, opset: 21 });
  assert.equal(inline.dataFile, null);
  assert.equal(ext.dataFile, path.join(root, 'ext.onnx.data'));
  assert.ok(fs.statSync(ext.file).size < 64 * 1024, 'weights are not inside the model file');
  assert.ok(fs.statSync(ext.dataFile!).size >= ext.written.weightBytes);
  assert.equal(ext.written.opset, 21);
  const side = JSON.parse(fs.readFileSync(ext.sidecarFile, 'utf8'));
  assert.equal(side.external_data, 'ext.onnx.data');
  assert.equal(side.opset, 21);
  assert.deepEqual(side.outputs.map((o: { name: string; shape: unknown[] }) => [o.name, o.shape]), [
    ['itm_scores', ['B', 2]],
    ['pooled_output', ['B', TINY.hidden_size]],
  ]);
  const batch = sampleBatch('itm', TINY, { examples: 3, words: [2, 8], regions: [1, 6] }, 5);
  const a = await runFile(inline.file, batch);
  const b = await runFile(ext.file, batch);
  for (const name of ['itm_scores', 'pooled_output']) assert.equal(maxAbsDiff(a.outputs.get(name)!, b.outputs.get(name)!), 0, name);

  // Over the inline limit: 'auto' moves the weights out, false refuses with the reason.
  const auto = await exportOnnx({ checkpoint: dir, out: path.join(root, 'auto.onnx'), task: 'itm', inlineLimitBytes: 1 << 20 });
  assert.equal(auto.dataFile, path.join(root, 'auto.onnx.data'));
  await assert.rejects(exportOnnx({ checkpoint: dir, out: path.join(root, 'no.onnx'), task: 'itm', externalData: false, inlineLimitBytes: 1 << 20 }), /too much for one ONNX file.*external data/);
  assert.ok(!fs.existsSync(path.join(root, 'no.onnx')));
});

test('bad requests name what is wrong', async () => {
  const root = tempDir('export-bad-');
  const re = writeModelFolder(path.join(root, 're'), TINY, randomParams(TINY, 're_mlp1'));
  const vqa = writeModelFolder(path.join(root, 'vqa'), TINY, randomParams(TINY, 'vqa', { numAnswers: 5 }));
  const out = path.join(root, 'x.onnx');
  await assert.rejects(exportOnnx({ checkpoint: path.join(root, 'nope'), out }), /model folder '.*nope' does not exist/);
  await assert.rejects(exportOnnx({ checkpoint: vqa, out, opset: 12 }), /opset 12 is not supported: the graph needs opset >= 18/);
  await assert.rejects(exportOnnx({ checkpoint: re, out, pooledOutput: true }), /task 're_mlp1' has no pooled_output/);
  await assert.rejects(exportOnnx({ checkpoint: vqa, out, task: 'nlvr2' }), /model\.safetensors: holds no NLVR2 head \(nlvr2_output\.weight\); heads found: vqa/);
  await assert.rejects(exportOnnx({ checkpoint: vqa, out, task: 've' }), /task 've' needs a 3-class head, but vqa_output\.3\.weight has 5 rows/);
  assert.ok(!fs.existsSync(out));
});
