/** Issue 16: evaluate uses the data the run recorded and says so; progress on evaluate; model folders carry a card. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { runEvaluate } from '../../src/cli/evaluate.js';
import { runFinetune } from '../../src/cli/finetune.js';
import { makeSandbox, silent, type Sandbox } from '../finetune/fixtures.js';

const BIN = fileURLToPath(new URL('../../../bin/uniter.js', import.meta.url));
let box: Sandbox;
let out: string;
before(async () => {
  box = makeSandbox('uniter-eval-rec-');
  out = path.join(box.dir, 'run-vqa');
  const cfg = box.config('vqa', { num_train_steps: 2, valid_steps: 2, warmup_steps: 1, train_batch_size: 768, val_batch_size: 2048, model_config: { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 } });
  await runFinetune(['vqa', '--config', cfg, '--data', box.worldDir, '--out', out, '--quiet'], silent);
});
after(() => box.cleanup());

test('evaluate without --data scores the data the fine-tuning run recorded, and says so', async () => {
  const lines: string[] = [];
  const r = await runEvaluate(['vqa', '--checkpoint', out, '--out', path.join(box.dir, 'eval')], (m) => lines.push(m));
  assert.equal(r.evaluation.examples?.val, box.world.textDb('vqa_world_val').ids().length);
  assert.match(r.dataFrom, /as recorded by the fine-tuning run/);
  assert.ok(lines.some((l) => l.includes(`data: `) && l.includes('as recorded by the fine-tuning run')), lines.join('\n'));
  // --data still wins, and says so
  const r2 = await runEvaluate(['vqa', '--checkpoint', out, '--data', box.worldDir, '--out', path.join(box.dir, 'eval2'), '--quiet'], silent);
  assert.equal(r2.dataFrom, '--data');
  assert.deepEqual(r2.evaluation.metrics, r.evaluation.metrics);
});

test('uniter evaluate shows progress on stderr and --json prints exactly one line', async () => {
  const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, 'evaluate', 'vqa', '--checkpoint', out, '--out', path.join(box.dir, 'eval3'), '--json']);
  const n = box.world.textDb('vqa_world_val').ids().length;
  assert.match(stderr, new RegExp(`examples +${n}/${n} 100\\.0%`));
  assert.equal(stdout.trim().split('\n').length, 1);
  const line = JSON.parse(stdout) as { examples: { val: number }; dataFrom: string };
  assert.equal(line.examples.val, n);
});

test('a fine-tuned model folder carries model_type, id2label, vocab.txt and a model card with its metrics', () => {
  const best = path.join(out, 'best');
  assert.deepEqual(fs.readdirSync(best).sort(), ['README.md', 'config.json', 'model.safetensors', 'vocab.txt']);
  const cfg = JSON.parse(fs.readFileSync(path.join(best, 'config.json'), 'utf8')) as Record<string, unknown>;
  assert.equal(cfg.model_type, 'uniter');
  assert.ok(cfg.id2label && Object.keys(cfg.id2label).length > 0);
  const card = fs.readFileSync(path.join(best, 'README.md'), 'utf8');
  assert.match(card, /fine-tuned for vqa/);
  assert.match(card, /Trained by: uniter finetune vqa/);
  assert.match(card, /\| val \| score \|/);
  assert.match(card, /Data: world folder|Data: .*world/);
});
