import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { checkGolden } from '../../src/model/golden.js';
import { readSafetensors, writeSafetensors } from '../../src/engine/safetensors.js';

const FIXTURE = 'test/fixtures/golden/tiny';

test('every task, head, gradient and the IPOT case match the official numbers', async () => {
  const report = await checkGolden(FIXTURE);
  const bad = report.rows.filter((r) => !r.ok);
  assert.deepEqual(bad.map((r) => `${r.name}: ${r.note ?? r.maxAbs}`), []);
  // Required tensors were all computed (nothing silently skipped except documented optionals).
  for (const name of ['mlm/loss', 'mlm/prediction_scores', 'itm/ot_T', 'itm/ot_dist', 'itm/loss', 'mrckl/loss_elementwise', 'mrc/hard_targets',
    'itm/grad.uniter.encoder.layer.0.attention.self.query.weight', 'downstream/vqa/loss', 'downstream/nlvr2/paired_attn/answer_scores',
    'downstream/re/mlp2/scores', 'downstream/itm_retrieval/loss', 'ipot/T', 'ipot/alt_distance']) {
    assert.ok(report.computed.has(name), `computed ${name}`);
  }
  // Tied weights: one gradient under the primary name holding both uses (lookup + decoder).
  const gw = report.computed.get('mlm/grad.uniter.embeddings.word_embeddings.weight')!;
  const h = gw.shape[1];
  const row0 = Array.from((gw.data as Float32Array).subarray(0, h));
  assert.ok(row0.some((v) => v !== 0), 'PAD row gets gradient through the tied decoder under MLM');
  const gi = report.computed.get('itm/grad.uniter.embeddings.word_embeddings.weight')!;
  assert.ok(Array.from((gi.data as Float32Array).subarray(0, h)).every((v) => v === 0), 'PAD row gets no lookup gradient');
  // Batches built by our own collate agree with the official collate output.
  assert.ok(report.rows.filter((r) => r.kind === 'batch').length > 50);
});

function copyFixture(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'golden-'));
  fs.cpSync(FIXTURE, dir, { recursive: true });
  return dir;
}

test('a fixture with a missing tensor names it', async () => {
  const dir = copyFixture();
  const w = readSafetensors(path.join(dir, 'weights.safetensors'));
  w.tensors.delete('uniter.img_embeddings.img_linear.weight');
  writeSafetensors(path.join(dir, 'weights.safetensors'), w.tensors, w.metadata);
  await assert.rejects(checkGolden(dir), /uniter\.img_embeddings\.img_linear\.weight/);
});

test('config/weights mismatch names the tensor and both shapes', async () => {
  const dir = copyFixture();
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  cfg.hidden_size = 48;
  cfg.num_attention_heads = 4;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  await assert.rejects(checkGolden(dir), /word_embeddings\.weight' has shape \[512,32\] but config\.json implies \[512,48\]/);
});

test('a wrong-shaped expected tensor is reported as a failure with both shapes', async () => {
  const dir = copyFixture();
  const f = readSafetensors(path.join(dir, 'mlm/expected.safetensors'));
  const lp = f.tensors.get('loss_per_token')!;
  f.tensors.set('loss_per_token', { dtype: 'float32', shape: [lp.shape[0] + 1], data: new Float32Array(lp.shape[0] + 1) });
  writeSafetensors(path.join(dir, 'mlm/expected.safetensors'), f.tensors, f.metadata);
  const report = await checkGolden(dir);
  const row = report.rows.find((r) => r.name === 'mlm/loss_per_token')!;
  assert.equal(row.ok, false);
  assert.match(row.note!, /shape \[\d+\] vs expected \[\d+\]/);
});

test('uniter check-golden CLI writes the computed tensors and exits 0', () => {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'cg-')), 'out.safetensors');
  const stdout = execFileSync(process.execPath, ['bin/uniter.js', 'check-golden', FIXTURE, '--out', out, '--json'], { encoding: 'utf8' });
  const res = JSON.parse(stdout.trim().split('\n').pop()!);
  assert.equal(res.failures, 0);
  const t = readSafetensors(out).tensors;
  assert.ok(t.has('mlm/sequence_output') && t.has('downstream/nlvr2/paired_attn/answer_scores') && t.has('ipot/T'));
});
