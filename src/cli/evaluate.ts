/**
 * `uniter evaluate TASK --checkpoint DIR`: score a fine-tuned model on the val or test split of
 * its task, print the task metrics and write the official results file(s). The checkpoint is a
 * model folder (config.json + model.safetensors, e.g. a fine-tuning run's best/), a fine-tuning
 * run directory (its best/ is used) or a checkpoint step directory.
 */
import * as path from 'node:path';
import { setDefaultThreads } from '../engine/runtime.js';
import type { HostTensor } from '../engine/host.js';
import { parseConfig } from '../model/config.js';
import { readWeightsAny } from '../model/load.js';
import { UniterRunner } from '../model/runner.js';
import { defaultSettings, loadFinetuneConfig } from '../finetune/defaults.js';
import { getTask, openTaskData, taskRegistry, type EvalSplit } from '../finetune/tasks.js';
import { configNextToWeights, resolveWeightsPath, type Evaluation } from '../finetune/trainer.js';
import { writeFileAtomic } from '../util/atomic.js';
import { parseArgs } from './args.js';
import { formatMetrics, intFlag } from './finetune.js';
import type { Command } from './main.js';

const USAGE = `evaluate TASK --checkpoint DIR [--data DIR] [--config FILE] [--split val|test] [--out DIR] [--batch-size N] [--json] [--quiet] [--threads N] [--int8]
      TASK: ${[...taskRegistry().keys()].join(', ')}
      --checkpoint DIR  fine-tuned model folder (config.json + model.safetensors), or a fine-tuning run directory (uses its best/)
      --data DIR        a world folder written by 'uniter world' (default: the config's data, else the synthetic world in memory)
      --config FILE     the fine-tuning config of the model: its task options (e.g. use_img_type) and, when it names
                        official stores, the split's txt_db / img_db (val_txt_db, test_txt_db ...)
      --out DIR         where results files go (default runs/eval-TASK-SPLIT)
      --int8            score with the encoder's linear layers in int8 (dynamic quantization; faster, ~float32 accuracy)`;

export interface EvaluateCliResult {
  task: string;
  split: EvalSplit;
  checkpoint: string;
  evaluation: Evaluation;
  /** Results files written (absolute paths). */
  files: string[];
}

export async function runEvaluate(argv: string[], say: (m: string) => void = (m) => process.stderr.write(m + '\n')): Promise<EvaluateCliResult> {
  const a = parseArgs(argv, { string: ['checkpoint', 'data', 'config', 'split', 'out', 'batch-size', 'threads'], boolean: ['json', 'quiet', 'int8'] }, USAGE);
  if (a.positional.length !== 1) throw new Error(`evaluate: expected one TASK (usage: uniter ${USAGE})`);
  const task = getTask(a.positional[0]);
  if (!a.string.checkpoint) throw new Error(`evaluate: --checkpoint DIR is required (usage: uniter ${USAGE})`);
  const split = (a.string.split ?? 'val') as EvalSplit;
  if (split !== 'val' && split !== 'test') throw new Error(`--split must be 'val' or 'test', got '${a.string.split}'`);
  if (a.string.threads) setDefaultThreads(intFlag(a.string.threads, '--threads', 1));
  const cwd = process.cwd();

  const weights = resolveWeightsPath(path.resolve(cwd, a.string.checkpoint));
  const stored = configNextToWeights(weights);
  if (!stored) throw new Error(`${weights}: no config.json (or trainer.json) next to the weights; evaluate needs a model folder such as a fine-tuning run's best/`);
  const cfg = parseConfig(stored, weights);
  const params = new Map<string, HostTensor>();
  for (const [k, v] of readWeightsAny(weights)) params.set(k, v);
  const runner = new UniterRunner(cfg, params, undefined, { precision: a.boolean.int8 === true ? 'int8' : 'float32' });

  const config = a.string.config ? loadFinetuneConfig(a.string.config, task) : null;
  const settings = config?.settings ?? defaultSettings(task);
  const batchSize = a.string['batch-size'] ? intFlag(a.string['batch-size'], '--batch-size', 1) : settings.valBatchSize;
  // --data names the data even when the config names other stores.
  const data = a.string.data ? openTaskData(task, { worldDir: path.resolve(cwd, a.string.data) }) : openTaskData(task, { paths: config?.paths, worldDir: config?.worldDir });
  try {
    if (!a.boolean.quiet) say(`evaluating ${weights} on ${task.name} ${split} (${data.describe})`);
    const evaluation = await task.evaluate(runner, { data, split, batchSize, seed: settings.seed, tag: 'eval', options: config?.options });
    const outDir = path.resolve(cwd, a.string.out ?? path.join('runs', `eval-${task.name}-${split}`));
    const files = (evaluation.files ?? []).map((f) => {
      const file = path.join(outDir, f.name);
      writeFileAtomic(file, f.content);
      return file;
    });
    return { task: task.name, split, checkpoint: weights, evaluation, files };
  } finally {
    data.close();
  }
}

export const command: Command = {
  name: 'evaluate',
  summary: `evaluate a fine-tuned model (${[...taskRegistry().keys()].join(', ')}) and write the official results files`,
  async run(argv) {
    const json = argv.includes('--json');
    const say = (m: string) => (json ? process.stderr : process.stdout).write(m + '\n');
    const r = await runEvaluate(argv, say);
    if (json) console.log(JSON.stringify({ task: r.task, split: r.split, checkpoint: r.checkpoint, metrics: r.evaluation.metrics, examples: r.evaluation.examples ?? {}, files: r.files }));
    else {
      for (const line of formatMetrics(r.evaluation.metrics, r.evaluation.examples)) say(line);
      for (const f of r.files) say(`results: ${f}`);
    }
    return 0;
  },
};
