import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { checkDetectorGolden, isDetectorFixture } from '../../src/detector/golden.js';
import { readSafetensors, writeSafetensors } from '../../src/engine/safetensors.js';

const FIXTURE = 'test/fixtures/detector/frcnn-tiny';

test('every stage of the reference detector matches on frcnn-tiny (both images)', async () => {
  assert.ok(isDetectorFixture(FIXTURE));
  assert.equal(isDetectorFixture('test/fixtures/golden/tiny'), false);
  const report = await checkDetectorGolden(FIXTURE, { threads: 1 });
  const bad = report.rows.filter((r) => !r.ok);
  assert.deepEqual(bad.map((r) => `${r.name}: ${r.note ?? r.maxAbs}`), []);
  const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8'));
  const required = Object.entries(manifest.tensors as Record<string, { required?: boolean }>).filter(([, r]) => r.required).map(([k]) => k);
  assert.ok(required.length > 40);
  for (const name of required) assert.ok(report.rows.some((r) => r.name === name && r.ok), `required ${name} compared`);
  // Every stage of the README, not just the required ones, is produced and compared.
  for (const stage of ['backbone/stem', 'backbone/res3', 'rpn/anchors', 'rpn/proposals_all', 'roi/res5', 'roi/attr_hidden', 'roi/boxes', 'det/boxes_unclipped', 'det/nms_thresholds_tried']) {
    assert.ok(report.rows.some((r) => r.name === `img0/${stage}` && r.ok), stage);
  }
  // img0 needed the NMS fallback (0.3 kept too few), img1 did not.
  assert.deepEqual(Array.from(report.computed.get('img0/det/nms_thresholds_tried')!.data as Float32Array), [Math.fround(0.3), Math.fround(0.6)]);
  assert.equal(report.computed.get('img1/det/nms_thresholds_tried')!.data.length, 1);
});

function copyFixture(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'frcnn-golden-'));
  fs.cpSync(FIXTURE, dir, { recursive: true });
  return dir;
}

test('perturbed reference outputs fail on the rows they change', async () => {
  const dir = copyFixture();
  const file = path.join(dir, 'outputs.safetensors');
  const out = readSafetensors(file);
  const feats = out.tensors.get('img0/roi/features')!;
  (feats.data as Float32Array)[5 * feats.shape[1] + 3] += 0.01;
  const keep = out.tensors.get('img1/det/keep')!;
  const k = keep.data as BigInt64Array;
  [k[0], k[k.length - 1]] = [k[k.length - 1], k[0]];
  const props = out.tensors.get('img1/rpn/proposals')!;
  (props.data as Float32Array)[10 * 4] += 3;
  writeSafetensors(file, out.tensors, out.metadata);
  const report = await checkDetectorGolden(dir, { threads: 1 });
  const failed = new Set(report.rows.filter((r) => !r.ok).map((r) => r.name));
  assert.ok(failed.has('img0/roi/features'), 'changed feature');
  assert.ok(failed.has('img1/det/keep'), 'reordered selection');
  assert.ok(failed.has('img1/rpn/proposals'), 'moved proposal');
  assert.ok(!failed.has('img0/rpn/proposals'), 'untouched tensors still pass');
});

test('uniter check-golden accepts a detector fixture and writes every stage under its fixture name', () => {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'frcnn-cli-')), 'out.safetensors');
  const stdout = execFileSync(process.execPath, ['bin/uniter.js', 'check-golden', FIXTURE, '--out', out, '--json', '--threads', '1'], { encoding: 'utf8' });
  const summary = JSON.parse(stdout.trim().split('\n').pop()!);
  assert.equal(summary.failures, 0);
  const written = readSafetensors(out).tensors;
  const expected = readSafetensors(path.join(FIXTURE, 'outputs.safetensors')).tensors;
  for (const name of expected.keys()) {
    if (name.includes('/diag/')) continue;
    assert.ok(written.has(name), `wrote ${name}`);
  }
});

test('a fixture whose weights miss a tensor or hold NaN is refused, naming the tensor', async () => {
  const dir = copyFixture();
  const file = path.join(dir, 'weights.safetensors');
  const w = readSafetensors(file);
  const conv = w.tensors.get('roi_heads.res5.1.conv2.weight')!;
  (conv.data as Float32Array)[7] = NaN;
  writeSafetensors(file, w.tensors, w.metadata);
  await assert.rejects(checkDetectorGolden(dir), /roi_heads\.res5\.1\.conv2\.weight' has a non-finite value \(NaN\)/);
  w.tensors.delete('proposal_generator.rpn_head.conv.bias');
  writeSafetensors(file, w.tensors, w.metadata);
  await assert.rejects(checkDetectorGolden(dir), /missing.*proposal_generator\.rpn_head\.conv\.bias/);
});

test('a fixture without diag/fragile_* lists: near ties are found from its tie_eps and exempt only their rows', async () => {
  const dir = copyFixture();
  const file = path.join(dir, 'outputs.safetensors');
  const out = readSafetensors(file);
  for (const name of [...out.tensors.keys()]) if (name.includes('/diag/')) out.tensors.delete(name);
  const cls = out.tensors.get('img0/det/max_classes')!;
  (cls.data as BigInt64Array)[3] += 1n;
  writeSafetensors(file, out.tensors, out.metadata);
  const manifestFile = path.join(dir, 'manifest.json');
  const manifest = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));
  for (const name of Object.keys(manifest.tensors)) if (name.includes('/diag/')) delete manifest.tensors[name];
  fs.writeFileSync(manifestFile, JSON.stringify(manifest));
  // The fixture's own eps: no tie is that close, so the changed arg-max fails.
  let report = await checkDetectorGolden(dir, { threads: 1 });
  assert.deepEqual(report.rows.filter((r) => !r.ok).map((r) => r.name), ['img0/det/max_classes']);
  // An eps wider than every gap makes every arg-max fragile: the row is exempt, nothing fails.
  manifest.tie_eps.argmax_logit = 1e3;
  fs.writeFileSync(manifestFile, JSON.stringify(manifest));
  report = await checkDetectorGolden(dir, { threads: 1 });
  assert.equal(report.failures, 0);
});
