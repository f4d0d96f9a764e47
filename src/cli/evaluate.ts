/**
 * `uniter evaluate TASK --checkpoint DIR`: score a fine-tuned model on the val or test split of
 * its task, print the task metrics and write the official results file(s). The checkpoint is a
 * model folder (config.json + model.safetensors, e.g. a fine-tuning run's best/), a fine-tuning
 * run directory (its best/ is used) or a checkpoint step directory. Without --data or --config,
 * the data and task options the fine-tuning run recorded are used, and the command says so.
 */
import * as path from 'node:path';
import { setDefaultThreads } from '../engine/runtime.js';
import type { HostTensor } from '../engine/host.js';
import { parseConfig } from '../model/config.js';
import { readWeightsAny } from '../model/load.js';
import { UniterRunner } from '../model/runner.js';
import { defaultSettings, loadFinetuneConfig } from '../finetune/defaults.js';
import { defaultWorldChoice, openTaskData, taskRegistry, type DataChoice, type EvalSplit, type TaskOptionValues } from '../finetune/task-registry.js';
import { configNextToWeights, recordedRun, resolveWeightsPath, type Evaluation } from '../finetune/trainer.js';
import { writeFileAtomic } from '../util/atomic.js';
import { JobProgress, UsageError, formatMetrics, guard, intFlag, parseArgs, printJsonLine, sayer } from './common.js';
import { cliTask, type DataSource } from './finetune.js';
import type { Command } from './main.js';

const USAGE = `evaluate TASK --checkpoint DIR [--data DIR] [--config FILE] [--split val|test] [--out DIR] [--batch-size N] [--json] [--quiet] [--threads N] [--int8]
      Score a fine-tuned model on a split of its task; print the metrics, write the official results files.
      TASK: ${[...taskRegistry().keys()].join(', ')}
  --checkpoint DIR  fine-tuned model folder (config.json + model.safetensors), a fine-tuning run directory
                    (uses its best/) or a checkpoint step directory
  --data DIR        a world folder written by 'uniter world'. Default: the data the fine-tuning run recorded
                    (its checkpoints' trainer.json), else the synthetic world in memory (the one the weights
                    were pre-trained on when recorded, else the main job's); the command says which
  --config FILE     the fine-tuning config of the model: its task options (e.g. use_img_type), batch size and,
                    when it names official stores, the split's txt_db / img_db (val_txt_db, test_txt_db ...).
                    Default: the options the run recorded
  --split S         val (default) or test
  --out DIR         where results files go (default runs/eval-TASK-SPLIT)
  --batch-size N    evaluation batch size (tokens; VCR: examples); default: the config's / run's val_batch_size
  --threads N       ONNX Runtime threads (default: the runtime's choice)
  --json            print one JSON line (task, split, checkpoint, data, metrics, examples, files); the rest goes to stderr
  --int8            score with the encoder's linear layers in int8 (dynamic quantization; faster, close to float32)
  --quiet           no progress display and no messages`;

export interface EvaluateCliResult {
  task: string;
  split: EvalSplit;
  checkpoint: string;
  evaluation: Evaluation;
  /** Results files written (absolute paths). */
  files: string[];
  /** The data scored, and why that data. */
  data: string;
  dataFrom: string;
}

export async function runEvaluate(argv: string[], say: (m: string) => void = (m) => process.stderr.write(m + '\n')): Promise<EvaluateCliResult> {
  const a = parseArgs(argv, { string: ['checkpoint', 'data', 'config', 'split', 'out', 'batch-size', 'threads'], boolean: ['json', 'quiet', 'int8'] }, USAGE);
  if (a.positional.length !== 1) throw new UsageError(a.positional.length ? `expected one TASK, got '${a.positional.join(' ')}'` : 'missing TASK');
  const task = cliTask(a.positional[0]);
  if (!a.string.checkpoint) throw new UsageError('--checkpoint DIR is required');
  const split = (a.string.split ?? 'val') as EvalSplit;
  if (split !== 'val' && split !== 'test') throw new UsageError(`--split must be 'val' or 'test', got '${a.string.split}'`);
  if (a.string.threads) setDefaultThreads(intFlag(a.string.threads, '--threads', 1));
  const quiet = a.boolean.quiet === true;
  const tell = quiet ? () => undefined : say;
  const cwd = process.cwd();

  const weights = resolveWeightsPath(path.resolve(cwd, a.string.checkpoint));
  const stored = configNextToWeights(weights);
  if (!stored) throw new Error(`${weights}: no config.json (or trainer.json) next to the weights; evaluate needs a model folder such as a fine-tuning run's best/ (a bare weights file: 'uniter convert ${weights} DIR' first)`);
  const cfg = parseConfig(stored, weights);
  const params = new Map<string, HostTensor>();
  for (const [k, v] of readWeightsAny(weights)) params.set(k, v);
  const runner = new UniterRunner(cfg, params, undefined, { precision: a.boolean.int8 === true ? 'int8' : 'float32' });

  const config = a.string.config ? loadFinetuneConfig(a.string.config, task) : null;
  // What the fine-tuning run recorded, when it was a run of this task.
  const rec = recordedRun(weights);
  const recorded = rec && rec.run.task === task.name ? rec : null;
  const recordedSource = recorded?.run.dataSource as DataSource | undefined;
  const recordedSettings = recorded?.run.settings as { valBatchSize?: number; seed?: number } | undefined;

  let choice: DataChoice;
  let dataFrom: string;
  if (a.string.data) {
    choice = { worldDir: path.resolve(cwd, a.string.data) }; // --data names the data even when the config names other stores
    dataFrom = '--data';
  } else if (config && (config.paths || config.worldDir)) {
    choice = { paths: config.paths, worldDir: config.worldDir };
    dataFrom = `--config ${a.string.config}`;
  } else if (recordedSource) {
    choice = { paths: recordedSource.paths, worldDir: recordedSource.worldDir, world: recordedSource.world };
    dataFrom = `as recorded by the fine-tuning run (${recorded!.file})`;
  } else {
    const fallback = defaultWorldChoice(weights);
    choice = fallback.choice;
    dataFrom = rec && rec.run.task !== undefined && rec.run.task !== task.name
      ? `default: ${fallback.why}; the weights come from a '${String(rec.run.task)}' run, not '${task.name}'; pass --data DIR to choose`
      : `default: ${fallback.why}; the model records no fine-tuning data; pass --data DIR to choose`;
  }
  const options: TaskOptionValues | undefined = config?.options ?? (recorded?.run.options as TaskOptionValues | undefined);
  const settings = config?.settings ?? defaultSettings(task);
  const valBatchSize = config ? settings.valBatchSize : (recordedSettings?.valBatchSize ?? settings.valBatchSize);
  const seed = config ? settings.seed : (recordedSettings?.seed ?? settings.seed);
  const batchSize = a.string['batch-size'] ? intFlag(a.string['batch-size'], '--batch-size', 1) : valBatchSize;
  const data = openTaskData(task, choice);
  const progress = new JobProgress({ unit: task.name === 'retrieval' ? 'pairs' : 'examples', quiet });
  try {
    tell(`evaluating ${weights} on ${task.name} ${split}`);
    tell(`data: ${data.describe} (${dataFrom})${options && !config ? '; task options as the run recorded' : ''}`);
    const evaluation = await task.evaluate(runner, {
      data,
      split,
      batchSize,
      seed,
      tag: 'eval',
      options,
      onProgress: (done, total) => {
        progress.setTotal(total);
        progress.advance(done - progress.count);
      },
    });
    progress.finish();
    const outDir = path.resolve(cwd, a.string.out ?? path.join('runs', `eval-${task.name}-${split}`));
    const files = (evaluation.files ?? []).map((f) => {
      const file = path.join(outDir, f.name);
      writeFileAtomic(file, f.content);
      return file;
    });
    return { task: task.name, split, checkpoint: weights, evaluation, files, data: data.describe, dataFrom };
  } finally {
    progress.finish();
    data.close();
  }
}

export const command: Command = {
  name: 'evaluate',
  summary: `evaluate a fine-tuned model (${[...taskRegistry().keys()].join(', ')}) and write the official results files`,
  usage: USAGE,
  run: (argv) =>
    guard('evaluate', USAGE, async () => {
      const json = argv.includes('--json');
      const say = sayer(json);
      const r = await runEvaluate(argv, say);
      if (json) printJsonLine({ task: r.task, split: r.split, checkpoint: r.checkpoint, data: r.data, dataFrom: r.dataFrom, metrics: r.evaluation.metrics, examples: r.evaluation.examples ?? {}, files: r.files });
      else {
        for (const line of formatMetrics(r.evaluation.metrics, r.evaluation.examples)) say(line);
        for (const f of r.files) say(`results: ${f}`);
      }
      return 0;
    }),
};
