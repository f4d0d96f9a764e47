/**
 * from_pretrained for a local model folder: `config.json` + `model.safetensors` (the layout that
 * `uniter convert` and the trainers write). Weights are matched by official name with the
 * official rules (see model/load.ts); what an inference graph reads must all come from the
 * folder, and a config that does not describe the weights is an error naming both files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { HostTensor } from '../engine/host.js';
import { UniterConfig, loadConfig, parseConfig } from '../model/config.js';
import { TRAINER_FILE } from '../pretrain/checkpoint.js';
import { LoadReport, loadNonStrict, readWeightsAny } from '../model/load.js';
import { allSpecs } from '../model/params.js';
import { TaskGraph, buildTaskGraph, headOf } from '../model/task-graphs.js';
import { ScoringTask, Shapes, TaskRequest, headsInWeights, resolveTask } from './scoring-heads.js';
import { readJsonFile } from '../util/json.js';
import type { PhaseProgress } from '../util/progress.js';

export const CONFIG_FILE = 'config.json';
export const WEIGHTS_FILE = 'model.safetensors';

export interface LoadPretrainedOptions {
  /** Task to run; default: the most specific head the weights hold. */
  task?: TaskRequest;
  /** Bytes of the weights read so far (phase `reading model.safetensors`). */
  onProgress?: PhaseProgress;
}

export interface PretrainedModel {
  dir: string;
  config: UniterConfig;
  task: ScoringTask;
  /** VQA/VE head width. */
  numAnswers?: number;
  /**
   * Every parameter the task's head specs name, by primary official name. Those the inference
   * graph reads come from the folder; others (e.g. the MLM head next to ITM) are zero if absent.
   */
  params: Map<string, HostTensor>;
  /** The inference graph (no targets, no loss) for `task`, in standard ONNX ops (what export writes). */
  graph: TaskGraph;
  /** Heads the weights hold, most specific first. */
  heads: ScoringTask[];
  report: LoadReport;
}

function zeros(shape: number[]): HostTensor {
  return { dtype: 'float32', shape: [...shape], data: new Float32Array(shape.reduce((a, b) => a * b, 1)) };
}

/**
 * The folder's config: config.json, or in a training checkpoint (OUT/ckpt/step_N) the model
 * config that trainer.json records under `config.model`.
 */
function readFolderConfig(dir: string): { config: UniterConfig; configFile: string } {
  const configFile = path.join(dir, CONFIG_FILE);
  if (fs.existsSync(configFile)) return { config: loadConfig(configFile), configFile };
  const trainerFile = path.join(dir, TRAINER_FILE);
  if (fs.existsSync(trainerFile)) {
    const state = readJsonFile(trainerFile, 'trainer state') as { config?: { model?: unknown } } | null;
    const model = state?.config?.model;
    if (model === undefined) throw new Error(`model folder '${dir}' has no ${CONFIG_FILE}, and ${trainerFile} records no model config (field 'config.model')`);
    return { config: parseConfig(model, `${trainerFile} field 'config.model'`), configFile: trainerFile };
  }
  const hint = fs.existsSync(path.join(dir, 'ckpt')) ? ` (a training output directory: pass one of its checkpoints, ${path.join(dir, 'ckpt', 'step_N')})` : ` (a model folder holds ${CONFIG_FILE} + ${WEIGHTS_FILE}, as 'uniter convert' and the trainers write it)`;
  throw new Error(`model folder '${dir}' has no ${CONFIG_FILE}${hint}`);
}

/** Load a model folder (or a training checkpoint directory) for inference on one task. */
export function loadPretrained(dir: string, opts: LoadPretrainedOptions = {}): PretrainedModel {
  if (!fs.existsSync(dir)) throw new Error(`model folder '${dir}' does not exist`);
  if (!fs.statSync(dir).isDirectory()) {
    throw new Error(`'${dir}' is a file; expected a model folder with ${CONFIG_FILE} and ${WEIGHTS_FILE} (convert a PyTorch checkpoint with 'uniter convert IN.pt OUT_DIR')`);
  }
  const weightsFile = path.join(dir, WEIGHTS_FILE);
  const { config, configFile } = readFolderConfig(dir);
  if (!fs.existsSync(weightsFile)) throw new Error(`model folder '${dir}' has no ${WEIGHTS_FILE} (a model folder holds ${CONFIG_FILE} + ${WEIGHTS_FILE}, as 'uniter convert' and the trainers write it)`);
  const source = readWeightsAny(dir, opts.onProgress);
  const shapes: Shapes = new Map([...source].map(([k, t]) => [k, t.shape]));
  const { task, numAnswers } = resolveTask(opts.task, shapes, config, weightsFile);
  const heads = headsInWeights(shapes, config).map((h) => h.task);

  const params = new Map<string, HostTensor>();
  for (const s of allSpecs(config, headOf(task), { numAnswers })) params.set(s.name, zeros(s.shape));
  let report: LoadReport;
  try {
    report = loadNonStrict(params, source, weightsFile);
  } catch (e) {
    throw new Error(`${(e as Error).message} (the model's shapes come from ${configFile}: does it describe these weights?)`);
  }
  // Body tensors the config has no place for (e.g. more encoder layers) mean the config is wrong;
  // tensors of other heads are fine to leave out.
  const strayBody = report.unexpected.filter((n) => n.startsWith('uniter.'));
  if (strayBody.length) {
    throw new Error(`${weightsFile} holds ${strayBody.length} model tensor(s) that ${configFile} does not describe (e.g. '${strayBody[0]}'; num_hidden_layers is ${config.num_hidden_layers}): the config does not match the weights`);
  }
  // Standard ONNX ops only (fusedAttention false): this is the graph `export-onnx` writes for any
  // runtime; the library's own sessions use ONNX Runtime's fused kernels (same values within 1e-6).
  const graph = buildTaskGraph(config, task, { training: false, grads: false, inference: true, numAnswers, fusedAttention: false });
  const loaded = new Set(report.loaded);
  const lacking = graph.params.filter((n) => !loaded.has(n));
  if (lacking.length) {
    throw new Error(
      `${weightsFile} lacks ${lacking.length} tensor(s) that task '${task}' needs: ${lacking.slice(0, 5).join(', ')}${lacking.length > 5 ? ', ...' : ''} (heads in this folder: ${heads.length ? heads.join(', ') : 'none'})`,
    );
  }
  return { dir, config, task, numAnswers, params, graph, heads, report };
}
