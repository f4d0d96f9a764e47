/**
 * NLVR2 fine-tuning (official train_nlvr2.py, scripts/eval_nlvr2.py) in its three variants:
 *   paired       the statement encoded with each image; both pooled [CLS] concatenated -> 2 classes
 *   paired-attn  (default, as the official configs) bidirectional cross-attention + attention pooling
 *   triplet      one sequence [statement, left regions, right regions]
 * Token types grow to 3 rows before training (row 2 = copy of row 1); with use_img_type the
 * left image's regions get type 1 and the right one's type 2. Loss: 2-way CE, mean. Every
 * validation scores val and test (as the official trainer): accuracy, consistency (every
 * statement of an image-pair group right) and CE per statement. Results: CSV lines
 * `identifier,True|False`.
 */
import { Nlvr2PairedDataset, Nlvr2TripletDataset, type TaskDataset } from '../data/datasets.js';
import type { HostTensor } from '../engine/host.js';
import { i64, toNumbers } from '../engine/host.js';
import type { Batch } from '../data/types.js';
import type { UniterConfig } from '../model/config.js';
import type { HeadName } from '../model/params.js';
import type { UniterRunner } from '../model/runner.js';
import { initTypeEmbedding } from '../model/surgery.js';
import { argmaxRows, crossEntropySum, nlvr2Metrics } from './metrics.js';
import { ConcatDataset, evaluationBatches, loaderSource, mergeEvaluations, splitOf, trainLoader, type EvalSplit, type EvaluateContext, type SplitData, type TaskData, type TaskDefinition, type TaskOptionValues } from './task-registry.js';
import type { Evaluation } from './trainer.js';

export const NLVR2_VARIANTS = ['paired', 'paired-attn', 'triplet'] as const;
export type Nlvr2Variant = (typeof NLVR2_VARIANTS)[number];

const GRAPH_OF: Record<Nlvr2Variant, 'nlvr2_paired' | 'nlvr2_paired_attn' | 'nlvr2_triplet'> = {
  paired: 'nlvr2_paired',
  'paired-attn': 'nlvr2_paired_attn',
  triplet: 'nlvr2_triplet',
};

const TYPE_TABLE = 'uniter.embeddings.token_type_embeddings.weight';
/** Text, left image, right image. */
const NLVR2_TYPES = 3;

/** Which variant a set of NLVR2 parameters belongs to (from its head's tensors). */
export function nlvr2VariantOf(params: ReadonlyMap<string, HostTensor>, cfg: UniterConfig): Nlvr2Variant {
  if (params.has('attn1.in_proj_weight')) return 'paired-attn';
  const w = params.get('nlvr2_output.weight');
  if (!w) throw new Error("the model has no 'nlvr2_output.weight': not an NLVR2 model");
  if (w.shape[1] === 2 * cfg.hidden_size) return 'paired';
  if (w.shape[1] === cfg.hidden_size) return 'triplet';
  throw new Error(`'nlvr2_output.weight' has shape [${w.shape}], expected [2, ${cfg.hidden_size}] (triplet) or [2, ${2 * cfg.hidden_size}] (paired)`);
}

function variantOption(options: TaskOptionValues): Nlvr2Variant {
  return options.model as Nlvr2Variant;
}

/**
 * Without use_img_type the datasets give no region types and the official model types every
 * region slot 1 (`ones_like`); the graphs read img_type_ids, so that default is filled in here.
 */
function withImageTypes(batch: Batch): Batch {
  if (batch.has('img_type_ids')) return batch;
  const feat = batch.get('img_feat')!;
  const [rows, regions] = feat.shape;
  batch.set('img_type_ids', i64([rows, regions], new Array<number>(rows * regions).fill(1)));
  return batch;
}

/** Paired variants share the paired dataset (2 rows per statement); triplet has one row. */
function dataset(split: SplitData, variant: Nlvr2Variant, useImgType: boolean): TaskDataset<unknown> {
  return variant === 'triplet' ? new Nlvr2TripletDataset(split.txt, split.img, { useImgType }) : new Nlvr2PairedDataset(split.txt, split.img, { useImgType });
}

async function evaluateSplit(runner: UniterRunner, data: TaskData, ctx: Omit<EvaluateContext, 'data'>, useImgType: boolean): Promise<Evaluation> {
  const variant = nlvr2VariantOf(runner.params, runner.cfg);
  const ds = dataset(splitOf(data, ctx.split, 'nlvr2'), variant, useImgType);
  const predictions = new Map<string, boolean>();
  const labels = new Map<string, boolean>();
  const lines: string[] = [];
  let loss = 0;
  for (const { batch, ids } of evaluationBatches(ds, ctx.batchSize, ctx.seed)) {
    const out = await runner.run(GRAPH_OF[variant], withImageTypes(batch), { training: false, grads: false, inference: true });
    const scores = out.get('answer_scores')!.data as Float32Array;
    const targets = toNumbers(batch.get('targets')!);
    loss += crossEntropySum(scores, 2, targets);
    argmaxRows(scores, 2).forEach((p, i) => {
      predictions.set(ids[i], p === 1);
      labels.set(ids[i], targets[i] === 1);
      lines.push(`${ids[i]},${p === 1 ? 'True' : 'False'}`);
    });
    ctx.onProgress?.(labels.size, ds.ids.length);
  }
  const m = nlvr2Metrics(predictions, labels);
  return {
    metrics: { [ctx.split]: { acc: m.acc, consistency: m.consistency, loss: loss / labels.size } },
    examples: { [ctx.split]: labels.size },
    files: [{ name: `nlvr2_${ctx.split}_results_${ctx.tag}.csv`, content: lines.join('\n') + '\n' }],
  };
}

export const nlvr2Task: TaskDefinition = {
  name: 'nlvr2',
  summary: 'NLVR2 (paired, paired-attn (default), triplet; accuracy + consistency)',
  worldPrefix: 'nlvr2',
  optionDefaults: { model: 'paired-attn', use_img_type: true },
  checkOptions(options, source) {
    if (!NLVR2_VARIANTS.includes(options.model as Nlvr2Variant)) throw new Error(`${source}: field 'model' must be one of ${NLVR2_VARIANTS.join(', ')}, got ${JSON.stringify(options.model)}`);
    if (typeof options.use_img_type !== 'boolean') throw new Error(`${source}: field 'use_img_type' must be true or false, got ${JSON.stringify(options.use_img_type)}`);
  },
  plan(base, options) {
    const head = GRAPH_OF[variantOption(options)] as HeadName;
    return {
      cfg: { ...base, type_vocab_size: Math.max(NLVR2_TYPES, base.type_vocab_size) },
      head,
      headOptions: {},
      hooks: {
        // Official init_type_embedding runs after loading a pre-trained (2-type) model.
        adaptSource(source) {
          const t = source.get(TYPE_TABLE);
          if (t && t.shape[0] < NLVR2_TYPES) source.set(TYPE_TABLE, initTypeEmbedding(t, NLVR2_TYPES));
        },
      },
    };
  },
  job({ data, settings, options }) {
    const variant = variantOption(options);
    const useImgType = options.use_img_type as boolean;
    const parts = data.train.map((s) => dataset(s, variant, useImgType));
    const train = parts.length === 1 ? parts[0] : new ConcatDataset('nlvr2', parts);
    return {
      name: 'nlvr2',
      graphTask: GRAPH_OF[variant],
      // answer_scores columns: the statement is false / true of the image pair (official results 'False' / 'True').
      labels: ['False', 'True'],
      isHeadParam: () => false,
      selectMetric: 'acc',
      train: loaderSource(trainLoader(train, settings), (b) => ({ ...b, batch: withImageTypes(b.batch) })),
      async evaluate(runner, { tag }) {
        const splits: EvalSplit[] = data.test ? ['val', 'test'] : ['val'];
        const parts: Evaluation[] = [];
        for (const split of splits) parts.push(await evaluateSplit(runner, data, { split, batchSize: settings.valBatchSize, seed: settings.seed, tag }, useImgType));
        return mergeEvaluations(parts);
      },
    };
  },
  evaluate: (runner, ctx) => evaluateSplit(runner, ctx.data, ctx, (ctx.options?.use_img_type ?? nlvr2Task.optionDefaults.use_img_type) as boolean),
};
