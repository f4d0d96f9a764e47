/**
 * The pre-training loop: one task drawn per optimizer step from the mix-ratio pool, gradient
 * accumulation over micro-batches of that task, clipping, AdamW with the linear schedule,
 * validation at intervals, JSON Lines logs, a live progress line, atomic checkpoints and exact
 * resume (parameters, moments, sampler positions, mixer and RNG states, dropout stream).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { HostTensor } from '../engine/host.js';
import type { ImageSource, TextSource } from '../data/types.js';
import { ItmDataset, MlmDataset, MrcDataset, MrfrDataset, type TaskDataset } from '../data/datasets.js';
import { TaskLoader } from '../data/sampler.js';
import type { SpecialIds } from '../data/masking.js';
import type { UniterConfig } from '../model/config.js';
import { allSpecs, initParams, TIES } from '../model/params.js';
import { UniterRunner } from '../model/runner.js';
import { DEFAULT_OT, OtOptions, PretrainTask } from '../model/task-graphs.js';
import { Rng } from '../util/rng.js';
import { AdamW, clipScale, globalGradNorm, groupByNameSubstring } from './optimizer.js';
import { newStepTime, roundedTime } from './step-time.js';
import { TaskMixer, mixName, parseMixName } from './mixer.js';
import { learningRateAt } from './schedule.js';
import { loadLatestCheckpoint, saveCheckpoint, saveModelFolder } from './checkpoint.js';
import { JsonlLogger, ProgressDisplay } from './progress.js';
import { RUN_FILE, checkIdentity, claimRunFolder } from './run-folder.js';
import { evaluateTask, TaskMetrics } from './validate.js';
import type { TrainLoopSettings } from './settings.js';
import { checkTrainingMemory, describeEstimate, fmtBytes, isOutOfMemory, longestSequence, memoryLimitFrom, MemoryLimitError, pretrainMemoryInput } from './memory.js';

export interface PretrainSource {
  name: string;
  txt: TextSource;
  img: ImageSource;
  tasks: PretrainTask[];
  mix_ratio?: number[];
}

/** Pre-training settings: the shared loop settings plus masking, ITM/WRA and the schedule kind. */
export interface TrainSettings extends TrainLoopSettings {
  valBatchTokens: number;
  schedule: 'linear' | 'constant';
  mrmProb: number;
  itmNegProb: number;
  otLambda: number;
  jointMasking: boolean;
  /** Cap on validation batches per task at intermediate validations (the final one uses the whole split). */
  valBatches?: number;
  /** Learning-rate multipliers by parameter-name substring (first match wins; others train at x1). */
  lrMultipliers?: Record<string, number>;
}

export interface PretrainOptions {
  modelConfig: UniterConfig;
  settings: TrainSettings;
  train: PretrainSource[];
  val: PretrainSource[];
  outDir: string;
  /** Initial parameters (e.g. from a checkpoint loaded non-strictly); fresh init otherwise. */
  initial?: Map<string, HostTensor>;
  resume?: boolean;
  quiet?: boolean;
  specialIds?: SpecialIds;
  /** Stop after this global step (tests simulate an interruption); the run can be resumed. */
  stopAtStep?: number;
  /** Extra JSON saved with checkpoints (e.g. the config that started the run). */
  runConfig?: unknown;
  threads?: number;
  onStep?: (info: StepInfo) => void;
  /** Replace a run already in outDir (without it, a new run refuses a folder holding one). */
  overwrite?: boolean;
  /** Identity fields (see runIdentity) allowed to differ from the recorded run on resume. */
  allowChanged?: readonly string[];
  /** Messages (fallback to an older checkpoint, replaced runs, allowed changes); default stderr unless quiet. */
  say?: (message: string) => void;
  /**
   * Memory the run may use, for the check before it starts (see memory.ts): bytes, 'off', or
   * (default) what the process can get (cgroup limit, available memory; UNITER_MEMORY_LIMIT).
   */
  memoryLimit?: number | 'off';
}

/**
 * What makes a pre-training run this run: the model, the training data and task mix, and every
 * setting that changes the trajectory (not the logging, validation or checkpoint cadence).
 * Field names are the official config names (`lr` for the learning rate, `steps` for
 * num_train_steps), as `--allow-changed` takes them.
 */
export function runIdentity(cfg: UniterConfig, s: TrainSettings, train: readonly PretrainSource[]): Record<string, unknown> {
  return {
    model: cfg,
    data: train.map((d) => ({ name: d.name, tasks: d.tasks, mix_ratio: d.mix_ratio ?? null })),
    lr: s.learningRate,
    lr_schedule: s.schedule,
    warmup_steps: s.warmupSteps,
    steps: s.steps,
    seed: s.seed,
    train_batch_size: s.trainBatchTokens,
    gradient_accumulation_steps: s.accumulation,
    grad_norm: s.gradNorm,
    weight_decay: s.weightDecay,
    betas: s.betas,
    max_txt_len: s.maxTxtLen,
    mrm_prob: s.mrmProb,
    itm_neg_prob: s.itmNegProb,
    itm_ot_lambda: s.otLambda,
    joint_masking: s.jointMasking,
    lr_multipliers: s.lrMultipliers ?? {},
  };
}

export interface StepInfo {
  step: number;
  task: string;
  loss: number;
  lr: number;
  /** Global gradient norm before clipping; null when clipping is off (not computed). */
  gradNorm: number | null;
  tokens: number;
}

export interface PretrainResult {
  steps: number;
  seconds: number;
  params: Map<string, HostTensor>;
  validation: Record<string, TaskMetrics>;
  /** Loss of every step run in this session (step -> loss). */
  losses: Array<{ step: number; task: string; loss: number }>;
  droppedLongCaptions: number;
}

type AnyLoader = TaskLoader<unknown>;

function buildDataset(task: PretrainTask, src: PretrainSource, s: TrainSettings, special?: SpecialIds): TaskDataset<unknown> {
  const common = { specialIds: special };
  switch (task) {
    case 'mlm':
      return new MlmDataset(src.txt, src.img, { ...common, jointMasking: s.jointMasking }) as TaskDataset<unknown>;
    case 'mrfr':
      return new MrfrDataset(src.txt, src.img, { ...common, maskProb: s.mrmProb, jointMasking: s.jointMasking }) as TaskDataset<unknown>;
    case 'mrc':
    case 'mrckl':
      return new MrcDataset(src.txt, src.img, { ...common, maskProb: s.mrmProb, jointMasking: s.jointMasking }) as TaskDataset<unknown>;
    case 'itm':
      return new ItmDataset(src.txt, src.img, { ...common, negProb: s.itmNegProb, ot: s.otLambda > 0 }) as TaskDataset<unknown>;
  }
}

export function otOptions(s: TrainSettings): OtOptions | null {
  return s.otLambda > 0 ? { ...DEFAULT_OT, lambda: s.otLambda } : null;
}

/**
 * The memory check of a run (MemoryLimitError when its estimated peak exceeds what the process
 * can get). pretrain() runs it first; a caller that allocates before pretrain() (the CLI's initial
 * parameters) runs it before that too.
 */
export function checkRunMemory(opts: Pick<PretrainOptions, 'modelConfig' | 'settings' | 'train' | 'val' | 'memoryLimit'>) {
  const { modelConfig: cfg, settings: s } = opts;
  const input = pretrainMemoryInput({
    model: cfg,
    tasks: [...new Set(opts.train.flatMap((d) => d.tasks))],
    trainBatchTokens: s.trainBatchTokens,
    valBatchTokens: s.valBatchTokens,
    accumulation: s.accumulation,
    maxSeqLen: longestSequence([...opts.train, ...opts.val], s.maxTxtLen),
    checkpointActivations: s.checkpointActivations,
  });
  return { ...checkTrainingMemory(input, memoryLimitFrom(opts.memoryLimit)), input };
}

/**
 * Run pre-training. A run whose estimated peak memory exceeds what the process can get is refused
 * before anything is allocated or written (MemoryLimitError); an allocation that fails anyway
 * ("Array buffer allocation failed") becomes an error naming the step, the estimate and the
 * checkpoint to resume from.
 */
export async function pretrain(opts: PretrainOptions): Promise<PretrainResult> {
  const { estimate, input: memInput, available } = checkRunMemory(opts);
  const at = { step: 0 };
  try {
    return await runPretrain(opts, at);
  } catch (e) {
    if (!isOutOfMemory(e)) throw e;
    const ck = path.join(opts.outDir, 'ckpt');
    throw new MemoryLimitError(
      `pre-training ran out of memory at step ${at.step + 1} (${(e as Error).name}: ${(e as Error).message}). ${describeEstimate(estimate, memInput)}; ` +
        `${available ? `the process could get ${fmtBytes(available.bytes)} (${available.source}) when it started` : 'the memory check was off'}. ` +
        `Lower train_batch_size or the model size${fs.existsSync(path.join(ck, 'latest')) ? `; the checkpoints in ${ck} can be resumed with --resume` : ''}`,
      { cause: e },
    );
  }
}

async function runPretrain(opts: PretrainOptions, at: { step: number }): Promise<PretrainResult> {
  const { modelConfig: cfg, settings: s } = opts;
  const t0 = Date.now();
  const say = opts.say ?? ((m: string) => (opts.quiet ? undefined : process.stderr.write(m + '\n')));
  const identity = runIdentity(cfg, s, opts.train);
  const claim = { resume: opts.resume, overwrite: opts.overwrite, identity, allowChanged: opts.allowChanged, say };
  const recorded = claimRunFolder(opts.outDir, claim);
  fs.mkdirSync(opts.outDir, { recursive: true });
  const specs = allSpecs(cfg, 'pretrain').filter((p) => !TIES[p.name]);
  const params = initParams(specs, cfg.initializer_range, s.seed);
  if (opts.initial) for (const [k, v] of opts.initial) if (params.has(k)) params.set(k, v);
  const runner = new UniterRunner(cfg, params, opts.threads, { checkpointActivations: s.checkpointActivations });
  const values = new Map<string, Float32Array>();
  const shapes = new Map<string, number[]>();
  for (const [k, v] of params) {
    values.set(k, v.data as Float32Array);
    shapes.set(k, v.shape);
  }
  const groups = Object.entries(s.lrMultipliers ?? {}).map(([sub, m]) => groupByNameSubstring(sub, sub, m));
  const optimizer = new AdamW(values, shapes, { betas: s.betas, eps: 1e-6, weightDecay: s.weightDecay, groups });

  // One loader per <task>_<dataset>.
  const loaders = new Map<string, AnyLoader>();
  let dropped = 0;
  for (const src of opts.train) {
    for (const task of src.tasks) {
      const name = mixName(task, src.name);
      const loader = new TaskLoader(buildDataset(task, src, s, opts.specialIds), { seed: s.seed, batchTokens: s.trainBatchTokens, maxTxtLen: s.maxTxtLen, dropLast: true });
      loaders.set(name, loader);
      if (task === 'mlm' || !src.tasks.includes('mlm')) dropped = Math.max(dropped, loader.dropped);
    }
  }
  const mixer = new TaskMixer(
    opts.train.map((d) => ({ name: d.name, tasks: d.tasks, mix_ratio: d.mix_ratio ?? d.tasks.map(() => 1) })),
    new Rng(s.seed, 'mixer'),
  );

  let step = 0;
  if (opts.resume) {
    const ck = loadLatestCheckpoint(opts.outDir, { loadOptimizer: true, onFallback: say });
    // The checkpoint's own record wins (it is what the state was produced with), then run.json.
    if (ck?.trainer.identity) checkIdentity(opts.outDir, path.join(ck.dir, 'trainer.json'), ck.trainer.identity, claim);
    else if (recorded) checkIdentity(opts.outDir, path.join(opts.outDir, RUN_FILE), recorded, claim);
    if (ck) {
      for (const [k, v] of ck.params) {
        const p = params.get(k);
        if (!p) throw new Error(`${ck.dir}: checkpoint has parameter '${k}' that this model does not`);
        if (p.data.length !== v.length) throw new Error(`${ck.dir}: parameter '${k}' has ${v.length} values, the model needs ${p.data.length}`);
        (p.data as Float32Array).set(v);
      }
      if (ck.optimizer) optimizer.loadState(ck.optimizer, `${ck.dir}/optimizer.safetensors`);
      if (ck.trainer.mixer) mixer.restore(ck.trainer.mixer);
      for (const [name, st] of Object.entries(ck.trainer.samplers)) loaders.get(name)?.restore(st as never);
      step = ck.step;
    }
  }

  // A run killed after its last checkpoint (while writing the model folder) resumes at the last
  // step and validates again: its earlier final validation records go, or the log would hold two.
  const redo = step >= s.steps ? (r: Record<string, unknown>) => r.type === 'val' && r.step === step : undefined;
  const logger = new JsonlLogger(path.join(opts.outDir, 'log.jsonl'), { resumeFromStep: step, redo });
  const progress = new ProgressDisplay({ total: s.steps, startStep: step, quiet: opts.quiet, stream: process.stderr });
  const losses: PretrainResult['losses'] = [];
  const ot = otOptions(s);
  const validation: Record<string, TaskMetrics> = {};
  const endStep = Math.min(s.steps, opts.stopAtStep ?? s.steps);

  const validate = async (atStep: number, final: boolean) => {
    for (const src of opts.val) {
      for (const task of src.tasks) {
        const ds = buildDataset(task, src, s, opts.specialIds);
        const m = await evaluateTask(runner, task, ds, { tokens: s.valBatchTokens, seed: s.seed, ot, maxBatches: final ? undefined : s.valBatches });
        const key = opts.val.length > 1 ? mixName(task, src.name) : task;
        validation[key] = m;
        logger.log({ type: 'val', step: atStep, task: key, ...m });
        progress.log(`validation @${atStep} ${key}: ${Object.entries(m).map(([k, v]) => `${k}=${typeof v === 'number' ? v.toFixed(4) : v}`).join(' ')}`);
      }
    }
  };

  const save = () =>
    saveCheckpoint(
      opts.outDir,
      {
        step,
        params: values,
        shapes,
        ties: TIES,
        optimizer: optimizer.state(),
        mixer: mixer.state(),
        samplers: Object.fromEntries([...loaders].map(([k, l]) => [k, l.state()])),
        config: { model: cfg, run: opts.runConfig ?? null },
        identity,
      },
      { keepLast: s.keepCheckpoints },
    );

  while (step < endStep) {
    at.step = step;
    const name = mixer.next();
    const { task } = parseMixName(name);
    const loader = loaders.get(name)!;
    const grads = new Map<string, Float32Array>();
    let lossSum = 0;
    let tokens = 0;
    const time = newStepTime();
    const stepStart = performance.now();
    for (let micro = 0; micro < s.accumulation; micro++) {
      let t = performance.now();
      const { batch } = loader.next();
      time.data += (performance.now() - t) / 1000;
      const out = await runner.run(task as PretrainTask, batch, {
        training: true,
        grads: true,
        ot: task === 'itm' ? ot : null,
        imgMasks: batch.has('img_masks'),
        dropout: { seed: s.seed, step: step * s.accumulation + micro },
        timings: time,
      });
      t = performance.now();
      lossSum += Number(out.get('loss')!.data[0]);
      const attn = batch.get('attn_masks')!;
      tokens += attn.shape[0] * attn.shape[1];
      for (const [k, v] of out) {
        if (!k.startsWith('grad.')) continue;
        const pname = k.slice(5);
        const prev = grads.get(pname);
        if (!prev) grads.set(pname, v.data as Float32Array);
        else {
          const a = v.data as Float32Array;
          for (let i = 0; i < a.length; i++) prev[i] += a[i];
        }
      }
      time.grads += (performance.now() - t) / 1000;
    }
    const t = performance.now();
    step++;
    const loss = lossSum / s.accumulation;
    if (!Number.isFinite(loss)) throw new Error(`step ${step} (${name}): loss is ${loss}; stopping before the parameters are changed or saved`);
    // The global norm only when clipping needs it; the clipping itself happens inside the update.
    const gradNorm = s.gradNorm > 0 ? globalGradNorm(grads) : null;
    if (gradNorm !== null && !Number.isFinite(gradNorm)) throw new Error(`step ${step} (${name}): gradient norm is ${gradNorm}; stopping before the parameters are changed or saved`);
    const lr = learningRateAt(step, { kind: s.schedule, peakLr: s.learningRate, warmupSteps: s.warmupSteps, totalSteps: s.steps });
    optimizer.step(grads, lr, gradNorm === null ? 1 : clipScale(gradNorm, s.gradNorm));
    time.optimizer = (performance.now() - t) / 1000;
    time.step = (performance.now() - stepStart) / 1000;
    losses.push({ step, task: name, loss });
    if (step % s.logEvery === 0 || step === 1) logger.log({ type: 'train', step, task: name, loss, lr, ...(gradNorm === null ? {} : { grad_norm: gradNorm }), tokens, time: roundedTime(time) });
    progress.update({ step, task: name, loss, lr, tokens });
    opts.onStep?.({ step, task: name, loss, lr, gradNorm, tokens });
    if (s.validEvery > 0 && step % s.validEvery === 0 && step < s.steps) await validate(step, false);
    if (s.saveEvery > 0 && step % s.saveEvery === 0 && step < endStep) save();
  }
  if (step >= s.steps) await validate(step, true);
  save();
  // The final model as a from_pretrained folder (config.json + model.safetensors) for fine-tuning and export.
  if (step >= s.steps) saveModelFolder(path.join(opts.outDir, 'model'), cfg as unknown as Record<string, unknown>, values, shapes, { ties: TIES });
  progress.done();
  logger.close();
  return { steps: step, seconds: (Date.now() - t0) / 1000, params, validation, losses, droppedLongCaptions: dropped };
}
