/**
 * `uniter finetune TASK`: fine-tune UNITER on a downstream task of the registry (finetune/tasks.ts). Without
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
import { getTask, openTaskData, taskRegistry } from '../finetune/tasks.js';
import { DEFAULT_PRETRAIN_RUN, RESULTS_DIR, configNextToWeights, finetune, initialFinetuneParams, resolveWeightsPath, type FinetuneResult } from '../finetune/trainer.js';
import { writeTrainingReport } from '../report/training.js';
import { parseArgs } from './args.js';
import type { Command } from './main.js';

const USAGE = `finetune TASK [--config FILE] [--checkpoint PATH|none] [--data DIR] [--out DIR] [--steps N] [--seed N] [--resume] [--stop-after N] [--json] [--quiet] [--threads N]
      TASK: ${[...taskRegistry().keys()].join(', ')}
      --config FILE      official-style fine-tuning config (train-<task>-*.json field names); overrides the task defaults
      --checkpoint PATH  pre-trained weights: model folder, checkpoint or run directory, safetensors or PyTorch file;
                         'none' = fresh initialization; default: ${DEFAULT_PRETRAIN_RUN} when present
      --data DIR         a world folder written by 'uniter world' (default: the synthetic world, generated in memory)
      --out DIR          output directory (default runs/finetune-TASK)
      --resume           continue the run in --out from its latest checkpoint (exactly: same batches, dropout, losses)
      --stop-after N     stop after step N with a checkpoint (continue later with --resume)`;

export interface FinetuneCliResult {
  task: string;
  outDir: string;
  result: FinetuneResult;
  load: LoadReport | null;
}

/** The command's work, callable from tests: returns what it trained and where it wrote. */
export async function runFinetune(argv: string[], say: (m: string) => void = (m) => process.stderr.write(m + '\n')): Promise<FinetuneCliResult> {
  const a = parseArgs(argv, { string: ['config', 'checkpoint', 'data', 'out', 'steps', 'seed', 'threads', 'stop-after'], boolean: ['resume', 'json', 'quiet'] }, USAGE);
  if (a.positional.length !== 1) throw new Error(`finetune: expected one TASK (usage: uniter ${USAGE})`);
  const task = getTask(a.positional[0]);
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
  const data = openTaskData(task, { paths: config.paths, worldDir: config.worldDir });
  try {
    tell(`data: ${data.describe} (loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    const plan = task.plan(base, config.options, data, config.settings.seed);
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
      runConfig: { task: task.name, settings: s, options: config.options, checkpoint: weights, data: data.describe },
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
    if (!stored) throw new Error(`${weights}: no model configuration next to these weights (config.json or trainer.json); set 'model_config' in --config`);
    return parseConfig(stored, weights);
  }
  return { ...DEFAULT_MODEL };
}

function describeLoad(r: LoadReport): string {
  const list = (xs: string[]) => (xs.length ? ` (${xs.slice(0, 4).join(', ')}${xs.length > 4 ? ', ...' : ''})` : '');
  return `loaded ${r.loaded.length} tensors from ${r.source}; missing (fresh init): ${r.missing.length}${list(r.missing)}; unexpected (ignored): ${r.unexpected.length}${list(r.unexpected)}`;
}

export function intFlag(s: string, flag: string, min: number): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < min) throw new Error(`${flag} must be an integer >= ${min}, got '${s}'`);
  return n;
}

/** One line per split: its metrics, then how many examples were scored. */
export function formatMetrics(metrics: Record<string, Record<string, number>>, examples: Record<string, number> = {}): string[] {
  return Object.entries(metrics).map(([split, m]) => {
    const values = Object.entries(m).map(([k, v]) => `${k} ${v.toFixed(4)}`);
    if (examples[split] !== undefined) values.push(`(${examples[split]} examples)`);
    return `  ${split.padEnd(5)} ${values.join('   ')}`;
  });
}

export const command: Command = {
  name: 'finetune',
  summary: `fine-tune on a downstream task: ${[...taskRegistry().keys()].join(', ')} (default: synthetic world)`,
  async run(argv) {
    const json = argv.includes('--json');
    const say = (m: string) => (json ? process.stderr : process.stdout).write(m + '\n');
    const { task, outDir, result } = await runFinetune(argv, say);
    const quiet = argv.includes('--quiet');
    if (!quiet) {
      say(`\n${task}: ${result.steps} steps in ${result.seconds.toFixed(1)} s; last evaluation:`);
      for (const line of formatMetrics(result.validation)) say(line);
      if (result.best) say(`best: val ${result.best.metric} ${result.best.value.toFixed(4)} at step ${result.best.step} -> ${result.best.dir}`);
      say(`report: ${path.join(outDir, 'report.html')}\nresults: ${path.join(outDir, RESULTS_DIR)}\ncheckpoints: ${path.join(outDir, 'ckpt')}`);
    }
    if (json) {
      console.log(
        JSON.stringify({
          task,
          out: outDir,
          steps: result.steps,
          seconds: Math.round(result.seconds * 10) / 10,
          validation: result.validation,
          best: result.best && { step: result.best.step, metric: result.best.metric, value: result.best.value, dir: result.best.dir },
        }),
      );
    }
    return 0;
  },
};

