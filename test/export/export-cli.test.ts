import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { command } from '../../src/cli/export-onnx.js';
import { runCommand } from '../helpers/cli.js';
import { TINY, randomParams, removeTempDirs, tempDir, writeModelFolder } from './model-folders.js';

after(removeTempDirs);

const BIN = fileURLToPath(new URL('../../../bin/uniter.js', import.meta.url));

const runCli = (args: string[]) => runCommand(command, args);

test('uniter export-onnx --verify writes a verified file from the command line', async () => {
  const root = tempDir('export-cli-');
  const dir = writeModelFolder(path.join(root, 'nlvr2'), TINY, randomParams(TINY, 'nlvr2_paired_attn'));
  const out = path.join(root, 'nlvr2.onnx');
  const { stdout } = await promisify(execFile)(process.execPath, [BIN, 'export-onnx', '--task', 'nlvr2', '--checkpoint', dir, out, '--verify']);
  assert.match(stdout, /task nlvr2_paired_attn, opset 18/);
  assert.match(stdout, /inputs: {2}input_ids int64 \[B, Lt\], .*img_type_ids int64 \[B, N\]/);
  assert.match(stdout, /outputs: answer_scores float32 \[S, 2\]/);
  assert.match(stdout, /verified: the ONNX file matches the library/);
  const session = await ort.InferenceSession.create(out);
  assert.deepEqual(session.outputNames, ['answer_scores']);
  await session.release();
  assert.ok(fs.existsSync(`${out}.json`));
});

test('flags choose head variants; usage and input problems exit 2 and 1 with a message', async () => {
  const root = tempDir('export-cli-flags-');
  const triplet = writeModelFolder(path.join(root, 't'), TINY, randomParams(TINY, 'nlvr2_triplet'));
  const out = path.join(root, 'x.onnx');
  const ok = await runCli(['--checkpoint', triplet, out, '--nlvr2-head', 'triplet']);
  assert.equal(ok.code, 0, ok.err);
  assert.match(ok.out, /task nlvr2_triplet/);

  const wrongHead = await runCli(['--checkpoint', triplet, out, '--nlvr2-head', 'paired-attn']);
  assert.equal(wrongHead.code, 1);
  assert.match(wrongHead.err, /model\.safetensors: holds no 'nlvr2_paired_attn' head; heads found: nlvr2_triplet \(nlvr2_output\.weight\)/);

  for (const [args, pattern] of [
    [[out], /--checkpoint DIR is required/],
    [['--checkpoint', triplet], /expected one output path/],
    [['--checkpoint', triplet, out, '--task', 'mlm'], /unknown task 'mlm'/],
    [['--checkpoint', triplet, out, '--re-mlp', '3'], /--re-mlp must be 1 or 2/],
    [['--checkpoint', triplet, out, '--task', 'vqa', '--nlvr2-head', 'paired'], /--nlvr2-head only applies to --task nlvr2/],
    [['--checkpoint', triplet, out, '--opset', 'x'], /--opset must be an integer/],
    [['--checkpoint', triplet, out, '--bogus'], /unknown option --bogus/],
  ] as Array<[string[], RegExp]>) {
    const r = await runCli(args);
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.err, pattern);
  }
  const missing = await runCli(['--checkpoint', path.join(root, 'none'), out]);
  assert.equal(missing.code, 1);
  assert.match(missing.err, /model folder '.*none' does not exist/);
});
