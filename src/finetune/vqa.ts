/**
 * VQA fine-tuning (official train_vqa.py / inf_vqa.py): `[CLS] question [SEP]` + regions, the
 * `vqa_output` MLP on the pooled [CLS], soft VQA targets with instance-level BCE (mean x
 * #answers), the head trained at lr x lr_mul (10). Validation reports the VQA score (soft
 * target of the argmax answer, averaged) and the BCE summed per question; the results file is
 * the evaluation server's `[{"question_id", "answer"}]` list with answer strings from ans2label.
 *
 * SNLI-VE (ve.ts) is the same model with three answers, so the scoring loop lives here.
 */
import { VqaDataset } from '../data/datasets.js';
import type { UniterRunner } from '../model/runner.js';
import { bceWithLogitsSum, argmaxRows, vqaScores } from './metrics.js';
import { ConcatDataset, evaluationBatches, label2answer, loaderSource, splitOf, trainLoader, type EvaluateContext, type SplitData, type TaskData, type TaskDefinition } from './task-registry.js';
import type { Evaluation } from './trainer.js';

export interface AnswerScoring {
  /** Number of answers (columns of answer_scores). */
  numAnswers: number;
  /** Predicted label -> answer string written to the results. */
  answers: readonly string[];
  /** Records without targets are allowed (unlabelled test split). */
  allowUnlabelled: boolean;
}

export interface AnswerPredictions {
  /** Example id -> predicted label, in evaluation order. */
  predicted: Map<string, number>;
  /** Mean VQA score (VE: accuracy) and BCE summed per example; absent when the split is unlabelled. */
  score: number | null;
  loss: number | null;
  examples: number;
}

/** Score every example of a split with the VQA-style head (graph task 'vqa' or 've'). */
export async function scoreAnswers(runner: UniterRunner, graphTask: 'vqa' | 've', dataset: VqaDataset, batchTokens: number, seed: number, onProgress?: (done: number, total: number) => void): Promise<AnswerPredictions> {
  const predicted = new Map<string, number>();
  let scoreSum = 0;
  let lossSum = 0;
  let labelled = 0;
  for (const { batch, ids } of evaluationBatches(dataset, batchTokens, seed)) {
    const out = await runner.run(graphTask, batch, { training: false, grads: false, inference: true, numAnswers: dataset.numAnswers });
    const logits = out.get('answer_scores')!.data as Float32Array;
    argmaxRows(logits, dataset.numAnswers).forEach((a, i) => predicted.set(ids[i], a));
    onProgress?.(predicted.size, dataset.ids.length);
    const targets = batch.get('targets');
    if (targets) {
      const t = targets.data as Float32Array;
      for (const s of vqaScores(logits, t, dataset.numAnswers)) scoreSum += s;
      lossSum += bceWithLogitsSum(logits, t);
      labelled += ids.length;
    }
  }
  const n = predicted.size;
  if (labelled !== 0 && labelled !== n) throw new Error(`${dataset.task}: ${labelled} of ${n} examples have targets (all or none)`);
  return { predicted, score: labelled ? scoreSum / n : null, loss: labelled ? lossSum / n : null, examples: n };
}

/** The official question id: the txt_db key as an integer when it is one. */
export function questionId(id: string): number | string {
  return /^\d+$/.test(id) ? Number(id) : id;
}

/** Number of answers of a VQA head, read from its output layer. */
export function headAnswers(runner: UniterRunner, param: string): number {
  const w = runner.params.get(param);
  if (!w) throw new Error(`the model has no '${param}': not a VQA / SNLI-VE model`);
  return w.shape[0];
}

function answerVocabulary(data: TaskData): Record<string, number> {
  if (!data.ans2label) throw new Error(`${data.describe}: VQA needs an answer vocabulary (ans2label.json; config field 'ans2label')`);
  return data.ans2label;
}

async function evaluateSplit(runner: UniterRunner, split: SplitData, ctx: EvaluateContext, answers: readonly string[]): Promise<Evaluation> {
  const numAnswers = headAnswers(runner, 'vqa_output.3.weight');
  if (numAnswers !== answers.length) throw new Error(`the model answers ${numAnswers} classes but the answer vocabulary has ${answers.length}`);
  const dataset = new VqaDataset(split.txt, split.img, { numAnswers, requireTargets: false });
  const r = await scoreAnswers(runner, 'vqa', dataset, ctx.batchSize, ctx.seed, ctx.onProgress);
  const results = [...r.predicted].map(([id, label]) => ({ question_id: questionId(id), answer: answers[label] }));
  const metrics: Record<string, number> = {};
  if (r.score !== null) metrics.score = r.score;
  if (r.loss !== null) metrics.loss = r.loss;
  return { metrics: { [ctx.split]: metrics }, examples: { [ctx.split]: r.examples }, files: [{ name: `vqa_${ctx.split}_results_${ctx.tag}.json`, content: JSON.stringify(results) + '\n' }] };
}

export const vqaTask: TaskDefinition = {
  name: 'vqa',
  summary: 'visual question answering (soft-score BCE, VQA score)',
  worldPrefix: 'vqa',
  optionDefaults: {},
  checkOptions: () => undefined,
  plan(base, _options, data) {
    const numAnswers = Object.keys(answerVocabulary(data)).length;
    return { cfg: base, head: 'vqa', headOptions: { numAnswers }, hooks: {} };
  },
  job({ data, settings, plan }) {
    const numAnswers = plan.headOptions.numAnswers!;
    const answers = label2answer(answerVocabulary(data));
    const parts = data.train.map((s) => new VqaDataset(s.txt, s.img, { numAnswers }));
    const train = parts.length === 1 ? parts[0] : new ConcatDataset('vqa', parts);
    return {
      name: 'vqa',
      labels: answers,
      graphTask: 'vqa',
      graphOptions: { numAnswers },
      isHeadParam: (n) => n.startsWith('vqa_output.'),
      selectMetric: 'score',
      train: loaderSource(trainLoader(train, settings)),
      evaluate: (runner, { tag }) => evaluateSplit(runner, splitOf(data, 'val', 'vqa'), { data, split: 'val', batchSize: settings.valBatchSize, seed: settings.seed, tag }, answers),
    };
  },
  evaluate: (runner, ctx) => evaluateSplit(runner, splitOf(ctx.data, ctx.split, 'vqa'), ctx, label2answer(answerVocabulary(ctx.data))),
};
