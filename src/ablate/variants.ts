/**
 * The pre-training variants of the paper's ablation (UNITER Table 2, rows 1-8 less the
 * text-only BERT row) and the downstream scores it reports. Everything else in src/ablate reads
 * these two tables, so adding a variant or a column happens here only.
 */
import type { PretrainTask } from '../model/task-graphs.js';

export interface Variant {
  /** Command-line name (`--variants`), also the cell directory name. */
  name: string;
  /** Row label of the table and chart. */
  label: string;
  /** Pre-training tasks; empty = no pre-training (fine-tune from a fresh initialization). */
  tasks: readonly PretrainTask[];
  /** ITM with word-region alignment (OT loss, otLambda > 0); without it ITM runs with otLambda 0. */
  wra: boolean;
  /** Joint instead of conditional masking (TrainSettings.jointMasking). */
  jointMasking: boolean;
}

const ALL = ['mlm', 'itm', 'mrckl', 'mrfr'] as const;

export const VARIANTS: readonly Variant[] = [
  { name: 'none', label: 'None (no pre-training)', tasks: [], wra: false, jointMasking: false },
  { name: 'mlm', label: 'MLM', tasks: ['mlm'], wra: false, jointMasking: false },
  { name: 'itm', label: 'ITM', tasks: ['itm'], wra: false, jointMasking: false },
  { name: 'mlm-itm', label: 'MLM + ITM', tasks: ['mlm', 'itm'], wra: false, jointMasking: false },
  { name: 'mlm-itm-mrckl-mrfr', label: 'MLM + ITM + MRC-kl + MRFR', tasks: ALL, wra: false, jointMasking: false },
  { name: 'mlm-itm-mrckl-mrfr-wra', label: 'MLM + ITM + MRC-kl + MRFR + WRA', tasks: ALL, wra: true, jointMasking: false },
  { name: 'mlm-itm-mrckl-mrfr-wra-joint', label: 'MLM + ITM + MRC-kl + MRFR + WRA (joint masking)', tasks: ALL, wra: true, jointMasking: true },
];

/** The fine-tuning tasks the ablation runs (registry names of src/finetune/task-registry.ts). */
export const DOWNSTREAM_TASKS = ['vqa', 'retrieval', 'nlvr2', 're'] as const;
export type DownstreamName = (typeof DOWNSTREAM_TASKS)[number];

export interface ScoreColumn {
  /** Key in results JSON. */
  key: string;
  label: string;
  task: DownstreamName;
  /** Metric of the task's test split; the score is 100 x the metric (percent, as the paper). */
  metric: string;
}

/**
 * The columns of Table 2: VQA, IR and TR (R@1), NLVR2, referring expressions on detected boxes
 * (RefCOCO+ val^d). Meta-Sum is their sum, as in the paper.
 */
export const SCORE_COLUMNS: readonly ScoreColumn[] = [
  { key: 'vqa', label: 'VQA', task: 'vqa', metric: 'score' },
  { key: 'ir', label: 'IR R@1', task: 'retrieval', metric: 'img_r1' },
  { key: 'tr', label: 'TR R@1', task: 'retrieval', metric: 'txt_r1' },
  { key: 'nlvr2', label: 'NLVR2', task: 'nlvr2', metric: 'acc' },
  { key: 're', label: 'RE (det)', task: 're', metric: 'acc_det' },
];

export function getVariant(name: string): Variant {
  const v = VARIANTS.find((x) => x.name === name);
  if (!v) throw new Error(`--variants: unknown variant '${name}' (expected ${VARIANTS.map((x) => x.name).join(', ')})`);
  return v;
}

/** A comma-separated `--variants` list, in the order given; duplicates are an error. */
export function parseVariantList(list: string): Variant[] {
  const names = list.split(',').map((s) => s.trim());
  if (names.some((n) => n === '')) throw new Error(`--variants: empty name in '${list}' (expected a comma-separated list of ${VARIANTS.map((x) => x.name).join(', ')})`);
  const seen = new Set<string>();
  return names.map((n) => {
    if (seen.has(n)) throw new Error(`--variants: '${n}' is listed twice`);
    seen.add(n);
    return getVariant(n);
  });
}
