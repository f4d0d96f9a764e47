/** Issue 16: --json is one line everywhere; meta.json carries toker; progress on data build; check-golden without --out; the bare-weights message. */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { command as worldCommand } from '../../src/cli/world.js';
import { serializeTorchZip, stateDictFromHost } from '../../src/interop/torch-writer.js';
import { readSafetensors } from '../../src/engine/safetensors.js';
import { uniterProcess } from '../helpers/cli.js';
import { runCommand } from '../helpers/cli.js';

const NPZ_DIR = fileURLToPath(new URL('../../../test/fixtures/data/official/npz/coco_tiny/', import.meta.url));
const GOLDEN = fileURLToPath(new URL('../../../test/fixtures/golden/tiny/', import.meta.url));
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-cmds-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));

const uniter = uniterProcess;

test('data build: meta.json has the official fields (toker = the tokenizer name); --json is one line; progress on stderr', async () => {
  const jsonl = path.join(TMP, 'caps.jsonl');
  fs.writeFileSync(jsonl, ['a', 'b', 'c'].map((k, i) => JSON.stringify({ id: `ex${i}`, text: `a caption about ${k}`, image: `coco_tiny_${k}.npz` })).join('\n') + '\n');
  const r = await uniter('data', 'build', '--jsonl', jsonl, '--images', NPZ_DIR, '--out', path.join(TMP, 'stores'), '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim().split('\n').length, 1);
  const report = JSON.parse(r.stdout) as { txtDb: string; texts: number };
  assert.equal(report.texts, 3);
  assert.match(r.stderr, /checking images\.\.\.\nimages 1\/3/);
  assert.match(r.stderr, /writing img_db\.\.\.\nimages 1\/3/);
  const meta = JSON.parse(fs.readFileSync(path.join(report.txtDb, 'meta.json'), 'utf8')) as Record<string, unknown>;
  assert.equal(meta.toker, 'bert-base-cased');
  assert.equal(meta.tokenizer, 'bert-base-cased');
  assert.equal(meta.bert, 'bert-base-cased');
  assert.deepEqual([meta.UNK, meta.CLS, meta.SEP, meta.MASK], [100, 101, 102, 103]);
  assert.deepEqual(meta.v_range, [106, 28996]);
  assert.equal(meta.annotation, jsonl);
  const i = await uniter('data', 'inspect', path.join(TMP, 'stores'), '--json');
  assert.equal(i.code, 0, i.stderr);
  assert.equal(i.stdout.trim().split('\n').length, 1);
  assert.equal((JSON.parse(i.stdout) as { problems: unknown[] }).problems.length, 0);
});

test('world --json prints exactly one line', async () => {
  const r = await runCommand(worldCommand, ['--out', path.join(TMP, 'w'), '--preset', 'tiny', '--images', '12', '--json', '--quiet']);
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out.split('\n').length, 1);
  assert.equal((JSON.parse(r.out) as { seed: number }).seed !== undefined, true);
});

test('check-golden runs without --out', async () => {
  const r = await uniter('check-golden', path.join(GOLDEN), '--json');
  assert.equal(r.code, 0, r.stderr);
  const line = JSON.parse(r.stdout) as { failures: number; out: unknown };
  assert.equal(line.failures, 0);
  assert.equal(line.out, null);
});

test('finetune --checkpoint on bare weights points to uniter convert', async () => {
  const g = readSafetensors(path.join(GOLDEN, 'weights.safetensors'));
  const bare = path.join(TMP, 'bare', 'weights.pt');
  fs.mkdirSync(path.dirname(bare));
  fs.writeFileSync(bare, serializeTorchZip(stateDictFromHost(g.tensors)));
  const r = await uniter('finetune', 'vqa', '--checkpoint', bare, '--out', path.join(TMP, 'ft'), '--quiet');
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`^uniter finetune: .*Convert the file into a model folder first: 'uniter convert ${bare.replace(/[.]/g, '\\.')} DIR'`, 'm'));
});
