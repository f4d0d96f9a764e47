/**
 * VCR fine-tuning (official train_vcr.py / inf_vcr.py).
 *
 * Model: token types grow to 4 rows (0 question, 1 image, 2 answer, 3 rationale; rows 2 and 3
 * copied from row 0) and the word embeddings by 81 rows drawn from N(0, initializer_range), as
 * the official init_type_embedding / init_word_embedding(81). A checkpoint that already has the
 * grown tables (VCR 2nd-stage pre-training, or a VCR model) loads as it is. Head `vcr_output`:
 * Linear -> ReLU -> LayerNorm -> Linear(2) per candidate, 2-way CE (mean over rows).
 *
 * Images: GT-box regions first, then the detections (img_fname = [gt, det]).
 *
 * Training mixes Q->A examples (4 rows: [CLS] q [SEP] a_i [SEP]) and QA->R examples (4 rows:
 * [CLS] q [SEP] a_gt [SEP] r_j [SEP]) in one token-bucket stream (official ConcatDatasetWithLens),
 * each side with its own length table (id2len_qa.json / id2len_qar.json).
 *
 * Evaluation scores each candidate by its class-1 logit: Q->A accuracy, QA->R accuracy with
 * rationales conditioned on the GT answer, Q->AR = both right, and CE per question of each.
 * Intermediate validations score 4 + 4 rows per question ('val' mode); the final one and
 * `uniter evaluate` score 4 answers + 4x4 rationales ('test' mode) and write the submission CSV
 * (annot_id + answer_0..3 + rationale_conditioned_on_a{k}_0..3, raw logits) and a JSON of the
 * 20 scores per question.
 */
import { VcrDataset, VcrEvalDataset, type VcrImageSources } from '../data/datasets.js';
import { ExampleCountSampler, TaskLoader } from '../data/sampler.js';
import type { TextSource } from '../data/types.js';
import { i64, toNumbers, type HostTensor } from '../engine/host.js';
import type { UniterConfig } from '../model/config.js';
import type { UniterRunner } from '../model/runner.js';
import { growWordEmbedding, initVcrTypeEmbedding } from '../model/surgery.js';
import { Rng } from '../util/rng.js';
import { argmaxRows, crossEntropySum, vcrCorrect } from './metrics.js';
import { ConcatDataset, loaderSource, splitOf, trainLoader, type EvaluateContext, type SplitData, type TaskDefinition } from './task-registry.js';
import type { Evaluation } from './trainer.js';

/** Word-piece rows the official VCR code adds (person tags and the like). */
export const VCR_EXTRA_TOKENS = 81;
/** Token types: question/text 0, image 1, answer 2, rationale 3. */
export const VCR_TYPES = 4;
const CANDIDATES = 4;

const WORD_TABLE = 'uniter.embeddings.word_embeddings.weight';
const TYPE_TABLE = 'uniter.embeddings.token_type_embeddings.weight';

/** The VCR model configuration grown from a pre-trained one (unchanged if it already is a VCR config). */
export function vcrModelConfig(base: UniterConfig): UniterConfig {
  if (base.type_vocab_size >= VCR_TYPES) return base;
  return { ...base, vocab_size: base.vocab_size + VCR_EXTRA_TOKENS, type_vocab_size: VCR_TYPES };
}

/** A text source whose lengths come from a VCR length table (id2len_qa.json / id2len_qar.json) when the txt_db has it. */
function withLengthTable(split: SplitData, file: string): TextSource {
  const table = split.sideFile(file);
  if (table === undefined) return split.txt;
  if (!table || typeof table !== 'object' || Array.isArray(table)) throw new Error(`${split.name}/${file}: expected a JSON object {id: length}`);
  const lens = table as Record<string, unknown>;
  return {
    ids: () => split.txt.ids(),
    get: (id) => split.txt.get(id),
    len(id) {
      const n = lens[id];
      if (!(typeof n === 'number' && Number.isInteger(n) && n >= 0)) throw new Error(`${split.name}/${file}: record '${id}' has length ${JSON.stringify(n)}, expected a non-negative integer`);
      return n;
    },
  };
}

function imagesOf(split: SplitData): VcrImageSources {
  return split.gtImg ? { gt: split.gtImg, det: split.img } : { det: split.img };
}

/** vcr_collate's targets are [rows, 1] (official layout); the graph reads one label per row. */
function flatTargets(t: HostTensor): HostTensor {
  return i64([t.shape[0]], toNumbers(t));
}

type EvalMode = 'val' | 'test';

interface VcrScores {
  /** Example id -> candidate scores (4 answers, then 4 or 16 rationale rows). */
  scores: Map<string, number[]>;
  qaTargets: Map<string, number>;
  qarTargets: Map<string, number>;
}

async function scoreSplit(runner: UniterRunner, split: SplitData, mode: EvalMode, batchExamples: number, seed: number, onProgress?: (done: number, total: number) => void): Promise<VcrScores> {
  const ds = new VcrEvalDataset(split.txt, imagesOf(split), { split: mode });
  if (ds.ids.length === 0) throw new Error(`${split.name}: the evaluation split has no examples`);
  const sampler = new ExampleCountSampler(ds, { batchSize: batchExamples, shuffle: false, dropLast: false }, new Rng(seed, 'vcr-eval'));
  const loader = new TaskLoader(ds, { seed, sampler });
  const out: VcrScores = { scores: new Map(), qaTargets: new Map(), qarTargets: new Map() };
  let done = 0;
  for (const { batch, ids } of loader.restOfEpoch()) {
    const r = await runner.run('vcr', batch, { training: false, grads: false, inference: true });
    done += ids.length;
    onProgress?.(done, ds.ids.length);
    const logits = r.get('answer_scores')!.data as Float32Array;
    const rows = logits.length / 2;
    if (rows % ids.length !== 0) throw new Error(`${split.name}: ${rows} scored rows for ${ids.length} questions`);
    const per = rows / ids.length;
    const qa = toNumbers(batch.get('qa_targets')!);
    const qar = toNumbers(batch.get('qar_targets')!);
    ids.forEach((id, i) => {
      const s: number[] = [];
      for (let k = 0; k < per; k++) s.push(logits[(i * per + k) * 2 + 1]);
      out.scores.set(id, s);
      out.qaTargets.set(id, qa[i]);
      out.qarTargets.set(id, qar[i]);
    });
  }
  return out;
}

/** Q->A, QA->R (conditioned on the GT answer) and Q->AR accuracies and CE per question; null when the split has no labels. */
export function vcrMetrics(s: VcrScores, mode: EvalMode): Record<string, number> | null {
  const ids = [...s.scores.keys()];
  if (ids.some((id) => s.qaTargets.get(id)! < 0 || s.qarTargets.get(id)! < 0)) return null;
  const qaScores: number[] = [];
  const qarScores: number[] = [];
  const qaLabels: number[] = [];
  const qarLabels: number[] = [];
  for (const id of ids) {
    const sc = s.scores.get(id)!;
    const a = s.qaTargets.get(id)!;
    qaScores.push(...sc.slice(0, CANDIDATES));
    const start = CANDIDATES + (mode === 'test' ? a * CANDIDATES : 0);
    qarScores.push(...sc.slice(start, start + CANDIDATES));
    qaLabels.push(a);
    qarLabels.push(s.qarTargets.get(id)!);
  }
  const c = vcrCorrect(argmaxRows(qaScores, CANDIDATES), qaLabels, argmaxRows(qarScores, CANDIDATES), qarLabels);
  const n = ids.length;
  return {
    acc: c.joint / n,
    qa_acc: c.qa / n,
    qar_acc: c.qar / n,
    qa_loss: crossEntropySum(qaScores, CANDIDATES, qaLabels) / n,
    qar_loss: crossEntropySum(qarScores, CANDIDATES, qarLabels) / n,
  };
}

const GROUPS = ['answer', ...[0, 1, 2, 3].map((k) => `rationale_conditioned_on_a${k}`)];

/** The official submission CSV (inf_vcr.py save_for_submission): rows ordered by the number after the split prefix of annot_id. */
export function vcrSubmissionCsv(scores: ReadonlyMap<string, readonly number[]>): string {
  const order = (id: string): number => {
    const n = Number(id.split('-')[1]);
    return Number.isFinite(n) ? n : Infinity;
  };
  const ids = [...scores.keys()].sort((a, b) => order(a) - order(b));
  const header = ['annot_id', ...GROUPS.flatMap((g) => [0, 1, 2, 3].map((i) => `${g}_${i}`))].join(',');
  const lines = ids.map((id) => {
    const s = scores.get(id)!;
    if (s.length !== CANDIDATES * (1 + CANDIDATES)) throw new Error(`VCR submission: question '${id}' has ${s.length} scores, expected ${CANDIDATES * (1 + CANDIDATES)} (score it in test mode)`);
    return [id, ...s.map((v) => String(v))].join(',');
  });
  return [header, ...lines].join('\n') + '\n';
}

async function evaluateSplit(runner: UniterRunner, split: SplitData, mode: EvalMode, splitName: string, batchExamples: number, seed: number, tag: string, onProgress?: (done: number, total: number) => void): Promise<Evaluation> {
  if (!runner.params.has('vcr_output.3.weight')) throw new Error("the model has no 'vcr_output.3.weight': not a VCR model");
  const s = await scoreSplit(runner, split, mode, batchExamples, seed, onProgress);
  const m = vcrMetrics(s, mode);
  const ev: Evaluation = { metrics: { [splitName]: m ?? {} }, examples: { [splitName]: s.scores.size }, files: [] };
  if (mode === 'test') {
    ev.files!.push({ name: `vcr_${splitName}_results_${tag}.json`, content: JSON.stringify(Object.fromEntries(s.scores)) + '\n' });
    ev.files!.push({ name: `vcr_${splitName}_results_${tag}.csv`, content: vcrSubmissionCsv(s.scores) });
  }
  return ev;
}

export const vcrTask: TaskDefinition = {
  name: 'vcr',
  summary: 'VCR (Q->A, QA->R, Q->AR accuracy; 4 token types, +81 word rows)',
  worldPrefix: 'vcr',
  optionDefaults: {},
  checkOptions: () => undefined,
  plan(base, _options, _data, seed) {
    const cfg = vcrModelConfig(base);
    return {
      cfg,
      head: 'vcr',
      headOptions: {},
      hooks: {
        adaptSource(source) {
          const types = source.get(TYPE_TABLE);
          if (types && types.shape[0] < VCR_TYPES) source.set(TYPE_TABLE, initVcrTypeEmbedding(types));
          const words = source.get(WORD_TABLE);
          if (words && words.shape[0] + VCR_EXTRA_TOKENS === cfg.vocab_size) source.set(WORD_TABLE, growWordEmbedding(words, VCR_EXTRA_TOKENS, cfg.initializer_range, seed));
        },
      },
    };
  },
  // Validation batches count questions, each scored on up to 20 rows (answers, rationales).
  batchRows: (settings) => ({ val: settings.valBatchSize * 20 }),
  job({ data, settings }) {
    const parts = data.train.flatMap((s) => [
      new VcrDataset(withLengthTable(s, 'id2len_qa.json'), imagesOf(s), { task: 'qa' }),
      new VcrDataset(withLengthTable(s, 'id2len_qar.json'), imagesOf(s), { task: 'qar' }),
    ]);
    const val = splitOf(data, 'val', 'vcr');
    return {
      name: 'vcr',
      graphTask: 'vcr',
      isHeadParam: (n) => n.startsWith('vcr_output.'),
      selectMetric: 'acc',
      train: loaderSource(trainLoader(new ConcatDataset('vcr', parts), settings), (b) => {
        b.batch.set('targets', flatTargets(b.batch.get('targets')!));
        return b;
      }),
      evaluate: (runner, { final, tag }) => evaluateSplit(runner, val, final ? 'test' : 'val', 'val', settings.valBatchSize, settings.seed, tag),
    };
  },
  evaluate: (runner, ctx: EvaluateContext) => evaluateSplit(runner, splitOf(ctx.data, ctx.split, 'vcr'), 'test', ctx.split, ctx.batchSize, ctx.seed, ctx.tag, ctx.onProgress),
};
