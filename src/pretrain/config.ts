/**
 * Pretraining configuration: a JSON file in the spirit of the official `config/pretrain-*.json`
 * (same field names, same defaults as `pretrain-indomain-base-8gpu.json`), validated completely
 * before training starts. Every problem is reported at once, each naming its field.
 *
 * Differences from the official files: the model is `model: {preset}` or `model: {config}`
 * (a path or inline fields; the official `model_config` path is accepted too); relative paths
 * are resolved against the config file's directory; a few fields of this port are added
 * (`save_steps`, `keep_checkpoints`, `log_steps`, `lr_schedule`, `joint_masking`, `lr_multipliers`,
 * `checkpoint_activations`). Official
 * fields that have no meaning here (`fp16`, `n_workers`, `pin_mem`, `compressed_db`) are
 * accepted and ignored; `optim` must be 'adamw'.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ScheduleKind } from './schedule.js';
import { isJsonObject, readJsonFile } from '../util/json.js';

export const PRETRAIN_TASKS = ['itm', 'mlm', 'mrfr', 'mrc', 'mrckl'] as const;
export type PretrainTask = (typeof PRETRAIN_TASKS)[number];
export const MODEL_PRESETS = ['tiny', 'base', 'large'] as const;
export type ModelPreset = (typeof MODEL_PRESETS)[number];

export type ModelSpec =
  | { kind: 'preset'; preset: ModelPreset }
  | { kind: 'file'; path: string; fields: Record<string, unknown> }
  | { kind: 'inline'; fields: Record<string, unknown> };

export interface DatasetSpec {
  name: string;
  /** txt_db paths (absolute). */
  db: string[];
  /** img_db paths (absolute), one per txt_db. */
  img: string[];
  tasks: PretrainTask[];
}

export interface TrainDatasetSpec extends DatasetSpec {
  /** Integer weight of each task in the sampling pool (see mixer.ts). */
  mix_ratio: number[];
}

export interface PretrainConfig {
  model: ModelSpec;
  /** Initial weights (safetensors or a model folder), or null for random initialization. */
  checkpoint: string | null;
  output_dir: string;
  train_datasets: TrainDatasetSpec[];
  val_datasets: DatasetSpec[];
  /** Tokens (padding included) per micro-batch. */
  train_batch_size: number;
  val_batch_size: number;
  gradient_accumulation_steps: number;
  learning_rate: number;
  lr_schedule: ScheduleKind;
  warmup_steps: number;
  num_train_steps: number;
  valid_steps: number;
  save_steps: number;
  keep_checkpoints: number;
  log_steps: number;
  /** Global gradient-norm clip; <= 0 (the official -1) disables clipping. */
  grad_norm: number;
  weight_decay: number;
  betas: [number, number];
  dropout: number;
  seed: number;
  max_txt_len: number;
  conf_th: number;
  max_bb: number;
  min_bb: number;
  num_bb: number;
  mrm_prob: number;
  itm_neg_prob: number;
  itm_ot_lambda: number;
  /** Ablation switch: mask text and regions in the same example instead of conditional masking. */
  joint_masking: boolean;
  /** Learning-rate multiplier per parameter-name substring, e.g. {"img_linear": 0.1}; first match wins. */
  lr_multipliers: Record<string, number>;
  /** Recompute each encoder layer in the backward pass instead of keeping its activations (less memory, ~1/3 more compute). */
  checkpoint_activations: boolean;
}

/** Defaults of every optional field (official in-domain base values where one exists). */
export const PRETRAIN_DEFAULTS = {
  checkpoint: null,
  val_datasets: [],
  train_batch_size: 10240,
  val_batch_size: 10240,
  gradient_accumulation_steps: 2,
  learning_rate: 5e-5,
  lr_schedule: 'linear',
  warmup_steps: 10000,
  num_train_steps: 200000,
  valid_steps: 5000,
  keep_checkpoints: 2,
  log_steps: 100,
  grad_norm: 5.0,
  weight_decay: 0.01,
  betas: [0.9, 0.98],
  dropout: 0.1,
  seed: 42,
  max_txt_len: 60,
  conf_th: 0.2,
  max_bb: 100,
  min_bb: 10,
  num_bb: 36,
  mrm_prob: 0.15,
  itm_neg_prob: 0.5,
  itm_ot_lambda: 0.1,
  joint_masking: false,
  lr_multipliers: {},
  checkpoint_activations: false,
} as const satisfies Partial<Record<keyof PretrainConfig, unknown>>;

/** Official fields that this port accepts and ignores. */
const IGNORED_OFFICIAL_FIELDS = ['fp16', 'n_workers', 'pin_mem', 'compressed_db'];
/** Official sequence guard: text (+[CLS]/[SEP]) plus regions must fit in 512 positions. */
const MAX_SEQUENCE = 512;

export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly issues: string[],
  ) {
    super(`${source}: invalid pretraining config:\n${issues.map((i) => `  - ${i}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

export interface ParseOptions {
  /** Named in error messages (the file path, usually). */
  source?: string;
  /** Relative paths are resolved against this directory (default: the current directory). */
  baseDir?: string;
  /** Check that data, model-config and checkpoint paths exist (default true). */
  checkPaths?: boolean;
  /** Top-level fields that replace the file's (command-line overrides), applied before validation. */
  overrides?: Record<string, unknown>;
}

/** Read and validate a pretraining config file; relative paths resolve against its directory. */
export function loadPretrainConfig(file: string, options: Omit<ParseOptions, 'source' | 'baseDir'> = {}): PretrainConfig {
  // ConfigError puts the file name in front itself: keep only the reason after "<file>: ".
  const raw = readJsonFile(file, 'the config', (m) => new ConfigError(file, [m.slice(file.length + 2)]));
  return parsePretrainConfig(raw, { ...options, source: file, baseDir: path.dirname(path.resolve(file)) });
}

export function parsePretrainConfig(raw: unknown, options: ParseOptions = {}): PretrainConfig {
  const source = options.source ?? '<config>';
  if (!isJsonObject(raw)) throw new ConfigError(source, [`expected a JSON object at the top level, got ${describe(raw)}`]);
  const v = new Validator(options.baseDir ?? process.cwd(), options.checkPaths ?? true);
  const obj: Record<string, unknown> = { ...raw, ...(options.overrides ?? {}) };

  const known = new Set<string>([...Object.keys(PRETRAIN_DEFAULTS), 'model', 'model_config', 'output_dir', 'train_datasets', 'save_steps', 'optim', ...IGNORED_OFFICIAL_FIELDS]);
  for (const key of Object.keys(obj)) {
    if (!known.has(key)) v.issue(key, `unknown field${suggest(key, known)}`);
  }
  if (obj.optim !== undefined && obj.optim !== 'adamw') v.issue('optim', `only 'adamw' is implemented, got ${describe(obj.optim)}`);

  const model = v.model(obj);
  const output_dir = v.string(obj, 'output_dir', undefined);
  const checkpoint = obj.checkpoint === undefined || obj.checkpoint === null ? null : v.path(obj.checkpoint, 'checkpoint');

  const num_train_steps = v.int(obj, 'num_train_steps', 1);
  const warmup_steps = v.int(obj, 'warmup_steps', 0);
  if (num_train_steps !== null && warmup_steps !== null && warmup_steps > num_train_steps) v.issue('warmup_steps', `must be <= num_train_steps (${num_train_steps}), got ${warmup_steps}`);
  const valid_steps = v.int(obj, 'valid_steps', 1);
  const save_steps = obj.save_steps === undefined ? valid_steps : v.int(obj, 'save_steps', 1);
  const lr_schedule = v.oneOf(obj, 'lr_schedule', ['linear', 'constant'] as const);

  const betasRaw = obj.betas ?? PRETRAIN_DEFAULTS.betas;
  let betas: [number, number] = [0.9, 0.98];
  if (!Array.isArray(betasRaw) || betasRaw.length !== 2 || betasRaw.some((b) => typeof b !== 'number' || !(b >= 0 && b < 1))) v.issue('betas', `expected two numbers in [0, 1), got ${describe(betasRaw)}`);
  else betas = [betasRaw[0], betasRaw[1]];

  const max_txt_len = v.int(obj, 'max_txt_len', 1);
  const conf_th = v.number(obj, 'conf_th', -1, 1);
  if (conf_th !== null && conf_th < 0 && conf_th !== -1) v.issue('conf_th', `expected -1 (fixed box count) or a threshold in [0, 1], got ${conf_th}`);
  const max_bb = v.int(obj, 'max_bb', 1);
  const min_bb = v.int(obj, 'min_bb', 1);
  const num_bb = v.int(obj, 'num_bb', 1);
  if (max_bb !== null && min_bb !== null && min_bb > max_bb) v.issue('min_bb', `must be <= max_bb (${max_bb}), got ${min_bb}`);
  if (max_txt_len !== null && conf_th !== null) {
    const boxes = conf_th === -1 ? num_bb : max_bb;
    const boxField = conf_th === -1 ? 'num_bb' : 'max_bb';
    if (boxes !== null && boxes + max_txt_len + 2 > MAX_SEQUENCE) v.issue(boxField, `${boxField} + max_txt_len + 2 = ${boxes + max_txt_len + 2} exceeds the ${MAX_SEQUENCE}-token sequence limit`);
  }

  const config: PretrainConfig = {
    model: model ?? { kind: 'preset', preset: 'tiny' },
    checkpoint,
    output_dir: output_dir === null ? '' : path.resolve(v.baseDir, output_dir),
    train_datasets: v.datasets(obj, 'train_datasets', true) as TrainDatasetSpec[],
    val_datasets: v.datasets(obj, 'val_datasets', false),
    train_batch_size: v.int(obj, 'train_batch_size', 1) ?? 0,
    val_batch_size: v.int(obj, 'val_batch_size', 1) ?? 0,
    gradient_accumulation_steps: v.int(obj, 'gradient_accumulation_steps', 1) ?? 0,
    learning_rate: v.positive(obj, 'learning_rate') ?? 0,
    lr_schedule: lr_schedule ?? 'linear',
    warmup_steps: warmup_steps ?? 0,
    num_train_steps: num_train_steps ?? 0,
    valid_steps: valid_steps ?? 0,
    save_steps: save_steps ?? 0,
    keep_checkpoints: v.int(obj, 'keep_checkpoints', 1) ?? 0,
    log_steps: v.int(obj, 'log_steps', 1) ?? 0,
    grad_norm: v.number(obj, 'grad_norm', -Infinity, Infinity) ?? 0,
    weight_decay: v.number(obj, 'weight_decay', 0, Infinity) ?? 0,
    betas,
    dropout: v.number(obj, 'dropout', 0, 1, true) ?? 0,
    seed: v.int(obj, 'seed', 0) ?? 0,
    max_txt_len: max_txt_len ?? 0,
    conf_th: conf_th ?? 0,
    max_bb: max_bb ?? 0,
    min_bb: min_bb ?? 0,
    num_bb: num_bb ?? 0,
    mrm_prob: v.number(obj, 'mrm_prob', 0, 1) ?? 0,
    itm_neg_prob: v.number(obj, 'itm_neg_prob', 0, 1) ?? 0,
    itm_ot_lambda: v.number(obj, 'itm_ot_lambda', 0, Infinity) ?? 0,
    joint_masking: v.bool(obj, 'joint_masking') ?? false,
    lr_multipliers: lrMultipliers(v, obj.lr_multipliers),
    checkpoint_activations: v.bool(obj, 'checkpoint_activations') ?? false,
  };
  if (v.issues.length) throw new ConfigError(source, v.issues);
  return config;
}

function lrMultipliers(v: Validator, raw: unknown): Record<string, number> {
  if (raw === undefined) return {};
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    v.issue('lr_multipliers', `expected an object {"name substring": multiplier}, got ${describe(raw)}`);
    return {};
  }
  const out: Record<string, number> = {};
  for (const [k, m] of Object.entries(raw)) {
    if (k === '' || typeof m !== 'number' || !(Number.isFinite(m) && m >= 0)) v.issue(`lr_multipliers.${k}`, `expected a non-empty name substring with a finite multiplier >= 0, got ${describe(m)}`);
    else out[k] = m;
  }
  return out;
}

/** Every `<task>_<dataset>` name the training pool can draw (ratio > 0). */
export function trainTaskNames(config: PretrainConfig): string[] {
  return config.train_datasets.flatMap((d) => d.tasks.filter((_, i) => d.mix_ratio[i] > 0).map((t) => `${t}_${d.name}`));
}

// ---------------------------------------------------------------------------------------------

class Validator {
  readonly issues: string[] = [];
  constructor(
    readonly baseDir: string,
    private readonly checkPaths: boolean,
  ) {}

  issue(field: string, message: string): void {
    this.issues.push(`field '${field}': ${message}`);
  }

  private value(obj: Record<string, unknown>, key: string): unknown {
    const v = obj[key];
    return v === undefined ? (PRETRAIN_DEFAULTS as Record<string, unknown>)[key] : v;
  }

  private required(obj: Record<string, unknown>, key: string): unknown {
    const v = this.value(obj, key);
    if (v === undefined) this.issue(key, 'required');
    return v;
  }

  int(obj: Record<string, unknown>, key: string, min: number): number | null {
    const v = this.required(obj, key);
    if (v === undefined) return null;
    // Safe integers only: 1e308 "is an integer" but no loop counts to it, and above 2^53 steps and sizes stop being exact.
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
      this.issue(key, `expected an integer >= ${min}${typeof v === 'number' && v > Number.MAX_SAFE_INTEGER ? ' and <= 2^53 - 1' : ''}, got ${describe(v)}`);
      return null;
    }
    return v;
  }

  number(obj: Record<string, unknown>, key: string, min: number, max: number, maxExclusive = false): number | null {
    const v = this.required(obj, key);
    if (v === undefined) return null;
    const range = `in [${min}, ${max}${maxExclusive ? ')' : ']'}`;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (maxExclusive && v === max)) {
      this.issue(key, `expected a number ${range}, got ${describe(v)}`);
      return null;
    }
    return v;
  }

  positive(obj: Record<string, unknown>, key: string): number | null {
    const v = this.required(obj, key);
    if (v === undefined) return null;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      this.issue(key, `expected a positive number, got ${describe(v)}`);
      return null;
    }
    return v;
  }

  bool(obj: Record<string, unknown>, key: string): boolean | null {
    const v = this.required(obj, key);
    if (v === undefined) return null;
    if (typeof v !== 'boolean') {
      this.issue(key, `expected true or false, got ${describe(v)}`);
      return null;
    }
    return v;
  }

  string(obj: Record<string, unknown>, key: string, fallback: string | undefined): string | null {
    const v = obj[key] ?? fallback;
    if (v === undefined) {
      this.issue(key, 'required');
      return null;
    }
    if (typeof v !== 'string' || v === '') {
      this.issue(key, `expected a non-empty string, got ${describe(v)}`);
      return null;
    }
    return v;
  }

  oneOf<T extends string>(obj: Record<string, unknown>, key: string, allowed: readonly T[]): T | null {
    const v = this.required(obj, key);
    if (v === undefined) return null;
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
      this.issue(key, `expected one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${describe(v)}`);
      return null;
    }
    return v as T;
  }

  /** Resolve a path; when checking is on, it must exist. */
  path(raw: unknown, field: string): string | null {
    if (typeof raw !== 'string' || raw === '') {
      this.issue(field, `expected a path string, got ${describe(raw)}`);
      return null;
    }
    const abs = path.resolve(this.baseDir, raw);
    if (this.checkPaths && !fs.existsSync(abs)) {
      this.issue(field, `path does not exist: ${abs}`);
      return null;
    }
    return abs;
  }

  model(obj: Record<string, unknown>): ModelSpec | null {
    if (obj.model !== undefined && obj.model_config !== undefined) {
      this.issue('model', "give either 'model' or the official 'model_config', not both");
      return null;
    }
    if (obj.model_config !== undefined) return this.modelFile(obj.model_config, 'model_config');
    const m = obj.model;
    if (m === undefined) {
      this.issue('model', "required: {preset: 'tiny'|'base'|'large'} or {config: <path or inline fields>}");
      return null;
    }
    if (!isJsonObject(m)) {
      this.issue('model', `expected an object {preset} or {config}, got ${describe(m)}`);
      return null;
    }
    const keys = Object.keys(m);
    if (keys.length !== 1 || (keys[0] !== 'preset' && keys[0] !== 'config')) {
      this.issue('model', `expected exactly one of 'preset' or 'config', got keys [${keys.join(', ')}]`);
      return null;
    }
    if (keys[0] === 'preset') {
      const p = m.preset;
      if (typeof p !== 'string' || !(MODEL_PRESETS as readonly string[]).includes(p)) {
        this.issue('model.preset', `expected one of ${MODEL_PRESETS.map((x) => `'${x}'`).join(', ')}, got ${describe(p)}`);
        return null;
      }
      return { kind: 'preset', preset: p as ModelPreset };
    }
    if (typeof m.config === 'string') return this.modelFile(m.config, 'model.config');
    if (!isJsonObject(m.config)) {
      this.issue('model.config', `expected a path or an object of model fields, got ${describe(m.config)}`);
      return null;
    }
    return this.modelFields(m.config, 'model.config') ? { kind: 'inline', fields: m.config } : null;
  }

  private modelFile(raw: unknown, field: string): ModelSpec | null {
    if (typeof raw !== 'string' || raw === '') {
      this.issue(field, `expected a path to a model config JSON, got ${describe(raw)}`);
      return null;
    }
    const abs = path.resolve(this.baseDir, raw);
    if (!this.checkPaths) return { kind: 'file', path: abs, fields: {} };
    let fields: unknown;
    try {
      fields = readJsonFile(abs, 'the model config');
    } catch (e) {
      this.issue(field, (e as Error).message);
      return null;
    }
    if (!isJsonObject(fields)) {
      this.issue(field, `${abs} must hold a JSON object, got ${describe(fields)}`);
      return null;
    }
    return this.modelFields(fields, `${field} (${abs})`) ? { kind: 'file', path: abs, fields } : null;
  }

  /** Structural checks of the official UniterConfig fields that are present. */
  private modelFields(fields: Record<string, unknown>, field: string): boolean {
    const before = this.issues.length;
    const ints = ['vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'max_position_embeddings', 'type_vocab_size', 'img_dim', 'img_label_dim'];
    for (const k of ints) {
      const x = fields[k];
      if (x !== undefined && !(typeof x === 'number' && Number.isInteger(x) && x > 0)) this.issue(`${field}.${k}`, `expected a positive integer, got ${describe(x)}`);
    }
    for (const k of ['hidden_dropout_prob', 'attention_probs_dropout_prob']) {
      const x = fields[k];
      if (x !== undefined && !(typeof x === 'number' && x >= 0 && x < 1)) this.issue(`${field}.${k}`, `expected a number in [0, 1), got ${describe(x)}`);
    }
    const h = fields.hidden_size;
    const n = fields.num_attention_heads;
    if (typeof h === 'number' && typeof n === 'number' && n > 0 && h % n !== 0) this.issue(`${field}.hidden_size`, `must be divisible by num_attention_heads (${n}), got ${h}`);
    return this.issues.length === before;
  }

  datasets(obj: Record<string, unknown>, key: 'train_datasets' | 'val_datasets', train: boolean): DatasetSpec[] {
    const raw = train ? obj[key] : this.value(obj, key);
    if (!Array.isArray(raw) || (train && raw.length === 0)) {
      this.issue(key, train ? `required: a non-empty list of datasets, got ${describe(raw)}` : `expected a list of datasets, got ${describe(raw)}`);
      return [];
    }
    const out: DatasetSpec[] = [];
    const names = new Set<string>();
    let ratioSum = 0;
    let ratiosInvalid = false;
    for (const [i, d] of raw.entries()) {
      const at = `${key}[${i}]`;
      if (!isJsonObject(d)) {
        this.issue(at, `expected a dataset object {name, db, img, tasks${train ? ', mix_ratio' : ''}}, got ${describe(d)}`);
        continue;
      }
      const allowed = train ? ['name', 'db', 'img', 'tasks', 'mix_ratio'] : ['name', 'db', 'img', 'tasks'];
      for (const k of Object.keys(d)) {
        if (!allowed.includes(k)) this.issue(`${at}.${k}`, k === 'mix_ratio' ? 'mix ratios only apply to train_datasets' : `unknown field${suggest(k, new Set(allowed))}`);
      }
      const name = d.name;
      if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) this.issue(`${at}.name`, `expected a name of letters, digits, '_', '.', '-', got ${describe(name)}`);
      else if (names.has(name)) this.issue(`${at}.name`, `duplicate dataset name '${name}'`);
      else names.add(name);

      const db = this.pathList(d.db, `${at}.db`);
      const img = this.pathList(d.img, `${at}.img`);
      if (Array.isArray(d.db) && Array.isArray(d.img) && d.db.length !== d.img.length) this.issue(`${at}.img`, `needs one img_db per txt_db: ${d.db.length} db vs ${d.img.length} img`);

      const tasks: PretrainTask[] = [];
      if (!Array.isArray(d.tasks) || d.tasks.length === 0) this.issue(`${at}.tasks`, `expected a non-empty list of tasks (${PRETRAIN_TASKS.join(', ')}), got ${describe(d.tasks)}`);
      else {
        for (const [j, t] of d.tasks.entries()) {
          if (typeof t !== 'string' || !(PRETRAIN_TASKS as readonly string[]).includes(t)) this.issue(`${at}.tasks[${j}]`, `unknown task ${describe(t)}; expected one of ${PRETRAIN_TASKS.join(', ')}`);
          else if (tasks.includes(t as PretrainTask)) this.issue(`${at}.tasks[${j}]`, `task '${t}' is listed twice`);
          else tasks.push(t as PretrainTask);
        }
      }
      const spec: DatasetSpec = { name: typeof name === 'string' ? name : '', db, img, tasks };
      if (train) {
        const mix: number[] = [];
        if (!Array.isArray(d.mix_ratio)) {
          this.issue(`${at}.mix_ratio`, `required: one integer weight per task, got ${describe(d.mix_ratio)}`);
          ratiosInvalid = true;
        } else {
          if (Array.isArray(d.tasks) && d.mix_ratio.length !== d.tasks.length) this.issue(`${at}.mix_ratio`, `has ${d.mix_ratio.length} entries but tasks has ${d.tasks.length}`);
          for (const [j, r] of d.mix_ratio.entries()) {
            if (typeof r !== 'number' || !Number.isInteger(r) || r < 0) {
              this.issue(`${at}.mix_ratio[${j}]`, `expected an integer >= 0, got ${describe(r)}`);
              ratiosInvalid = true;
            } else {
              mix.push(r);
              ratioSum += r;
            }
          }
        }
        out.push({ ...spec, mix_ratio: mix } as TrainDatasetSpec);
      } else out.push(spec);
    }
    if (train && ratioSum === 0 && !ratiosInvalid) this.issue(key, 'the mix ratios sum to zero: no task could ever be drawn');
    return out;
  }

  private pathList(raw: unknown, field: string): string[] {
    if (!Array.isArray(raw) || raw.length === 0) {
      this.issue(field, `expected a non-empty list of paths, got ${describe(raw)}`);
      return [];
    }
    const out: string[] = [];
    for (const [i, p] of raw.entries()) {
      const abs = this.path(p, `${field}[${i}]`);
      if (abs !== null) out.push(abs);
    }
    return out;
  }
}


function describe(x: unknown): string {
  if (x === undefined) return 'nothing';
  const s = JSON.stringify(x);
  return s === undefined ? String(x) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** " (did you mean 'x'?)" for a near miss among the known names, else "". */
function suggest(key: string, known: Set<string>): string {
  let best = '';
  let bestDist = Infinity;
  for (const k of known) {
    const d = editDistance(key, k);
    if (d < bestDist) {
      bestDist = d;
      best = k;
    }
  }
  return bestDist <= Math.max(2, Math.floor(key.length / 4)) ? ` (did you mean '${best}'?)` : '';
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length];
}
