/**
 * SNLI-VE fine-tuning (official train_ve.py): the VQA model with three answers (0 contradiction,
 * 1 entailment, 2 neutral) on `[CLS] hypothesis [SEP]` + image, the same BCE x 3 loss on one-hot
 * targets, no head lr multiplier. Every validation scores both the val and the test split (as
 * the official trainer); accuracy = the VQA score of one-hot targets. Results files map each
 * example id to its label name.
 */
import { VeDataset } from '../data/datasets.js';
import { VE_LABELS } from '../data/world/concepts.js';
import type { UniterRunner } from '../model/runner.js';
import { ConcatDataset, loaderSource, mergeEvaluations, splitOf, trainLoader, type EvalSplit, type EvaluateContext, type TaskData, type TaskDefinition } from './task-registry.js';
import type { Evaluation } from './trainer.js';
import { headAnswers, scoreAnswers } from './vqa.js';

async function evaluateSplit(runner: UniterRunner, data: TaskData, ctx: Omit<EvaluateContext, 'data'>): Promise<Evaluation> {
  const n = headAnswers(runner, 'vqa_output.3.weight');
  if (n !== VE_LABELS.length) throw new Error(`the model answers ${n} classes; an SNLI-VE model has ${VE_LABELS.length} (${VE_LABELS.join(', ')})`);
  const split = splitOf(data, ctx.split, 've');
  const r = await scoreAnswers(runner, 've', new VeDataset(split.txt, split.img, { requireTargets: false }), ctx.batchSize, ctx.seed, ctx.onProgress);
  const results: Record<string, string> = {};
  for (const [id, label] of r.predicted) results[id] = VE_LABELS[label];
  const metrics: Record<string, number> = {};
  if (r.score !== null) metrics.acc = r.score;
  if (r.loss !== null) metrics.loss = r.loss;
  return { metrics: { [ctx.split]: metrics }, examples: { [ctx.split]: r.examples }, files: [{ name: `ve_${ctx.split}_results_${ctx.tag}.json`, content: JSON.stringify(results) + '\n' }] };
}

export const veTask: TaskDefinition = {
  name: 've',
  summary: 'SNLI-VE visual entailment (3-way, accuracy)',
  worldPrefix: 've',
  optionDefaults: {},
  checkOptions: () => undefined,
  plan: (base) => ({ cfg: base, head: 've', headOptions: { numAnswers: VE_LABELS.length }, hooks: {} }),
  job({ data, settings }) {
    const parts = data.train.map((s) => new VeDataset(s.txt, s.img));
    const train = parts.length === 1 ? parts[0] : new ConcatDataset('ve', parts);
    return {
      name: 've',
      labels: VE_LABELS,
      graphTask: 've',
      graphOptions: { numAnswers: VE_LABELS.length },
      isHeadParam: (n) => n.startsWith('vqa_output.'),
      selectMetric: 'acc',
      train: loaderSource(trainLoader(train, settings)),
      async evaluate(runner, { tag }) {
        const splits: EvalSplit[] = data.test ? ['val', 'test'] : ['val'];
        const parts: Evaluation[] = [];
        for (const split of splits) parts.push(await evaluateSplit(runner, data, { split, batchSize: settings.valBatchSize, seed: settings.seed, tag }));
        return mergeEvaluations(parts);
      },
    };
  },
  evaluate: (runner, ctx) => evaluateSplit(runner, ctx.data, ctx),
};
