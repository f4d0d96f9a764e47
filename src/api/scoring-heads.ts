/**
 * The scoring tasks of the public API and how a model folder's weights decide them: which
 * heads a state_dict holds (by the official parameter names), the NLVR2 and RE variants, and
 * the VQA answer count.
 */
import type { UniterConfig } from '../model/config.js';

/** Inference tasks: one per downstream head (plus ITM of a pre-trained model). */
export const SCORING_TASKS = ['itm', 'vqa', 've', 'nlvr2_paired', 'nlvr2_paired_attn', 'nlvr2_triplet', 're_mlp1', 're_mlp2', 'retrieval', 'vcr'] as const;
export type ScoringTask = (typeof SCORING_TASKS)[number];

/** What a caller may ask for: a task, or a family ('nlvr2', 'refexp') whose variant the weights decide. */
export type TaskRequest = ScoringTask | 'nlvr2' | 'refexp';

export const TASK_REQUESTS: readonly TaskRequest[] = [...SCORING_TASKS, 'nlvr2', 'refexp'];

/** The output that holds a task's scores (official names). */
export const SCORE_OUTPUT: Record<ScoringTask, string> = {
  itm: 'itm_scores',
  vqa: 'answer_scores',
  ve: 'answer_scores',
  nlvr2_paired: 'answer_scores',
  nlvr2_paired_attn: 'answer_scores',
  nlvr2_triplet: 'answer_scores',
  re_mlp1: 'scores',
  re_mlp2: 'scores',
  retrieval: 'rank_scores',
  vcr: 'answer_scores',
};

export type Shapes = ReadonlyMap<string, readonly number[]>;

/** VE is the VQA head with its 3 classes (0 contradiction, 1 entailment, 2 neutral). */
const VE_CLASSES = 3;

/**
 * Heads present in a state_dict, most specific first (a retrieval model also holds itm_output,
 * so 'retrieval' precedes 'itm'). Each is named by the tensor that identifies it.
 */
export function headsInWeights(shapes: Shapes, cfg: UniterConfig): Array<{ task: ScoringTask; by: string }> {
  const out: Array<{ task: ScoringTask; by: string }> = [];
  const has = (n: string) => shapes.has(n);
  if (has('vcr_output.3.weight')) out.push({ task: 'vcr', by: 'vcr_output.3.weight' });
  const vqa = shapes.get('vqa_output.3.weight');
  if (vqa) out.push({ task: vqa[0] === VE_CLASSES ? 've' : 'vqa', by: 'vqa_output.3.weight' });
  const nlvr2 = shapes.get('nlvr2_output.weight');
  if (has('attn1.in_proj_weight')) out.push({ task: 'nlvr2_paired_attn', by: 'attn1.in_proj_weight' });
  else if (nlvr2) out.push({ task: nlvr2[1] === cfg.hidden_size ? 'nlvr2_triplet' : 'nlvr2_paired', by: 'nlvr2_output.weight' });
  if (has('re_output.0.weight')) out.push({ task: 're_mlp2', by: 're_output.0.weight' });
  else if (has('re_output.weight')) out.push({ task: 're_mlp1', by: 're_output.weight' });
  if (has('rank_output.weight')) out.push({ task: 'retrieval', by: 'rank_output.weight' });
  if (has('itm_output.weight')) out.push({ task: 'itm', by: 'itm_output.weight' });
  return out;
}

export interface ResolvedTask {
  task: ScoringTask;
  /** Width of the VQA/VE head (rows of vqa_output.3.weight). */
  numAnswers?: number;
}

/**
 * The task to run: the requested one (families resolved by the weights), or the most specific
 * head the weights hold. `source` names the weights file in errors.
 */
export function resolveTask(request: TaskRequest | undefined, shapes: Shapes, cfg: UniterConfig, source: string): ResolvedTask {
  if (request !== undefined && !TASK_REQUESTS.includes(request)) {
    throw new Error(`unknown task '${String(request)}' (expected one of ${TASK_REQUESTS.join(', ')})`);
  }
  const heads = headsInWeights(shapes, cfg);
  const held = heads.length ? heads.map((h) => `${h.task} (${h.by})`).join(', ') : 'none';
  let task: ScoringTask;
  if (request === undefined) {
    if (!heads.length) throw new Error(`${source}: holds no task head (looked for vqa_output, nlvr2_output, re_output, rank_output, itm_output, vcr_output); pass a task`);
    task = heads[0].task;
  } else if (request === 'nlvr2' || request === 'refexp') {
    const prefix = request === 'nlvr2' ? 'nlvr2_' : 're_';
    const hit = heads.find((h) => h.task.startsWith(prefix));
    if (!hit) throw new Error(`${source}: holds no ${request === 'nlvr2' ? 'NLVR2 head (nlvr2_output.weight)' : 'referring-expression head (re_output.weight or re_output.0.weight)'}; heads found: ${held}`);
    task = hit.task;
  } else {
    task = request;
    // A same-shaped head of another variant (paired vs paired-attn nlvr2_output) must not pass for this one.
    if (task !== 'vqa' && task !== 've' && !heads.some((h) => h.task === task)) throw new Error(`${source}: holds no '${task}' head; heads found: ${held}`);
  }
  if (task !== 'vqa' && task !== 've') return { task };
  const vqa = shapes.get('vqa_output.3.weight');
  if (!vqa) throw new Error(`${source}: holds no VQA head (vqa_output.3.weight) for task '${task}'; heads found: ${held}`);
  if (task === 've' && vqa[0] !== VE_CLASSES) throw new Error(`${source}: task 've' needs a ${VE_CLASSES}-class head, but vqa_output.3.weight has ${vqa[0]} rows (a VQA model?)`);
  return { task, numAnswers: vqa[0] };
}
