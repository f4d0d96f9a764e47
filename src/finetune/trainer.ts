/**
 * The fine-tuning loop shared by every downstream task (official train_vqa.py, train_ve.py,
 * train_nlvr2.py, train_vcr.py, train_itm.py, train_re.py all follow it):
 *
 *   micro-batches of the task (gradients summed, per-micro-batch mean losses) -> global-norm clip
 *   -> AdamW with the linear warm-up/decay schedule, the task head at lr x lrMultiplier
 *   -> JSON Lines log + progress line -> validation every `validEvery` steps and at the end,
 *   with the task metric deciding which weights are kept as the model folder OUT/best
 *   -> atomic checkpoints OUT/ckpt/step_N with exact resume (parameters, AdamW moments, sampler
 *   position, best-so-far; dropout masks and per-batch draws are functions of (seed, step)).
 *
 * A task plugs in through a `FinetuneJob`: where its training batches come from, which graph
 * scores them, which parameters form the head, and how it is evaluated. Initial weights come
 * from `initialFinetuneParams` (a pre-trained checkpoint loaded non-strictly, with the task's
 * surgery applied to the checkpoint first).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { HostTensor } from '../engine/host.js';
import type { DropoutSeed } from '../engine/runtime.js';
import type { Batch } from '../data/types.js';
import type { UniterConfig } from '../model/config.js';
import { allSpecs, initParams, TIES, type HeadName, type HeadOptions } from '../model/params.js';
import { loadNonStrict, readWeightsAny, type LoadReport } from '../model/load.js';
import { UniterRunner } from '../model/runner.js';
import type { DownstreamTask } from '../model/task-graphs.js';
import { AdamW, clipScale, globalGradNorm } from '../pretrain/optimizer.js';
import { StepTime, newStepTime, roundedTime } from '../pretrain/step-time.js';
import { learningRateAt } from '../pretrain/schedule.js';
import { CONFIG_FILE, LATEST_FILE, MODEL_FILE, TRAINER_FILE, checkpointRoot, loadLatestCheckpoint, saveCheckpoint, saveModelFolder } from '../pretrain/checkpoint.js';
import { JsonlLogger, ProgressDisplay } from '../pretrain/progress.js';
import type { TrainLoopSettings } from '../pretrain/settings.js';
import { writeFileAtomic } from '../util/atomic.js';
import { readJsonObject } from '../util/json.js';

/** Fine-tuning settings: the shared loop settings plus the evaluation batch, head rate and dropout. */
export interface FinetuneSettings extends TrainLoopSettings {
  /** Evaluation batch size (official val_batch_size): tokens, except VCR which counts examples as the official VCR trainer. */
  valBatchSize: number;
  /** Rate multiplier of the head's parameters (official lr_mul: VQA 10, others 1). */
  lrMultiplier: number;
  /** Dropout of the encoder (official set_dropout). */
  dropout: number;
}

/** An endless, resumable stream of training micro-batches. */
export interface TrainBatchSource {
  next(): { batch: Batch; examples: number };
  state(): unknown;
  restore(state: unknown): void;
  /** Training examples left out by the max_txt_len filter. */
  readonly dropped?: number;
}

/** What one micro-batch contributed. */
export interface MicroStep {
  loss: number;
  grads: Map<string, Float32Array>;
  /** Token slots (padding included) processed. */
  tokens: number;
}

/** Metrics of one evaluation, by split ('val', 'test'), and the result files it produced. */
export interface Evaluation {
  /** Quality metrics by split (logged and charted; the 'val' one picks OUT/best). */
  metrics: Record<string, Record<string, number>>;
  /** Examples scored, by split. */
  examples?: Record<string, number>;
  /** Written under OUT/results/ (file name -> content). */
  files?: Array<{ name: string; content: string }>;
}

export interface EvaluateOptions {
  /** The last evaluation of the run (tasks may add work only then, e.g. VCR test-mode scoring). */
  final: boolean;
  /** Goes into result file names ('step_600'). */
  tag: string;
}

export interface FinetuneJob {
  /** Short task name used in logs, reports and checks on resume ('vqa', 'nlvr2'); no underscore. */
  name: string;
  graphTask: DownstreamTask;
  graphOptions?: HeadOptions & { sampleSize?: number; reRankMargin?: number | null };
  /** Parameters trained at lr x lrMultiplier. */
  isHeadParam(name: string): boolean;
  /** Metric of the 'val' split that chooses OUT/best (higher is better). */
  selectMetric: string;
  train: TrainBatchSource;
  /** Replaces the default micro-step (next batch -> forward/backward), e.g. for hard-negative mining. */
  microStep?(runner: UniterRunner, dropout: DropoutSeed, time?: StepTime): Promise<MicroStep>;
  evaluate(runner: UniterRunner, opts: EvaluateOptions): Promise<Evaluation>;
  /** Names of the answer head's rows (VQA answers, VE classes): written to OUT/best/config.json as id2label. */
  labels?: readonly string[];
}

export interface StepInfo {
  step: number;
  loss: number;
  lr: number;
  /** Global gradient norm before clipping; null when clipping is off (not computed). */
  gradNorm: number | null;
  tokens: number;
}

export interface FinetuneOptions {
  job: FinetuneJob;
  /** The model configuration of `params` (vocabulary and token-type sizes as trained). */
  modelConfig: UniterConfig;
  /** Initial parameters by primary name (see initialFinetuneParams); updated in place. */
  params: Map<string, HostTensor>;
  settings: FinetuneSettings;
  outDir: string;
  /** Continue from OUT/ckpt/latest. Without it, an OUT that already holds checkpoints is an error. */
  resume?: boolean;
  quiet?: boolean;
  /** Stop (with a checkpoint) after this step, as if interrupted; the run can be resumed. */
  stopAtStep?: number;
  /** Saved with checkpoints (what started the run). */
  runConfig?: unknown;
  threads?: number;
  /** Messages for the user (validation results, best model saved). Default: stderr unless quiet. */
  log?: (message: string) => void;
  onStep?: (info: StepInfo) => void;
}

export interface BestModel {
  step: number;
  metric: string;
  value: number;
  metrics: Record<string, Record<string, number>>;
  dir: string;
}

export interface FinetuneResult {
  steps: number;
  seconds: number;
  params: Map<string, HostTensor>;
  /** The last evaluation's metrics by split (empty when the run stopped before any). */
  validation: Record<string, Record<string, number>>;
  best: BestModel | null;
  /** Loss of every step run in this session. */
  losses: Array<{ step: number; loss: number }>;
  /** Step the session resumed from (null for a fresh run). */
  resumedFrom: number | null;
  droppedLongTexts: number;
}

export const BEST_DIR = 'best';
export const BEST_INFO_FILE = 'best.json';
export const RESULTS_DIR = 'results';

/** Encoder dropout as the run's settings say (official set_dropout). */
export function withDropout(cfg: UniterConfig, dropout: number): UniterConfig {
  return { ...cfg, hidden_dropout_prob: dropout, attention_probs_dropout_prob: dropout };
}

/** The default micro-step: next batch, forward + backward of the job's graph. */
async function defaultMicroStep(job: FinetuneJob, runner: UniterRunner, dropout: DropoutSeed, time: StepTime): Promise<MicroStep> {
  const t = performance.now();
  const { batch } = job.train.next();
  time.data += (performance.now() - t) / 1000;
  const out = await runner.run(job.graphTask, batch, { training: true, grads: true, ...job.graphOptions, dropout, timings: time });
  const grads = new Map<string, Float32Array>();
  for (const [k, v] of out) if (k.startsWith('grad.')) grads.set(k.slice(5), v.data as Float32Array);
  const attn = batch.get('attn_masks');
  return { loss: Number(out.get('loss')!.data[0]), grads, tokens: attn ? attn.shape[0] * attn.shape[1] : 0 };
}

function addInto(acc: Map<string, Float32Array>, grads: Map<string, Float32Array>): void {
  for (const [k, g] of grads) {
    const prev = acc.get(k);
    if (!prev) acc.set(k, g);
    else for (let i = 0; i < g.length; i++) prev[i] += g[i];
  }
}

interface SavedExtra {
  job: string;
  best: Omit<BestModel, 'dir'> | null;
  settings: FinetuneSettings;
}

export async function finetune(opts: FinetuneOptions): Promise<FinetuneResult> {
  const { job, settings: s } = opts;
  const t0 = Date.now();
  const say = opts.log ?? ((m: string) => (opts.quiet ? undefined : process.stderr.write(m + '\n')));
  checkSettings(s);
  const outDir = path.resolve(opts.outDir);
  fs.mkdirSync(outDir, { recursive: true });
  const cfg = withDropout(opts.modelConfig, s.dropout);
  const params = opts.params;
  const runner = new UniterRunner(cfg, params, opts.threads, { checkpointActivations: s.checkpointActivations });
  runner.validate(job.graphTask as HeadName, { training: true, grads: true, ...job.graphOptions });
  const values = new Map<string, Float32Array>();
  const shapes = new Map<string, number[]>();
  for (const [k, v] of params) {
    if (!(v.data instanceof Float32Array)) throw new Error(`parameter '${k}' is ${v.dtype}, expected float32`);
    values.set(k, v.data);
    shapes.set(k, v.shape);
  }
  const optimizer = new AdamW(values, shapes, {
    betas: s.betas,
    eps: 1e-6,
    weightDecay: s.weightDecay,
    groups: [{ name: 'head', match: (n) => job.isHeadParam(n), lrMultiplier: s.lrMultiplier }],
  });

  let step = 0;
  let best: Omit<BestModel, 'dir'> | null = null;
  let resumedFrom: number | null = null;
  const existing = fs.existsSync(path.join(checkpointRoot(outDir), LATEST_FILE));
  if (existing && !opts.resume) throw new Error(`${outDir} already holds a fine-tuning run (ckpt/${LATEST_FILE}); pass --resume to continue it or choose another output directory`);
  if (opts.resume) {
    const ck = loadLatestCheckpoint(outDir, { loadOptimizer: true });
    if (ck) {
      const extra = ck.trainer.extra as Partial<SavedExtra>;
      if (extra.job !== job.name) throw new Error(`${ck.dir}: this checkpoint belongs to task '${String(extra.job)}', not '${job.name}'`);
      for (const [k, v] of ck.params) {
        const p = values.get(k);
        if (!p) throw new Error(`${ck.dir}: checkpoint has parameter '${k}' that this model does not`);
        if (p.length !== v.length) throw new Error(`${ck.dir}: parameter '${k}' has ${v.length} values, the model needs ${p.length}`);
        p.set(v);
      }
      for (const k of values.keys()) if (!ck.params.has(k)) throw new Error(`${ck.dir}: checkpoint lacks parameter '${k}'`);
      if (ck.optimizer) optimizer.loadState(ck.optimizer, path.join(ck.dir, 'optimizer.safetensors'));
      const samplerState = ck.trainer.samplers.train;
      if (samplerState === undefined) throw new Error(`${ck.dir}: ${TRAINER_FILE} has no training sampler state`);
      job.train.restore(samplerState);
      const changed = extra.settings ? (Object.keys(s) as Array<keyof FinetuneSettings>).filter((k) => JSON.stringify(s[k]) !== JSON.stringify(extra.settings![k])) : [];
      if (changed.length) say(`warning: resuming with settings that differ from the run's: ${changed.map((k) => `${k} ${JSON.stringify(extra.settings![k])} -> ${JSON.stringify(s[k])}`).join(', ')}`);
      best = extra.best ?? null;
      step = ck.step;
      resumedFrom = step;
      say(`resuming ${job.name} from ${ck.dir} (step ${step})`);
    } else say(`--resume: no checkpoint in ${outDir}; starting a new run`);
  }

  const logger = new JsonlLogger(path.join(outDir, 'log.jsonl'), { resumeFromStep: step });
  const progress = new ProgressDisplay({ total: s.steps, startStep: step, quiet: opts.quiet, stream: process.stderr });
  const losses: FinetuneResult['losses'] = [];
  let validation: Record<string, Record<string, number>> = {};
  const endStep = Math.min(s.steps, opts.stopAtStep ?? s.steps);
  const bestDir = path.join(outDir, BEST_DIR);

  const save = () =>
    saveCheckpoint(
      outDir,
      {
        step,
        params: values,
        shapes,
        ties: TIES,
        optimizer: optimizer.state(),
        samplers: { train: job.train.state() },
        config: { model: cfg, run: opts.runConfig ?? null },
        extra: { job: job.name, best, settings: s } satisfies SavedExtra,
      },
      { keepLast: s.keepCheckpoints },
    );

  const validate = async (final: boolean) => {
    const ev = await job.evaluate(runner, { final, tag: `step_${step}` });
    validation = ev.metrics;
    for (const [split, m] of Object.entries(ev.metrics)) {
      logger.log({ type: 'val', step, task: `${job.name}_${split}`, ...m });
      progress.log(`validation @${step} ${split}: ${Object.entries(m).map(([k, v]) => `${k}=${Number.isInteger(v) ? v : v.toFixed(4)}`).join(' ')}`);
    }
    for (const f of ev.files ?? []) writeFileAtomic(path.join(outDir, RESULTS_DIR, f.name), f.content);
    const value = ev.metrics.val?.[job.selectMetric];
    if (value === undefined) throw new Error(`task ${job.name}: evaluation gave no 'val' metric '${job.selectMetric}' to choose the best model by`);
    if (best === null || value > best.value) {
      best = { step, metric: job.selectMetric, value, metrics: ev.metrics };
      const recordedData = (opts.runConfig as { data?: unknown } | undefined)?.data;
      saveModelFolder(bestDir, { ...cfg, ...(job.labels ? { id2label: Object.fromEntries(job.labels.map((l, i) => [String(i), l])) } : {}) }, values, shapes, {
        ties: TIES,
        card: { trainedBy: `uniter finetune ${job.name} (best by val ${job.selectMetric} at step ${step})`, task: job.name, steps: step, metrics: ev.metrics, data: typeof recordedData === 'string' ? recordedData : undefined },
      });
      writeFileAtomic(path.join(outDir, BEST_INFO_FILE), JSON.stringify(best, null, 1) + '\n');
      progress.log(`best model so far (val ${job.selectMetric} ${value.toFixed(4)} at step ${step}) -> ${bestDir}`);
    }
  };

  const micro = job.microStep ? (d: DropoutSeed, t: StepTime) => job.microStep!(runner, d, t) : (d: DropoutSeed, t: StepTime) => defaultMicroStep(job, runner, d, t);
  let validatedAt = -1;
  while (step < endStep) {
    const grads = new Map<string, Float32Array>();
    let lossSum = 0;
    let tokens = 0;
    const time = newStepTime();
    const stepStart = performance.now();
    for (let m = 0; m < s.accumulation; m++) {
      const r = await micro({ seed: s.seed, step: step * s.accumulation + m }, time);
      const t = performance.now();
      lossSum += r.loss;
      tokens += r.tokens;
      addInto(grads, r.grads);
      time.grads += (performance.now() - t) / 1000;
    }
    const t = performance.now();
    // The global norm only when clipping needs it; the clipping itself happens inside the update.
    const gradNorm = s.gradNorm > 0 ? globalGradNorm(grads) : null;
    step++;
    const loss = lossSum / s.accumulation;
    if (!Number.isFinite(loss) || (gradNorm !== null && !Number.isFinite(gradNorm))) throw new Error(`${job.name} step ${step}: loss ${loss}, gradient norm ${gradNorm}; stopping before the parameters are changed or saved`);
    const lr = learningRateAt(step, { kind: 'linear', peakLr: s.learningRate, warmupSteps: s.warmupSteps, totalSteps: s.steps });
    optimizer.step(grads, lr, gradNorm === null ? 1 : clipScale(gradNorm, s.gradNorm));
    time.optimizer = (performance.now() - t) / 1000;
    time.step = (performance.now() - stepStart) / 1000;
    losses.push({ step, loss });
    if (step % s.logEvery === 0 || step === 1) logger.log({ type: 'train', step, task: job.name, loss, lr, ...(gradNorm === null ? {} : { grad_norm: gradNorm }), tokens, time: roundedTime(time) });
    progress.update({ step, task: job.name, loss, lr, tokens });
    opts.onStep?.({ step, loss, lr, gradNorm, tokens });
    if ((s.validEvery > 0 && step % s.validEvery === 0) || step === s.steps) {
      await validate(step === s.steps);
      validatedAt = step;
    }
    if (s.saveEvery > 0 && step % s.saveEvery === 0 && step < endStep) save();
  }
  if (step >= s.steps && validatedAt !== step && resumedFrom === step) {
    // Resumed a finished run: nothing to train; evaluate so the caller gets metrics.
    await validate(true);
  }
  save();
  progress.done();
  logger.close();
  const finalBest = best as Omit<BestModel, 'dir'> | null;
  return {
    steps: step,
    seconds: (Date.now() - t0) / 1000,
    params,
    validation,
    best: finalBest ? { ...finalBest, dir: bestDir } : null,
    losses,
    resumedFrom,
    droppedLongTexts: job.train.dropped ?? 0,
  };
}

function checkSettings(s: FinetuneSettings): void {
  const ints: Array<keyof FinetuneSettings> = ['trainBatchTokens', 'valBatchSize', 'accumulation', 'steps', 'keepCheckpoints', 'logEvery'];
  for (const k of ints) {
    const v = s[k] as number;
    if (!(Number.isSafeInteger(v) && v >= 1)) throw new Error(`fine-tune settings: '${k}' must be an integer >= 1 and <= 2^53 - 1, got ${v}`);
  }
  for (const k of ['warmupSteps', 'validEvery', 'saveEvery', 'seed', 'maxTxtLen'] as const) {
    if (!(Number.isSafeInteger(s[k]) && s[k] >= 0)) throw new Error(`fine-tune settings: '${k}' must be an integer >= 0 and <= 2^53 - 1, got ${s[k]}`);
  }
  if (!(s.learningRate > 0)) throw new Error(`fine-tune settings: 'learningRate' must be > 0, got ${s.learningRate}`);
  if (!(s.lrMultiplier > 0)) throw new Error(`fine-tune settings: 'lrMultiplier' must be > 0, got ${s.lrMultiplier}`);
  if (!(s.dropout >= 0 && s.dropout < 1)) throw new Error(`fine-tune settings: 'dropout' must be in [0, 1), got ${s.dropout}`);
}

// ---------------------------------------------------------------------------------------------
// Initial weights

export interface InitialWeights {
  params: Map<string, HostTensor>;
  /** What the non-strict load did (null for a fresh initialization). */
  report: LoadReport | null;
}

export interface SurgeryHooks {
  /** Change the checkpoint's tensors before loading (official task-time surgery: grow token types...). */
  adaptSource?(source: Map<string, HostTensor>): void;
  /** Change the loaded parameters (e.g. retrieval's rank_output from itm_output). */
  afterLoad?(params: Map<string, HostTensor>, report: LoadReport): void;
}

/**
 * Parameters of `head` for `cfg`: the official initialization, with the checkpoint (model
 * folder, safetensors, or PyTorch file; null = none) loaded over it non-strictly after the
 * task's surgery. Tied aliases are not materialised.
 */
export function initialFinetuneParams(cfg: UniterConfig, head: HeadName, headOpts: HeadOptions, seed: number, checkpoint: string | null, hooks: SurgeryHooks = {}): InitialWeights {
  const specs = allSpecs(cfg, head, headOpts).filter((p) => !TIES[p.name]);
  const params = initParams(specs, cfg.initializer_range, seed);
  if (!checkpoint) return { params, report: null };
  const source = readWeightsAny(checkpoint);
  hooks.adaptSource?.(source);
  const report = loadNonStrict(params, source, checkpoint);
  hooks.afterLoad?.(params, report);
  return { params, report };
}

/** Where the default pre-trained weights live: the output of `uniter pretrain` without options. */
export const DEFAULT_PRETRAIN_RUN = path.join('runs', 'pretrain-default');

/**
 * The weights a `--checkpoint` names: a model folder or checkpoint step directory (holds
 * model.safetensors), a training run directory (its ckpt/latest), a fine-tuning run (its best/),
 * or a weights file. Throws naming the path when nothing loadable is there.
 */
export function resolveWeightsPath(p: string): string {
  if (!fs.existsSync(p)) throw new Error(`checkpoint '${p}' does not exist`);
  if (!fs.statSync(p).isDirectory()) return p;
  if (fs.existsSync(path.join(p, MODEL_FILE))) return p;
  if (fs.existsSync(path.join(p, BEST_DIR, MODEL_FILE))) return path.join(p, BEST_DIR);
  const pointer = path.join(checkpointRoot(p), LATEST_FILE);
  if (fs.existsSync(pointer)) {
    const dir = path.join(checkpointRoot(p), fs.readFileSync(pointer, 'utf8').trim());
    if (fs.existsSync(path.join(dir, MODEL_FILE))) return dir;
    throw new Error(`${pointer} names ${dir}, which holds no ${MODEL_FILE}`);
  }
  throw new Error(`checkpoint '${p}': a directory without ${MODEL_FILE}, ${BEST_DIR}/ or ckpt/${LATEST_FILE}`);
}

/**
 * The model configuration stored with weights, when there is one: config.json of a model folder
 * (or next to a weights file), or the model config a checkpoint's trainer.json records.
 */
export function configNextToWeights(weights: string): Record<string, unknown> | null {
  const isDir = fs.statSync(weights).isDirectory();
  const dir = isDir ? weights : path.dirname(weights);
  // A weights file written by `uniter convert --to-torch` has its config beside it as STEM.config.json.
  const sidecar = isDir ? null : path.join(dir, `${path.basename(weights).replace(/\.[^.]*$/, '')}.config.json`);
  if (sidecar && fs.existsSync(sidecar)) return readJsonObject(sidecar, 'model config');
  const cfgFile = path.join(dir, CONFIG_FILE);
  if (fs.existsSync(cfgFile)) return readJsonObject(cfgFile, 'model config');
  const trainerFile = path.join(dir, TRAINER_FILE);
  if (fs.existsSync(trainerFile)) {
    const t = readJsonObject(trainerFile, 'trainer state');
    const model = (t.config as { model?: unknown } | null)?.model;
    if (model && typeof model === 'object' && !Array.isArray(model)) return model as Record<string, unknown>;
  }
  return null;
}

/** What the run (pre-training or fine-tuning) that wrote these weights recorded (trainer.json config.run), and where. */
export function recordedRun(weights: string): { file: string; run: Record<string, unknown> } | null {
  const dir = fs.statSync(weights).isDirectory() ? weights : path.dirname(weights);
  const candidates = [path.join(dir, TRAINER_FILE)];
  // A run's best/ (fine-tuning) or model/ (pre-training) folder: the run's latest checkpoint records the run.
  const pointer = path.join(checkpointRoot(path.dirname(dir)), LATEST_FILE);
  if (fs.existsSync(pointer)) candidates.push(path.join(checkpointRoot(path.dirname(dir)), fs.readFileSync(pointer, 'utf8').trim(), TRAINER_FILE));
  for (const file of candidates) {
    if (!fs.existsSync(file)) continue;
    const t = readJsonObject(file, 'trainer state');
    const run = (t.config as { run?: unknown } | null)?.run;
    if (run && typeof run === 'object' && !Array.isArray(run)) return { file, run: run as Record<string, unknown> };
  }
  return null;
}
