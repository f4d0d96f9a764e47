/**
 * Issue 16: convert and export-onnx show progress like the other long commands (stderr: each
 * phase's name, then lines with counts, rate and ETA when stderr is not a terminal); the library
 * hooks report big files chunk by chunk, so the display moves during the long part.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PhasedProgress } from '../../src/cli/common.js';
import { readSafetensors, writeSafetensors } from '../../src/engine/safetensors.js';
import { serializeTorchZip, stateDictFromHost } from '../../src/interop/torch-writer.js';
import { IO_CHUNK } from '../../src/util/progress.js';
import { TINY, randomParams, writeModelFolder } from '../export/model-folders.js';
import { textSink, uniterProcessEnv } from '../helpers/cli.js';

const GOLDEN = fileURLToPath(new URL('../../../test/fixtures/golden/tiny/', import.meta.url));
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-progress-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));

/** A line for every update (the default is one every 10 s), so a short test run shows them. */
const EVERY_UPDATE = { UNITER_PROGRESS_INTERVAL: '0' };

/** The count lines under "<phase>...", checked: counts rise to the total, each line with its rate and ETA. */
function phaseLines(stderr: string, phase: string, minLines: number): string[] {
  const lines = stderr.split('\n');
  const start = lines.indexOf(`${phase}...`);
  assert.ok(start >= 0, `no '${phase}...' line in:\n${stderr}`);
  const counts: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (!/^(KiB|MiB|batches) +\d+\/\d+ /.test(line)) break;
    counts.push(line);
  }
  assert.ok(counts.length >= minLines, `${phase}: ${counts.length} count lines, expected >= ${minLines}:\n${counts.join('\n')}`);
  const parsed = counts.map((l) => /^\S+ +(\d+)\/(\d+) /.exec(l)!.slice(1).map(Number));
  for (let i = 1; i < parsed.length; i++) assert.ok(parsed[i][0] > parsed[i - 1][0], `${phase}: counts rise:\n${counts.join('\n')}`);
  const [done, total] = parsed[parsed.length - 1];
  assert.equal(done, total, `${phase}: ends at its total`);
  assert.match(counts[counts.length - 1], /100\.0% \| [\d.]+[kM]? (KiB|MiB|batches)\/s \| ETA 0s$/, phase);
  return counts;
}

test('convert: reading, decoding, writing and loading back each show counts, rate and ETA on stderr; --json stays one line; --quiet shows nothing', async () => {
  const pt = path.join(TMP, 'golden.pt');
  fs.writeFileSync(pt, serializeTorchZip(stateDictFromHost(readSafetensors(path.join(GOLDEN, 'weights.safetensors')).tensors)));
  const folder = path.join(TMP, 'model');
  const r = await uniterProcessEnv(EVERY_UPDATE, 'convert', pt, folder, '--config', path.join(GOLDEN, 'config.json'), '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim().split('\n').length, 1);
  assert.equal((JSON.parse(r.stdout) as { kind: string }).kind, 'model');
  phaseLines(r.stderr, 'reading golden.pt', 1);
  assert.match(r.stderr, /^unpickling golden\.pt\.\.\.\ndecoding tensors\.\.\.$/m, 'the archive step is announced');
  phaseLines(r.stderr, 'decoding tensors', 5); // a line per tensor
  phaseLines(r.stderr, 'writing model.safetensors', 5);
  phaseLines(r.stderr, 'loading back model.safetensors', 1);
  assert.match(r.stderr, /^done in \d+\.\d s$/m);

  const back = path.join(TMP, 'back.pt');
  const t = await uniterProcessEnv(EVERY_UPDATE, 'convert', '--to-torch', folder, back, '--json');
  assert.equal(t.code, 0, t.stderr);
  assert.equal(t.stdout.trim().split('\n').length, 1);
  phaseLines(t.stderr, 'reading model.safetensors', 1);
  phaseLines(t.stderr, 'decoding tensors', 5);
  phaseLines(t.stderr, 'encoding tensors', 5);
  phaseLines(t.stderr, 'packing the zip archive', 5); // a line per zip entry: the CRC-32 pass
  phaseLines(t.stderr, 'writing back.pt', 1);

  const q = await uniterProcessEnv(EVERY_UPDATE, 'convert', pt, path.join(TMP, 'quiet'), '--config', path.join(GOLDEN, 'config.json'), '--quiet');
  assert.equal(q.code, 0, q.stderr);
  assert.equal(q.stderr, '');
  assert.equal(q.stdout, '');
});

test('export-onnx: reading the weights, writing the file and the verification batches show progress; --json stays one line', async () => {
  const dir = writeModelFolder(path.join(TMP, 'itm'), TINY, randomParams(TINY, 'pretrain'));
  const out = path.join(TMP, 'itm.onnx');
  const r = await uniterProcessEnv(EVERY_UPDATE, 'export-onnx', '--checkpoint', dir, out, '--task', 'itm', '--verify', '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim().split('\n').length, 1);
  assert.equal((JSON.parse(r.stdout) as { verification: { ok: boolean } }).verification.ok, true);
  phaseLines(r.stderr, 'reading model.safetensors', 1);
  phaseLines(r.stderr, 'decoding tensors', 5);
  phaseLines(r.stderr, 'writing itm.onnx', 5); // a line per weight tensor
  assert.deepEqual(
    phaseLines(r.stderr, 'verifying in a fresh ONNX Runtime session', 2).map((l) => l.split(' |')[0]),
    ['batches 1/2  50.0%', 'batches 2/2 100.0%'],
  );
});

test('a bad UNITER_PROGRESS_INTERVAL is refused before any work', async () => {
  const out = path.join(TMP, 'never');
  const r = await uniterProcessEnv({ UNITER_PROGRESS_INTERVAL: 'soon' }, 'convert', path.join(TMP, 'golden.pt'), out, '--config', path.join(GOLDEN, 'config.json'));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^uniter convert: UNITER_PROGRESS_INTERVAL must be a number of seconds >= 0, got 'soon'$/m);
  assert.ok(!fs.existsSync(out));
});

test('big files are read and written in chunks of IO_CHUNK bytes, each reported as it is done', () => {
  const n = (5 * IO_CHUNK) / 2 / 4; // 2.5 chunks of float32
  const data = new Float32Array(n).map((_, i) => i % 97);
  const file = path.join(TMP, 'big.safetensors');
  const calls: Array<[string, number, number, string?]> = [];
  writeSafetensors(file, { w: { dtype: 'float32', shape: [n], data } }, undefined, (...c) => void calls.push(c));
  const size = fs.statSync(file).size;
  const check = (phase: string, minCalls: number) => {
    const mine = calls.filter((c) => c[1] > 0);
    assert.ok(mine.length >= minCalls, `${phase}: ${mine.length} progress calls`);
    assert.ok(mine.every((c, i) => c[0] === phase && c[2] === size && c[3] === 'bytes' && (i === 0 || c[1] > mine[i - 1][1])), `${phase}: ${JSON.stringify(mine)}`);
    assert.ok(mine.slice(0, -1).every((c) => c[1] < size), 'reported before the end');
    assert.equal(mine[mine.length - 1][1], size);
    calls.length = 0;
  };
  check('writing big.safetensors', 3);
  const back = readSafetensors(file, (...c) => void calls.push(c));
  const decoding = calls.filter((c) => c[0] === 'decoding tensors');
  calls.splice(0, calls.length, ...calls.filter((c) => c[0] !== 'decoding tensors'));
  check('reading big.safetensors', 3);
  assert.deepEqual(decoding.map((c) => c[1]), [0, n * 4], 'then the tensor decoded');
  assert.deepEqual(back.tensors.get('w')!.data, data);
});

test('PhasedProgress: a phase line when a phase starts, bytes shown in MiB (KiB under 1 MiB), item counts as given', () => {
  const sink = textSink();
  const p = new PhasedProgress({ unit: 'bytes', stream: sink, lineIntervalMs: 0 });
  p.update('writing a', 0, 3 * 2 ** 20);
  assert.equal(sink.text, 'writing a...\n', 'announced before any count');
  p.update('writing a', 2 ** 20, 3 * 2 ** 20);
  p.update('writing a', 3 * 2 ** 20, 3 * 2 ** 20);
  p.update('writing b', 512, 1024);
  p.update('checking', 1, 2, 'batches');
  p.finish();
  const lines = sink.text.trim().split('\n');
  assert.equal(lines[0], 'writing a...');
  assert.match(lines[1], /^MiB 1\/3  33\.3% \| /);
  assert.match(lines[2], /^MiB 3\/3 100\.0% \| /);
  assert.equal(lines[3], 'writing b...');
  assert.match(lines[4], /^KiB 1\/1 100\.0%/);
  assert.ok(lines.includes('checking...'));
  assert.match(lines[lines.length - 1], /^batches 1\/2  50\.0%/);
});
