/**
 * `uniter finetune TASK`: fine-tune UNITER on a downstream task of the registry (finetune/task-registry.ts). Without
 * options it starts from the latest `uniter pretrain` run (runs/pretrain-default) when there is
 * one, trains on the synthetic world with the task's default settings, keeps the best model by
 * the validation metric in OUT/best, and writes the log, the report and the results files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setDefaultThreads } from '../engine/runtime.js';
import { parseConfig, type UniterConfig } from '../model/config.js';
import type { LoadReport } from '../model/load.js';
import { DEFAULT_MODEL, loadFinetuneConfig, parseFinetuneConfig, type FinetuneConfig } from '../finetune/defaults.js';
import { defaultWorldChoice, finetuneMemoryInput, getTask, openTaskData, taskRegistry, type DataPaths, type TaskDefinition } from '../finetune/task-registry.js';
import type { WorldOptions } from '../data/world.js';
import { checkTrainingMemory, memoryLimitFrom } from '../pretrain/memory.js';
import { DEFAULT_PRETRAIN_RUN, RESULTS_DIR, configNextToWeights, finetune, initialFinetuneParams, resolveWeightsPath, type FinetuneResult } from '../finetune/trainer.js';
import { writeTrainingReport } from '../report/training.js';
import { UsageError, formatMetrics, guard, intFlag, parseArgs, printJsonLine, sayer } from './common.js';
import type { Command } from './main.js';

const USAGE = `finetune TASK [--config FILE] [--checkpoint PATH|none] [--data DIR] [--out DIR] [--steps N] [--seed N] [--resume] [--stop-after N] [--json] [--quiet] [--threads N]
      Fine-tune on a downstream task; the best model by the validation metric goes to OUT/best (a
      model folder with config.json, model.safetensors, vocab.txt and a README.md model card), the
      log, the report and the official results files to OUT.
      TASK: ${[...taskRegistry().keys()].join(', ')}
  --config FILE      official-style fine-tuning config (train-<task>-*.json field names); overrides the task defaults
  --checkpoint PATH  pre-trained weights: model folder, checkpoint or run directory, safetensors or PyTorch file
                     (a bare weights file needs a config beside it: convert it first, 'uniter convert IN.pt DIR');
                     'none' = fresh initialization; default: ${DEFAULT_PRETRAIN_RUN} when present
  --data DIR         a world folder written by 'uniter world' (default: the config's data, else the synthetic
                     world in memory: the one the weights were pre-trained on when their run recorded it, else
                     the main job's); recorded with the run, so 'uniter evaluate' uses it too
  --out DIR          output directory (default runs/finetune-TASK)
  --steps N          optimizer steps (the config's num_train_steps, else the task's default)
  --seed N           random seed (data order, dropout, new head weights)
  --resume           continue the run in --out from its latest checkpoint (exactly: same batches, dropout, losses)
  --stop-after N     stop after step N with a checkpoint (continue later with --resume)
  --threads N        ONNX Runtime threads (default: the runtime's choice)
  --json             print one JSON line at the end (task, out, steps, seconds, validation, best); the rest goes to stderr
  --quiet            no progress display and no messages`;

export interface FinetuneCliResult {
  task: string;
  outDir: string;
  result: FinetuneResult;
  load: LoadReport | null;
}

/** The command's work, callable from tests: returns what it trained and where it wrote. */
export async function runFinetune(argv: string[], say: (m: string) => void = (m) => process.stderr.write(m + '\n')): Promise<FinetuneCliResult> {
  const a = parseArgs(argv, { string: ['config', 'checkpoint', 'data', 'out', 'steps', 'seed', 'threads', 'stop-after'], boolean: ['resume', 'json', 'quiet'] }, USAGE);
  if (a.positional.length !== 1) throw new UsageError(a.positional.length ? `expected one TASK, got '${a.positional.join(' ')}'` : 'missing TASK');
  const task = cliTask(a.positional[0]);
  if (a.string.threads) setDefaultThreads(intFlag(a.string.threads, '--threads', 1));
  const cwd = process.cwd();
  const overrides: Record<string, unknown> = {};
  if (a.string.steps !== undefined) overrides.num_train_steps = intFlag(a.string.steps, '--steps', 1);
  if (a.string.seed !== undefined) overrides.seed = intFlag(a.string.seed, '--seed', 0);
  if (a.string.data !== undefined) overrides.data = path.resolve(cwd, a.string.data);
  if (a.string.out !== undefined) overrides.output_dir = path.resolve(cwd, a.string.out);
  if (a.string.checkpoint !== undefined) overrides.checkpoint = a.string.checkpoint === 'none' ? null : path.resolve(cwd, a.string.checkpoint);
  const config = a.string.config ? loadFinetuneConfig(a.string.config, task, overrides) : parseFinetuneConfig(overrides, task, { source: 'command line', baseDir: cwd });
  const quiet = a.boolean.quiet === true;
  const tell = (m: string) => {
    if (!quiet) say(m);
  };

  const weights = pickWeights(config, tell);
  const base = baseModelConfig(config, weights);
  const outDir = config.outputDir ?? path.resolve(cwd, 'runs', `finetune-${task.name}`);
  const t0 = Date.now();
  const named = config.paths !== null || config.worldDir !== null;
  const fallback = named ? null : defaultWorldChoice(weights);
  const data = openTaskData(task, fallback?.choice ?? { paths: config.paths, worldDir: config.worldDir });
  try {
    tell(`data: ${data.describe}${fallback ? `: ${fallback.why}` : ''} (loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    const plan = task.plan(base, config.options, data, config.settings.seed);
    // Refuse a run that cannot fit before the initial parameters take their share (MemoryLimitError).
    checkTrainingMemory(finetuneMemoryInput(task, plan, config.settings, config.options, data), memoryLimitFrom(undefined));
    const init = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, config.settings.seed, weights, plan.hooks);
    if (init.report) tell(describeLoad(init.report));
    const s = config.settings;
    tell(`${task.name}: model hidden ${plan.cfg.hidden_size} x ${plan.cfg.num_hidden_layers} layers, head '${plan.head}'; ${s.steps} steps, lr ${s.learningRate}${s.lrMultiplier !== 1 ? ` (head x${s.lrMultiplier})` : ''}, ${s.trainBatchTokens} tokens x ${s.accumulation} per step; output in ${outDir}`);
    const job = task.job({ data, settings: s, options: config.options, plan });
    const result = await finetune({
      job,
      modelConfig: plan.cfg,
      params: init.params,
      settings: s,
      outDir,
      resume: a.boolean.resume === true,
      stopAtStep: a.string['stop-after'] !== undefined ? intFlag(a.string['stop-after'], '--stop-after', 1) : undefined,
      quiet,
      log: tell,
      runConfig: { task: task.name, settings: s, options: config.options, checkpoint: weights, data: data.describe, dataSource: { paths: config.paths, worldDir: config.worldDir, inMemoryWorld: !named, world: fallback?.choice.world ?? null } satisfies DataSource },
    });
    writeTrainingReport(path.join(outDir, 'log.jsonl'), path.join(outDir, 'report.html'), { title: `UNITER fine-tuning: ${task.name}` });
    return { task: task.name, outDir, result, load: init.report };
  } finally {
    data.close();
  }
}

/** The initial weights: the config's / flag's checkpoint, else the default pre-training run if present. */
function pickWeights(config: FinetuneConfig, tell: (m: string) => void): string | null {
  if (config.checkpoint === null) {
    tell('no checkpoint: fine-tuning from a fresh initialization');
    return null;
  }
  if (config.checkpoint !== undefined) return resolveWeightsPath(config.checkpoint);
  const def = path.resolve(DEFAULT_PRETRAIN_RUN);
  if (fs.existsSync(def)) return resolveWeightsPath(def);
  tell(`notice: no pre-trained checkpoint (${DEFAULT_PRETRAIN_RUN} not found; run 'uniter pretrain' first or pass --checkpoint): fine-tuning from a fresh initialization`);
  return null;
}

/** model_config when given, else the configuration stored with the weights, else the tiny default. */
function baseModelConfig(config: FinetuneConfig, weights: string | null): UniterConfig {
  if (config.model) return config.model.config;
  if (weights) {
    const stored = configNextToWeights(weights);
    if (!stored) {
      throw new Error(
        `${weights}: no model configuration next to these weights (config.json, ${path.basename(weights).replace(/\.[^.]*$/, '')}.config.json or trainer.json). Convert the file into a model folder first: 'uniter convert ${weights} DIR' (add --config or --num-heads if asked), then --checkpoint DIR; or set 'model_config' in --config`,
      );
    }
    return parseConfig(stored, weights);
  }
  return { ...DEFAULT_MODEL };
}

function describeLoad(r: LoadReport): string {
  const list = (xs: string[]) => (xs.length ? ` (${xs.slice(0, 4).join(', ')}${xs.length > 4 ? ', ...' : ''})` : '');
  return `loaded ${r.loaded.length} tensors from ${r.source}; missing (fresh init): ${r.missing.length}${list(r.missing)}; unexpected (ignored): ${r.unexpected.length}${list(r.unexpected)}`;
}

/** The registry's task, or a usage error listing the tasks. */
export function cliTask(name: string): TaskDefinition {
  try {
    return getTask(name);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Where a fine-tuning run's data came from, as recorded in its checkpoints (trainer.json config.run.dataSource). */
export interface DataSource {
  paths: DataPaths | null;
  worldDir: string | null;
  /** The synthetic world generated in memory: with `world`'s options (runs before they were recorded: preset 'default'). */
  inMemoryWorld: boolean;
  world?: WorldOptions | null;
}

export const command: Command = {
  name: 'finetune',
  summary: `fine-tune on a downstream task: ${[...taskRegistry().keys()].join(', ')} (default: synthetic world)`,
  usage: USAGE,
  run: (argv) =>
    guard('finetune', USAGE, async () => {
      const json = argv.includes('--json');
      const quiet = argv.includes('--quiet');
      const say = sayer(json);
      const { task, outDir, result } = await runFinetune(argv, say);
      if (!quiet) {
        say(`\n${task}: ${result.steps} steps in ${result.seconds.toFixed(1)} s; last evaluation:`);
        for (const line of formatMetrics(result.validation)) say(line);
        if (result.best) say(`best: val ${result.best.metric} ${result.best.value.toFixed(4)} at step ${result.best.step} -> ${result.best.dir}`);
        say(`report: ${path.join(outDir, 'report.html')}\nresults: ${path.join(outDir, RESULTS_DIR)}\ncheckpoints: ${path.join(outDir, 'ckpt')}`);
      }
      if (json) {
        printJsonLine({
          task,
          out: outDir,
          steps: result.steps,
          seconds: Math.round(result.seconds * 10) / 10,
          validation: result.validation,
          best: result.best && { step: result.best.step, metric: result.best.metric, value: result.best.value, dir: result.best.dir },
        });
      }
      return 0;
    }),
};
