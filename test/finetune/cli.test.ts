/**
 * End to end through the command functions: a shortened fine-tune of every task on the tiny
 * world (tiny model, a few steps), then `uniter evaluate` of the best model, with the official
 * results file formats checked.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runEvaluate } from '../../src/cli/evaluate.js';
import { runFinetune } from '../../src/cli/finetune.js';
import { pipeline } from '../../src/api/pipeline.js';
import { VE_LABELS } from '../../src/data/world/concepts.js';
import { makeSandbox, readJsonl, silent, type Sandbox } from './fixtures.js';

let box: Sandbox;
before(() => {
  box = makeSandbox('uniter-ft-cli-');
});
after(() => box.cleanup());

const SHORT = { num_train_steps: 3, valid_steps: 3, warmup_steps: 1, train_batch_size: 768, val_batch_size: 2048 };

async function finetuneAndEvaluate(task: string, fields: Record<string, unknown>, name = task) {
  const out = path.join(box.dir, `run-${name}`);
  const cfg = box.config(name, { ...SHORT, ...fields });
  const ft = await runFinetune([task, '--config', cfg, '--data', box.worldDir, '--out', out, '--quiet'], silent);
  assert.equal(ft.result.steps, 3);
  for (const f of ['best/config.json', 'best/model.safetensors', 'best.json', 'log.jsonl', 'report.html', 'ckpt/latest']) assert.ok(fs.existsSync(path.join(out, f)), `${name}: ${f} written`);
  const train = readJsonl(path.join(out, 'log.jsonl')).filter((r) => r.type === 'train');
  assert.deepEqual(train.map((r) => r.step), [1, 2, 3]);
  for (const r of train) assert.ok(Number.isFinite(r.loss as number));
  const best = JSON.parse(fs.readFileSync(path.join(out, 'best.json'), 'utf8')) as { step: number; metrics: Record<string, Record<string, number>> };
  const evalOut = path.join(box.dir, `eval-${name}`);
  // The run's config gives evaluate the task options and the evaluation batch size.
  const ev = await runEvaluate([task, '--checkpoint', out, '--config', cfg, '--data', box.worldDir, '--out', evalOut, '--quiet'], silent);
  assert.equal(ev.checkpoint, path.join(out, 'best'));
  // The best model scored again by `uniter evaluate` gives the numbers recorded when it was chosen.
  assert.deepEqual(ev.evaluation.metrics.val, best.metrics.val);
  return { out, ft, ev, evalOut, best };
}

const idsOf = (db: string) => box.world.textDb(db).ids();

test('vqa: fine-tune, evaluate, results [{question_id, answer}] with answers from ans2label', async () => {
  const { out, ev, ft } = await finetuneAndEvaluate('vqa', {});
  assert.equal(ft.load, null, 'checkpoint null: fresh initialization');
  const m = ev.evaluation.metrics.val;
  assert.equal(ev.evaluation.examples?.val, idsOf('vqa_world_val').length);
  assert.ok(m.score >= 0 && m.score <= 1);
  const results = JSON.parse(fs.readFileSync(path.join(out, 'results', 'vqa_val_results_step_3.json'), 'utf8')) as Array<{ question_id: unknown; answer: unknown }>;
  assert.equal(results.length, idsOf('vqa_world_val').length);
  const answers = new Set(Object.keys(box.world.ans2label));
  for (const r of results) {
    assert.deepEqual(Object.keys(r).sort(), ['answer', 'question_id']);
    assert.ok(Number.isInteger(r.question_id));
    assert.ok(answers.has(r.answer as string), `answer ${String(r.answer)} is in ans2label`);
  }
  assert.deepEqual(new Set(results.map((r) => String(r.question_id))), new Set(idsOf('vqa_world_val')));
  // The best model names its answers (config.json id2label), so a pipeline answers in words.
  const id2label = JSON.parse(fs.readFileSync(path.join(out, 'best', 'config.json'), 'utf8')).id2label as Record<string, string>;
  for (const [a, l] of Object.entries(box.world.ans2label)) assert.equal(id2label[String(l)], a);
  const vqa = await pipeline('vqa', path.join(out, 'best'), { threads: 1, images: box.world.images });
  const q = box.world.textDb('vqa_world_val').get(idsOf('vqa_world_val')[0]);
  const { answers: top } = await vqa({ text: q.input_ids, image: q.img_fname as string });
  assert.equal(top.length, 5);
  for (const a of top) assert.ok(answers.has(a.label), `pipeline answer ${a.label} is in ans2label`);
  const test = await runEvaluate(['vqa', '--checkpoint', path.join(out, 'best'), '--data', box.worldDir, '--split', 'test', '--out', path.join(box.dir, 'eval-vqa-test'), '--quiet'], silent);
  assert.equal(test.evaluation.examples?.test, idsOf('vqa_world_test').length);
  assert.ok(test.evaluation.metrics.test.score >= 0);
  assert.ok(fs.existsSync(path.join(box.dir, 'eval-vqa-test', 'vqa_test_results_eval.json')));
});

test('ve: 3-way accuracy on val and test each validation, results map ids to label names', async () => {
  const { out, best } = await finetuneAndEvaluate('ve', {});
  assert.ok(best.metrics.test, 'test split scored during training');
  for (const split of ['val', 'test']) {
    const acc = best.metrics[split].acc;
    assert.ok(acc >= 0 && acc <= 1);
    const res = JSON.parse(fs.readFileSync(path.join(out, 'results', `ve_${split}_results_step_3.json`), 'utf8')) as Record<string, string>;
    assert.deepEqual(new Set(Object.keys(res)), new Set(idsOf(`ve_world_${split}`)));
    for (const v of Object.values(res)) assert.ok((VE_LABELS as readonly string[]).includes(v));
  }
});

test('nlvr2 (paired-attn by default): accuracy, consistency, CSV identifier,True|False', async () => {
  const { out, best, ev } = await finetuneAndEvaluate('nlvr2', {});
  for (const split of ['val', 'test']) {
    const m = best.metrics[split];
    assert.ok(m.acc >= 0 && m.acc <= 1 && m.consistency >= 0 && m.consistency <= 1);
    const lines = fs.readFileSync(path.join(out, 'results', `nlvr2_${split}_results_step_3.csv`), 'utf8').trimEnd().split('\n');
    assert.equal(lines.length, idsOf(`nlvr2_world_${split}`).length);
    for (const l of lines) assert.match(l, /^[a-z]+-\d+-\d+-\d+,(True|False)$/);
    assert.deepEqual(new Set(lines.map((l) => l.split(',')[0])), new Set(idsOf(`nlvr2_world_${split}`)));
  }
  const csv = fs.readFileSync(ev.files[0], 'utf8');
  assert.match(csv, /^val-\d+-\d+-\d+,(True|False)\n/);
  // The 3-row token-type table is part of the saved model.
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'best', 'config.json'), 'utf8')) as { type_vocab_size: number };
  assert.equal(cfg.type_vocab_size, 3);
});

test('nlvr2 paired and triplet variants train and are recognised by evaluate; use_img_type false types every region 1', async () => {
  for (const variant of ['paired', 'triplet']) {
    const { ev } = await finetuneAndEvaluate('nlvr2', { model: variant }, `nlvr2-${variant}`);
    assert.ok(ev.evaluation.metrics.val.acc >= 0);
  }
  const { ev } = await finetuneAndEvaluate('nlvr2', { model: 'paired', use_img_type: false }, 'nlvr2-no-img-type');
  assert.ok(ev.evaluation.metrics.val.acc >= 0);
});

test('vcr: Q->A, QA->R, Q->AR; final test-mode scoring writes the 20-column submission CSV', async () => {
  const { out, best, ev } = await finetuneAndEvaluate('vcr', { train_batch_size: 2048, val_batch_size: 4 });
  const m = best.metrics.val;
  assert.equal(ev.evaluation.examples?.val, idsOf('vcr_world_val').length);
  assert.ok(m.acc <= Math.min(m.qa_acc, m.qar_acc) + 1e-12, 'Q->AR needs both right');
  const csv = fs.readFileSync(path.join(out, 'results', 'vcr_val_results_step_3.csv'), 'utf8').trimEnd().split('\n');
  assert.equal(csv[0].split(',').length, 21);
  assert.equal(csv.length, 1 + idsOf('vcr_world_val').length);
  const scores = JSON.parse(fs.readFileSync(path.join(out, 'results', 'vcr_val_results_step_3.json'), 'utf8')) as Record<string, number[]>;
  for (const s of Object.values(scores)) assert.equal(s.length, 20);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'best', 'config.json'), 'utf8')) as { vocab_size: number; type_vocab_size: number };
  assert.equal(cfg.type_vocab_size, 4);
  assert.equal(cfg.vocab_size, 28996 + 81);
  assert.ok(ev.files.some((f) => f.endsWith('.csv')));
  const test = await runEvaluate(['vcr', '--checkpoint', out, '--data', box.worldDir, '--split', 'test', '--out', path.join(box.dir, 'eval-vcr-test'), '--batch-size', '4', '--quiet'], silent);
  assert.equal(test.evaluation.examples?.test, idsOf('vcr_world_test').length);
  assert.ok(test.evaluation.metrics.test.acc >= 0);
});
