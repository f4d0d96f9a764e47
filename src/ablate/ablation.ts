/**
 * The pre-training ablation (UNITER Table 2) on the synthetic world: for every seed and variant,
 * pre-train the embedded default's tiny model on the variant's tasks with the pre-training
 * trainer, fine-tune the result on each downstream task with the fine-tuning trainer, and score
 * the final model on the task's test split.
 *
 * Work is shared where that changes nothing measured: one world per seed serves every variant of
 * that seed (pre-training and all tasks), and the no-pre-training variant runs no pre-training.
 *
 * Layout of OUT (a rerun with the same OUT resumes):
 *   ablation-config.json            what the cells were run with; a rerun must match it
 *   cells/VARIANT/seed-N/pretrain/  the pre-training run (log, final model folder)
 *   cells/VARIANT/seed-N/pretrain.json, TASK.json   finished phases (skipped on rerun)
 *   cells/VARIANT/seed-N/ft-TASK/   the fine-tuning run (log, results files)
 *   cells/VARIANT/seed-N/cell.json  the finished cell
 *   ablation.json / .md / .svg / -metasum.svg   the table, rewritten after every cell
 * Checkpoints are deleted once their phase is recorded; they only serve resuming that phase.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { WorldPreset } from '../data/world.js';
import type { UniterConfig } from '../model/config.js';
import { UniterRunner } from '../model/runner.js';
import { DEFAULT_OT } from '../model/task-graphs.js';
import { embeddedDefault, embeddedRecipe, type EmbeddedDefault } from '../pretrain/run.js';
import { pretrain, type PretrainSource, type TrainSettings } from '../pretrain/trainer.js';
import { defaultSettings } from '../finetune/defaults.js';
import { getTask, taskDataFromWorld, worldStores } from '../finetune/task-registry.js';
import { BEST_DIR, finetune, initialFinetuneParams, type FinetuneSettings } from '../finetune/trainer.js';
import { checkpointRoot } from '../pretrain/checkpoint.js';
import { writeFileAtomic } from '../util/atomic.js';
import { cellScores, summarise, writeReport, type AblationReport, type CellResult, type PhaseTime } from './table.js';
import { DOWNSTREAM_TASKS, type DownstreamName, type Variant } from './variants.js';
import { readJsonFile } from '../util/json.js';

export interface AblationOptions {
  outDir: string;
  /** Seed values; each gives its own world, initialization, data order and dropout. */
  seeds: readonly number[];
  variants: readonly Variant[];
  pretrainSteps: number;
  finetuneSteps: Record<DownstreamName, number>;
  /** World preset (tests: 'tiny'). */
  world?: WorldPreset;
  /** Fields over the embedded default's model (tests: a smaller model). */
  model?: Partial<UniterConfig>;
  threads?: number;
  /** One line per finished phase. */
  log?: (message: string) => void;
}

export interface AblationResult {
  report: AblationReport;
  files: Record<string, string>;
  /** Cells run in this session (the others were read from OUT). */
  ran: number;
  reused: number;
}

export const CONFIG_FILE = 'ablation-config.json';

function readJson<T>(file: string): T {
  return readJsonFile(file, 'an ablation record', (m) => new Error(`${m}; delete it to redo that phase`)) as T;
}

/** Wall and CPU time of `fn` (CPU of the whole process: ONNX Runtime's threads included). */
async function timed<T>(steps: (r: T) => number, fn: () => Promise<T>): Promise<{ value: T; time: PhaseTime }> {
  const t0 = Date.now();
  const c0 = process.cpuUsage();
  const value = await fn();
  const c = process.cpuUsage(c0);
  return { value, time: { steps: steps(value), seconds: (Date.now() - t0) / 1000, cpu_seconds: (c.user + c.system) / 1e6 } };
}

/** The settings that decide what a cell computes: a rerun into the same OUT must keep them. */
function runIdentity(o: AblationOptions): Record<string, unknown> {
  // The recipe (world options, model, settings, mix) comes from the embedded default, which changes
  // between releases: a cell computed with another recipe must not be mixed into this table.
  const { world, model, settings, tasks, mixRatio } = embeddedRecipe({ steps: o.pretrainSteps, world: { preset: o.world ?? 'default' } });
  const { seed: _seed, ...seedless } = settings;
  const recipe = { world, model: { ...model, ...(o.model ?? {}) }, settings: seedless, tasks, mixRatio };
  return { pretrainSteps: o.pretrainSteps, finetuneSteps: o.finetuneSteps, world: o.world ?? 'default', model: o.model ?? {}, recipe };
}

function checkIdentity(outDir: string, id: Record<string, unknown>): void {
  const file = path.join(outDir, CONFIG_FILE);
  if (!fs.existsSync(file)) {
    writeFileAtomic(file, JSON.stringify(id, null, 1) + '\n');
    return;
  }
  const prev = readJson<Record<string, unknown>>(file);
  const flag: Record<string, string> = { pretrainSteps: '--pretrain-steps', finetuneSteps: '--finetune-steps', world: '--world', model: 'model', recipe: 'the embedded recipe (world options, model, settings, mix; changed by an update of uniter-ts)' };
  for (const k of Object.keys(id)) {
    if (JSON.stringify(prev[k]) !== JSON.stringify(id[k])) {
      throw new Error(`${outDir} holds an ablation run with ${flag[k] ?? k} ${JSON.stringify(prev[k])}, not ${JSON.stringify(id[k])}: pass the same value to resume it, or choose another --out`);
    }
  }
}

/** The variant's pre-training settings and sources, derived from the embedded default. */
function variantPretrain(d: EmbeddedDefault, v: Variant): { settings: TrainSettings; train: PretrainSource[]; val: PretrainSource[] } {
  // Mix ratios of the tasks the variant keeps come from the embedded default (one place).
  const pick = (src: PretrainSource, withRatios: boolean): PretrainSource => ({
    ...src,
    tasks: [...v.tasks],
    mix_ratio: withRatios ? v.tasks.map((t) => (src.mix_ratio ? src.mix_ratio[src.tasks.indexOf(t)] : undefined) ?? 1) : undefined,
  });
  const lambda = d.settings.otLambda > 0 ? d.settings.otLambda : DEFAULT_OT.lambda;
  return {
    // No intermediate validation: only the final held-out numbers are reported, and it costs time.
    settings: { ...d.settings, validEvery: 0, otLambda: v.wra ? lambda : 0, jointMasking: v.jointMasking },
    train: d.train.map((s) => pick(s, true)),
    val: d.val.map((s) => pick(s, false)),
  };
}

function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

export async function runAblation(o: AblationOptions): Promise<AblationResult> {
  if (o.seeds.length === 0) throw new Error('--seeds: at least one seed is needed');
  if (o.variants.length === 0) throw new Error('--variants: at least one variant is needed');
  const say = o.log ?? (() => undefined);
  const outDir = path.resolve(o.outDir);
  fs.mkdirSync(outDir, { recursive: true });
  checkIdentity(outDir, runIdentity(o));
  const settingsRecord = { ...runIdentity(o), seeds: [...o.seeds], variants: o.variants.map((v) => v.name), threads: o.threads ?? null };

  const cellDir = (v: Variant, seed: number) => path.join(outDir, 'cells', v.name, `seed-${seed}`);
  const cellFile = (v: Variant, seed: number) => path.join(cellDir(v, seed), 'cell.json');
  const done: CellResult[] = [];
  const total = o.seeds.length * o.variants.length;
  let ran = 0;
  let reused = 0;
  const t0 = Date.now();
  const publish = () => writeReport(outDir, summarise(o.variants, done, settingsRecord));

  for (const seed of o.seeds) {
    // One world (and default model/settings) per seed, made only when a cell of the seed needs it.
    let d: EmbeddedDefault | null = null;
    const world = (): EmbeddedDefault => {
      if (!d) {
        const t = Date.now();
        d = embeddedDefault({ steps: o.pretrainSteps, seed, world: { preset: o.world ?? 'default', seed } });
        d.model = { ...d.model, ...(o.model ?? {}) };
        say(`seed ${seed}: world generated in ${((Date.now() - t) / 1000).toFixed(1)} s`);
      }
      return d;
    };
    for (const v of o.variants) {
      if (fs.existsSync(cellFile(v, seed))) {
        done.push(readJson<CellResult>(cellFile(v, seed)));
        reused++;
        continue;
      }
      const cell = await runCell(o, v, seed, cellDir(v, seed), world, (m) => say(`[${done.length + 1}/${total}] ${v.name} seed ${seed}: ${m}`));
      writeFileAtomic(cellFile(v, seed), JSON.stringify(cell, null, 1) + '\n');
      // Checkpoints and fine-tuned weights only served resuming; the cell's numbers are recorded.
      removeDir(checkpointRoot(path.join(cellDir(v, seed), 'pretrain')));
      done.push(cell);
      ran++;
      publish();
      say(`[${done.length}/${total}] ${v.name} seed ${seed}: Meta-Sum ${cell.meta_sum.toFixed(2)} (${DOWNSTREAM_TASKS.length} tasks); ${((Date.now() - t0) / 60000).toFixed(1)} min so far`);
    }
  }
  const files = publish();
  return { report: summarise(o.variants, done, settingsRecord), files, ran, reused };
}

async function runCell(o: AblationOptions, v: Variant, seed: number, dir: string, world: () => EmbeddedDefault, say: (m: string) => void): Promise<CellResult> {
  fs.mkdirSync(dir, { recursive: true });
  let pretrained: string | null = null;
  let pretrainValidation: CellResult['pretrain_validation'] = null;
  let pretrainTime: PhaseTime | null = null;
  if (v.tasks.length > 0) {
    const ptDir = path.join(dir, 'pretrain');
    const record = path.join(dir, 'pretrain.json');
    if (!fs.existsSync(record)) {
      const d = world();
      const p = variantPretrain(d, v);
      const { value, time } = await timed(
        (r) => r.steps,
        () => pretrain({ modelConfig: d.model, settings: p.settings, train: p.train, val: p.val, outDir: ptDir, resume: true, quiet: true, threads: o.threads, runConfig: { ablation: v.name, seed, world: d.world.options, settings: p.settings } }),
      );
      writeFileAtomic(record, JSON.stringify({ validation: value.validation, timing: time }, null, 1) + '\n');
      say(`pre-trained ${v.tasks.join('+')}${v.wra ? ' (WRA)' : ''}${v.jointMasking ? ' (joint masking)' : ''} for ${time.steps} steps in ${time.seconds.toFixed(0)} s`);
    }
    const rec = readJson<{ validation: Record<string, Record<string, number>>; timing: PhaseTime }>(record);
    pretrainValidation = rec.validation;
    pretrainTime = rec.timing;
    pretrained = path.join(ptDir, 'model');
  }

  const metrics: Record<string, Record<string, number>> = {};
  const finetuneTime: Record<string, PhaseTime> = {};
  for (const name of DOWNSTREAM_TASKS) {
    const record = path.join(dir, `${name}.json`);
    if (!fs.existsSync(record)) {
      const { value, time } = await timed((r) => r.steps, () => finetuneTask(o, name, seed, world(), pretrained, path.join(dir, `ft-${name}`)));
      writeFileAtomic(record, JSON.stringify({ test: value.test, timing: time }, null, 1) + '\n');
      removeDir(checkpointRoot(path.join(dir, `ft-${name}`)));
      removeDir(path.join(dir, `ft-${name}`, BEST_DIR));
      say(`${name}: ${time.steps} steps in ${time.seconds.toFixed(0)} s; test ${Object.entries(value.test).map(([k, x]) => `${k} ${x.toFixed(3)}`).join(', ')}`);
    }
    const rec = readJson<{ test: Record<string, number>; timing: PhaseTime }>(record);
    metrics[name] = rec.test;
    finetuneTime[name] = rec.timing;
  }
  const { scores, meta_sum } = cellScores(metrics);
  return { variant: v.name, seed, scores, meta_sum, metrics, pretrain_validation: pretrainValidation, timing: { pretrain: pretrainTime, finetune: finetuneTime } };
}

/** Fine-tune one task from `checkpoint` (null: fresh) with the task's default recipe; the final model's test metrics. */
async function finetuneTask(o: AblationOptions, name: DownstreamName, seed: number, d: EmbeddedDefault, checkpoint: string | null, outDir: string): Promise<{ steps: number; test: Record<string, number> }> {
  const task = getTask(name);
  const data = taskDataFromWorld(worldStores(d.world), task.worldPrefix);
  try {
    const options = { ...task.optionDefaults };
    const plan = task.plan(d.model, options, data, seed);
    // Validation only at the end and no model selection: the reported model is the last one,
    // scored on the test split, so no split is used both to choose and to report.
    const settings: FinetuneSettings = { ...defaultSettings(task, o.finetuneSteps[name]), seed, validEvery: 0, saveEvery: 0 };
    const init = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, seed, checkpoint, plan.hooks);
    const job = task.job({ data, settings, options, plan });
    const r = await finetune({ job, modelConfig: plan.cfg, params: init.params, settings, outDir, resume: true, quiet: true, threads: o.threads, runConfig: { ablation: true, task: name, seed, checkpoint } });
    let test = r.validation.test;
    if (!test) {
      // Tasks whose training-time evaluation covers val only (VQA): score test once here.
      const runner = new UniterRunner(plan.cfg, r.params, o.threads);
      const ev = await task.evaluate(runner, { data, split: 'test', batchSize: settings.valBatchSize, seed, tag: 'ablation', options });
      test = ev.metrics.test;
    }
    if (!test) throw new Error(`ablation: task '${name}' gave no test metrics`);
    return { steps: r.steps, test };
  } finally {
    data.close();
  }
}
