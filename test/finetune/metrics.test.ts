import { test } from 'node:test';
import assert from 'node:assert/strict';
import { accuracy, argmaxRows, bceWithLogitsSum, crossEntropySum, nlvr2GroupOf, nlvr2Metrics, vcrCorrect, vqaScores } from '../../src/finetune/metrics.js';
import { vcrMetrics, vcrSubmissionCsv } from '../../src/finetune/vcr.js';

test('VQA score is the soft target of the argmax answer', () => {
  // Two questions, four answers. Q0: annotators said "2" (3 of 10 -> 0.9) and "3" (1 -> 0.3);
  // the model picks answer 2 -> 0.9. Q1: target "yes" 1.0, the model picks answer 3 -> 0.
  const logits = [0.1, -1, 2.5, 0.3, /* q1 */ 0.2, 0.1, -3, 0.9];
  const targets = [0, 0, 0.9, 0.3, /* q1 */ 1, 0, 0, 0];
  assert.deepEqual(vqaScores(logits, targets, 4), [0.9, 0]);
  const mean = vqaScores(logits, targets, 4).reduce((a, b) => a + b) / 2;
  assert.equal(mean, 0.45);
});

test('argmax takes the first of equal maxima, as torch.max', () => {
  assert.deepEqual(argmaxRows([1, 3, 3, 0, -1, -1], 3), [1, 0]);
  assert.throws(() => argmaxRows([1, 2, 3], 2), /do not form rows of 2/);
});

test('accuracy', () => {
  assert.equal(accuracy([0, 1, 2, 1], [0, 1, 1, 1]), 0.75);
  assert.throws(() => accuracy([0], [0, 1]), /1 predictions but 2 labels/);
});

test('BCE and CE sums match their definitions', () => {
  const x = [2, -1, 0.5];
  const y = [1, 0, 0.3];
  const byHand = x.reduce((s, xi, i) => s - (y[i] * Math.log(1 / (1 + Math.exp(-xi))) + (1 - y[i]) * Math.log(1 - 1 / (1 + Math.exp(-xi)))), 0);
  assert.ok(Math.abs(bceWithLogitsSum(x, y) - byHand) < 1e-12);
  // Stable at large logits (no log(0)).
  assert.ok(Number.isFinite(bceWithLogitsSum([1000, -1000], [0, 1])));
  const logits = [1, 2, 0.5, 0, 0, 3];
  const ce = (row: number[], label: number) => -Math.log(Math.exp(row[label]) / row.reduce((s, v) => s + Math.exp(v), 0));
  assert.ok(Math.abs(crossEntropySum(logits, 3, [1, 0]) - (ce([1, 2, 0.5], 1) + ce([0, 0, 3], 0))) < 1e-12);
  assert.throws(() => crossEntropySum(logits, 3, [1, 3]), /row 1 label 3/);
});

test('NLVR2 consistency groups identifiers by set and sentence, across image pairs', () => {
  assert.equal(nlvr2GroupOf('dev-850-2-0'), 'dev-850--0');
  // Set 0 (sentence 0): 4 pairs, all right. Set 1: one of 3 pairs wrong. Set 1 sentence 1: 1 pair, right.
  const labels = new Map<string, boolean>([
    ['dev-0-0-0', true],
    ['dev-0-1-0', false],
    ['dev-0-2-0', true],
    ['dev-0-3-0', false],
    ['dev-1-0-0', true],
    ['dev-1-1-0', true],
    ['dev-1-2-0', false],
    ['dev-1-0-1', false],
  ]);
  const predictions = new Map(labels);
  predictions.set('dev-1-1-0', false);
  const m = nlvr2Metrics(predictions, labels);
  assert.equal(m.acc, 7 / 8);
  assert.equal(m.consistency, 2 / 3);
  assert.throws(() => nlvr2Metrics(new Map(), labels), /no prediction for identifier 'dev-0-0-0'/);
  assert.throws(() => nlvr2GroupOf('nodashes'), /expected 'split-set-pair-sentence'/);
});

test('VCR: Q->AR counts a question only when both answer and rationale are right', () => {
  const c = vcrCorrect([0, 1, 2, 3], [0, 1, 0, 3], [1, 1, 2, 0], [1, 0, 2, 0]);
  assert.deepEqual(c, { qa: 3, qar: 3, joint: 2 });
});

test('VCR test-mode scores: QA->R reads the rationales conditioned on the GT answer', () => {
  // One question, GT answer 2, GT rationale 1. Test mode: 4 answer scores + 4 x 4 rationale scores.
  const scores = [0, 0, 5, 0];
  for (let a = 0; a < 4; a++) for (let r = 0; r < 4; r++) scores.push(a === 2 ? (r === 1 ? 9 : 0) : r === 3 ? 9 : 0);
  const m = vcrMetrics({ scores: new Map([['val-7-0', scores]]), qaTargets: new Map([['val-7-0', 2]]), qarTargets: new Map([['val-7-0', 1]]) }, 'test');
  assert.ok(m);
  assert.equal(m.qa_acc, 1);
  assert.equal(m.qar_acc, 1);
  assert.equal(m.acc, 1);
  // Val mode reads rows 4..7 (already conditioned on the GT answer): here they favour rationale 3.
  const v = vcrMetrics({ scores: new Map([['val-7-0', scores.slice(0, 8)]]), qaTargets: new Map([['val-7-0', 2]]), qarTargets: new Map([['val-7-0', 1]]) }, 'val');
  assert.equal(v!.qar_acc, 0);
  assert.equal(v!.acc, 0);
  // Unlabelled (test split without targets): no metrics.
  assert.equal(vcrMetrics({ scores: new Map([['t-1-0', scores]]), qaTargets: new Map([['t-1-0', -1]]), qarTargets: new Map([['t-1-0', -1]]) }, 'test'), null);
});

test('VCR submission CSV: annot_id + 20 score columns, rows ordered by the number in the id', () => {
  const row = (x: number) => Array.from({ length: 20 }, (_, i) => x + i / 100);
  const csv = vcrSubmissionCsv(new Map([['test-10-0', row(1)], ['test-2-1', row(2)]]));
  const lines = csv.trimEnd().split('\n');
  assert.equal(lines.length, 3);
  const header = lines[0].split(',');
  assert.equal(header.length, 21);
  assert.equal(header[0], 'annot_id');
  assert.equal(header[1], 'answer_0');
  assert.equal(header[5], 'rationale_conditioned_on_a0_0');
  assert.equal(header[20], 'rationale_conditioned_on_a3_3');
  assert.equal(lines[1].split(',')[0], 'test-2-1');
  assert.equal(Number(lines[1].split(',')[1]), 2);
  assert.equal(lines[2].split(',')[0], 'test-10-0');
  assert.throws(() => vcrSubmissionCsv(new Map([['x-1-0', [1, 2, 3]]])), /has 3 scores, expected 20/);
});
