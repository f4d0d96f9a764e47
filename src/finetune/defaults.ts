/**
 * Fine-tuning defaults and config files.
 *
 * Defaults: each task's settings for the synthetic world with a tiny UNITER, sized so that a
 * default `uniter finetune TASK` finishes in a few minutes on 2 CPU cores. The shape of each
 * recipe follows the official config (warm-up 10% of the steps, linear decay, clip 2.0, AdamW
 * betas (0.9, 0.98), weight decay 0.01, VQA head at lr x 10); steps, batch sizes and the peak
 * rate are scaled to the small model and data.
 *
 * Config files use the official fine-tuning field names (config/train-<task>-*.json): every
 * field is optional and overrides the task default. Data comes from official stores
 * (train_txt_db(s)/train_img_db(s), val_*, test_*; img paths 'gt;det' for VCR), from a world
 * folder (`data`, this port's field), or by default from the synthetic world in memory. Relative
 * paths resolve against the config file's directory. Official fields without meaning here
 * (fp16, n_workers, pin_mem, compressed_db, checkpoint_from) are accepted and ignored.
 */
import * as path from 'node:path';
import type { ImgDbOptions } from '../data/imgdb.js';
import { PRESETS, parseConfig, type UniterConfig } from '../model/config.js';
import type { DataPaths, TaskDefinition, TaskOptionValues } from './task-registry.js';
import type { FinetuneSettings } from './trainer.js';
import { readJsonFile, readJsonObject } from '../util/json.js';

const COMMON: Omit<FinetuneSettings, 'trainBatchTokens' | 'valBatchSize' | 'learningRate' | 'lrMultiplier' | 'warmupSteps' | 'steps' | 'validEvery'> = {
  accumulation: 1,
  saveEvery: 0,
  keepCheckpoints: 2,
  logEvery: 1,
  gradNorm: 2.0,
  weightDecay: 0.01,
  betas: [0.9, 0.98],
  seed: 42,
  maxTxtLen: 60,
  dropout: 0.1,
};

/** A linear schedule of `steps` with 10% warm-up, validation 5 times, a checkpoint at each validation. */
export function recipe(steps: number, s: Partial<FinetuneSettings>): FinetuneSettings {
  const every = Math.max(1, Math.round(steps / 5));
  return {
    ...COMMON,
    trainBatchTokens: 1536,
    valBatchSize: 4096,
    learningRate: 2e-4,
    lrMultiplier: 1,
    warmupSteps: Math.max(1, Math.round(steps / 10)),
    steps,
    validEvery: every,
    saveEvery: every,
    ...s,
  };
}

/** Default settings of a task on the synthetic world (tiny model, 2 cores, a few minutes). */
export function defaultSettings(task: TaskDefinition, steps?: number): FinetuneSettings {
  if (task.defaultSettings) return task.defaultSettings(steps);
  switch (task.name) {
    case 'vqa':
      return recipe(steps ?? 500, { lrMultiplier: 10 });
    case 've':
      return recipe(steps ?? 400, {});
    case 'nlvr2':
      return recipe(steps ?? 500, { trainBatchTokens: 2048, seed: 77 });
    case 'vcr':
      // Evaluation batches count questions (official VCR val_batch_size), 8-20 rows each.
      return recipe(steps ?? 400, { trainBatchTokens: 1024, valBatchSize: 32, maxTxtLen: 220 });
    default:
      throw new Error(`no default fine-tuning settings for task '${task.name}'`);
  }
}

/** The model of a fresh run when no pre-trained checkpoint says otherwise. */
export const DEFAULT_MODEL: UniterConfig = { ...PRESETS.tiny };

// ---------------------------------------------------------------------------------------------
// Config files

export type ModelConfigSpec = { kind: 'preset' | 'file' | 'inline'; config: UniterConfig; source: string };

export interface FinetuneConfig {
  settings: FinetuneSettings;
  options: TaskOptionValues;
  /** undefined: the default (latest `uniter pretrain` run, else fresh); null: fresh initialization. */
  checkpoint: string | null | undefined;
  /** Model configuration when the checkpoint carries none (official model_config). */
  model: ModelConfigSpec | null;
  outputDir: string | null;
  /** Official stores; null when the config names none. */
  paths: DataPaths | null;
  /** A world folder written by `uniter world`. */
  worldDir: string | null;
}

const SETTING_FIELDS: Record<string, keyof FinetuneSettings> = {
  train_batch_size: 'trainBatchTokens',
  val_batch_size: 'valBatchSize',
  gradient_accumulation_steps: 'accumulation',
  learning_rate: 'learningRate',
  lr_mul: 'lrMultiplier',
  warmup_steps: 'warmupSteps',
  num_train_steps: 'steps',
  valid_steps: 'validEvery',
  save_steps: 'saveEvery',
  keep_checkpoints: 'keepCheckpoints',
  log_steps: 'logEvery',
  grad_norm: 'gradNorm',
  weight_decay: 'weightDecay',
  seed: 'seed',
  max_txt_len: 'maxTxtLen',
  dropout: 'dropout',
};
const INT_SETTINGS = new Set<keyof FinetuneSettings>(['trainBatchTokens', 'valBatchSize', 'accumulation', 'warmupSteps', 'steps', 'validEvery', 'saveEvery', 'keepCheckpoints', 'logEvery', 'seed', 'maxTxtLen']);
const DATA_FIELDS = ['train_txt_dbs', 'train_img_dbs', 'train_txt_db', 'train_img_db', 'val_txt_db', 'val_img_db', 'test_txt_db', 'test_img_db', 'ans2label', 'conf_th', 'max_bb', 'min_bb', 'num_bb', 'data'];
const OTHER_FIELDS = ['checkpoint', 'model_config', 'output_dir', 'optim', 'betas', 'checkpoint_activations'];
const IGNORED_FIELDS = ['fp16', 'n_workers', 'pin_mem', 'compressed_db', 'checkpoint_from'];

/**
 * Read a fine-tuning config for `task`; `overrides` (command-line values, official field names)
 * replace the file's. Every problem is reported at once, each naming its field.
 */
export function loadFinetuneConfig(file: string, task: TaskDefinition, overrides: Record<string, unknown> = {}): FinetuneConfig {
  const raw = readJsonObject(file, 'the fine-tuning config');
  return parseFinetuneConfig({ ...raw, ...overrides }, task, { source: file, baseDir: path.dirname(path.resolve(file)) });
}

export function parseFinetuneConfig(c: Record<string, unknown>, task: TaskDefinition, where: { source: string; baseDir: string }): FinetuneConfig {
  const issues: string[] = [];
  const known = new Set([...Object.keys(SETTING_FIELDS), ...DATA_FIELDS, ...OTHER_FIELDS, ...IGNORED_FIELDS, ...Object.keys(task.optionDefaults)]);
  for (const k of Object.keys(c)) if (!known.has(k)) issues.push(`unknown field '${k}' for task '${task.name}'`);
  const resolve = (p: string) => path.resolve(where.baseDir, p);

  const steps = c.num_train_steps;
  const settings = defaultSettings(task, typeof steps === 'number' && Number.isSafeInteger(steps) && steps > 0 ? steps : undefined);
  const s = settings as unknown as Record<string, unknown>;
  for (const [field, key] of Object.entries(SETTING_FIELDS)) {
    const v = c[field];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isFinite(v)) issues.push(`field '${field}' must be a number, got ${JSON.stringify(v)}`);
    // Safe integers only: 1e308 "is an integer" but no loop counts to it, and above 2^53 steps and sizes stop being exact.
    else if (INT_SETTINGS.has(key) && !Number.isSafeInteger(v)) issues.push(`field '${field}' must be an integer${Math.abs(v) > Number.MAX_SAFE_INTEGER ? ' <= 2^53 - 1' : ''}, got ${v}`);
    else s[key] = v;
  }
  if (c.betas !== undefined) {
    const b = c.betas;
    if (!Array.isArray(b) || b.length !== 2 || !b.every((x) => typeof x === 'number' && x >= 0 && x < 1)) issues.push(`field 'betas' must be two numbers in [0, 1), got ${JSON.stringify(b)}`);
    else settings.betas = [b[0] as number, b[1] as number];
  }
  if (c.checkpoint_activations !== undefined) {
    if (typeof c.checkpoint_activations !== 'boolean') issues.push(`field 'checkpoint_activations' must be true or false, got ${JSON.stringify(c.checkpoint_activations)}`);
    else settings.checkpointActivations = c.checkpoint_activations;
  }
  // Checkpoints follow the validations unless the config says otherwise (as the official ModelSaver).
  if (c.save_steps === undefined) settings.saveEvery = settings.validEvery;
  if (c.optim !== undefined && c.optim !== 'adamw') issues.push(`field 'optim' must be 'adamw' (the optimizer of the official configs), got ${JSON.stringify(c.optim)}`);
  if (settings.warmupSteps > settings.steps) issues.push(`field 'warmup_steps' (${settings.warmupSteps}) exceeds 'num_train_steps' (${settings.steps})`);

  const options: TaskOptionValues = { ...task.optionDefaults };
  for (const k of Object.keys(task.optionDefaults)) if (c[k] !== undefined) options[k] = c[k];
  try {
    task.checkOptions(options, where.source);
  } catch (e) {
    issues.push((e as Error).message.replace(`${where.source}: `, ''));
  }

  let checkpoint: string | null | undefined;
  if (c.checkpoint === null || c.checkpoint === '') checkpoint = null;
  else if (typeof c.checkpoint === 'string') checkpoint = resolve(c.checkpoint);
  else if (c.checkpoint !== undefined) issues.push(`field 'checkpoint' must be a path or null, got ${JSON.stringify(c.checkpoint)}`);

  let model: ModelConfigSpec | null = null;
  const mc = c.model_config;
  try {
    if (typeof mc === 'string' && mc in PRESETS) model = { kind: 'preset', config: { ...PRESETS[mc as keyof typeof PRESETS] }, source: `preset '${mc}'` };
    else if (typeof mc === 'string') {
      const f = resolve(mc);
      const rawCfg = readJsonFile(f, 'the model config', (m) => new Error(`field 'model_config': ${m}`));
      model = { kind: 'file', config: parseConfig(rawCfg, f), source: f };
    } else if (mc && typeof mc === 'object' && !Array.isArray(mc)) model = { kind: 'inline', config: parseConfig(mc, `${where.source} field 'model_config'`), source: 'inline model_config' };
    else if (mc !== undefined) issues.push(`field 'model_config' must be a preset name (${Object.keys(PRESETS).join(', ')}), a config file path or an object, got ${JSON.stringify(mc)}`);
  } catch (e) {
    issues.push((e as Error).message);
  }

  let outputDir: string | null = null;
  if (typeof c.output_dir === 'string') outputDir = resolve(c.output_dir);
  else if (c.output_dir !== undefined) issues.push(`field 'output_dir' must be a path, got ${JSON.stringify(c.output_dir)}`);

  let worldDir: string | null = null;
  if (typeof c.data === 'string') worldDir = resolve(c.data);
  else if (c.data !== undefined) issues.push(`field 'data' must be the path of a world folder (uniter world --out), got ${JSON.stringify(c.data)}`);

  const paths = dataPaths(c, resolve, issues);
  if (paths && worldDir) issues.push(`fields 'data' and 'train_txt_db(s)' both name training data; keep one`);
  if (issues.length) throw new Error(`${where.source}: invalid fine-tuning config for '${task.name}':\n${issues.map((i) => `  - ${i}`).join('\n')}`);
  return { settings, options, checkpoint, model, outputDir, paths, worldDir };
}

function dataPaths(c: Record<string, unknown>, resolve: (p: string) => string, issues: string[]): DataPaths | null {
  const str = (field: string): string | null => {
    const v = c[field];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string' || !v) {
      issues.push(`field '${field}' must be a path, got ${JSON.stringify(v)}`);
      return null;
    }
    return v;
  };
  const list = (field: string): string[] | null => {
    const v = c[field];
    if (v === undefined) return null;
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'string' && x)) {
      issues.push(`field '${field}' must be a non-empty list of paths, got ${JSON.stringify(v)}`);
      return null;
    }
    return v as string[];
  };
  const img = (p: string) => p.split(';').filter((x) => x).map(resolve).join(';');
  const txts = list('train_txt_dbs') ?? (str('train_txt_db') !== null ? [str('train_txt_db')!] : null);
  const imgs = list('train_img_dbs') ?? (str('train_img_db') !== null ? [str('train_img_db')!] : null);
  const anyData = DATA_FIELDS.filter((f) => !['conf_th', 'max_bb', 'min_bb', 'num_bb', 'data', 'ans2label'].includes(f)).some((f) => c[f] !== undefined);
  if (!anyData) {
    if (c.ans2label !== undefined) issues.push(`field 'ans2label' needs the txt_db fields (train_txt_db(s), val_txt_db...) of official data`);
    return null;
  }
  if (!txts || !imgs) {
    issues.push(`official data needs both 'train_txt_db(s)' and 'train_img_db(s)'`);
    return null;
  }
  if (txts.length !== imgs.length) issues.push(`'train_txt_dbs' has ${txts.length} entries but 'train_img_dbs' has ${imgs.length}`);
  const pair = (t: string, i: string): { txt: string; img: string } | null => {
    const tv = str(t);
    const iv = str(i);
    if (tv === null && iv === null) return null;
    if (tv === null || iv === null) {
      issues.push(`fields '${t}' and '${i}' go together`);
      return null;
    }
    return { txt: resolve(tv), img: img(iv) };
  };
  const imgOptions: ImgDbOptions = {};
  for (const [field, key] of [['conf_th', 'confTh'], ['max_bb', 'maxBb'], ['min_bb', 'minBb'], ['num_bb', 'numBb']] as const) {
    const v = c[field];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isFinite(v)) issues.push(`field '${field}' must be a number, got ${JSON.stringify(v)}`);
    else imgOptions[key] = v;
  }
  const a2l = str('ans2label');
  return {
    train: txts.map((t, k) => ({ txt: resolve(t), img: img(imgs[k] ?? imgs[0]) })),
    val: pair('val_txt_db', 'val_img_db'),
    test: pair('test_txt_db', 'test_img_db'),
    ans2label: a2l ? resolve(a2l) : null,
    imgOptions,
  };
}
