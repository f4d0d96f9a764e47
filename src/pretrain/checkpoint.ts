/**
 * Training checkpoints and model folders.
 *
 * A checkpoint is the directory `OUT/ckpt/step_<N>/` with
 *   model.safetensors      parameters by official name; tied tensors stored once, the ties named
 *                          in the metadata key `uniter_ties` ({alias: stored name})
 *   optimizer.safetensors  optimizer moments (optional)
 *   trainer.json           step, optimizer counters, RNG states, sampler positions, task-mixer
 *                          state, config and whatever else the caller passes as JSON
 * and `OUT/ckpt/latest` names the newest complete one.
 *
 * Verification (format version 2): trainer.json records the size and SHA-256 of every data file
 * and the run's identity (model, data, seed, schedule: whatever the caller passes), and seals
 * itself with a SHA-256 of its own text (field `checksum`). Loading verifies all of them, so a
 * flipped byte or an edited step is a damaged checkpoint; `loadLatestCheckpoint` then falls back
 * to the newest intact one and says so.
 *
 * Crash safety: the directory is built under a temporary name, every file is fsynced, the
 * directory is renamed into place, and only then is `latest` replaced (atomically). A writer
 * killed at any point leaves `latest` naming the previous good checkpoint. The last K
 * checkpoints are kept (default 2). One writer per output directory is assumed.
 *
 * A model folder (`saveModelFolder`) is the from_pretrained layout: config.json + model.safetensors.
 */
import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DType, HostTensor, f32, numel } from '../engine/host.js';
import { parseSafetensors, readSafetensors, safetensorsLayout } from '../engine/safetensors.js';
import { replaceDirAtomic, writeFileAtomic } from '../util/atomic.js';
import type { RngState } from '../util/rng.js';
import type { MixerState } from './mixer.js';
import type { AdamWStateJson, OptimizerState } from './optimizer.js';
import { readJsonFile, readJsonObject } from '../util/json.js';
import { modelFolderExtras, withModelType, type ModelCardInfo } from '../model/model-card.js';
import { checkFiniteTensor } from '../util/finite.js';

export const MODEL_FILE = 'model.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const TRAINER_FILE = 'trainer.json';
export const CONFIG_FILE = 'config.json';
export const LATEST_FILE = 'latest';
/** Metadata key of model.safetensors holding {alias: stored name} for tied parameters. */
export const TIES_METADATA_KEY = 'uniter_ties';
const TRAINER_FORMAT = 'uniter-ts/trainer-state';
const TRAINER_FORMAT_VERSION = 2;
/** Versions this build reads (1: sizes only, no checksums or identity). */
const TRAINER_READABLE_VERSIONS = [1, 2];

/** A checkpoint whose files do not match what trainer.json recorded, or that cannot be read. */
export class CheckpointError extends Error {
  override name = 'CheckpointError';
}
const STEP_DIR = /^step_(\d+)$/;

/** The JSON side of a checkpoint (trainer.json). */
export interface TrainerState {
  format: typeof TRAINER_FORMAT;
  version: number;
  /** Global optimizer step the checkpoint was taken after. */
  step: number;
  savedAt: string;
  optimizer: AdamWStateJson | null;
  rng: Record<string, RngState>;
  samplers: Record<string, unknown>;
  mixer: MixerState | null;
  config: unknown;
  extra: Record<string, unknown>;
  /** What makes the run this run (model, data, seed, schedule ...); null in version-1 checkpoints. */
  identity: Record<string, unknown> | null;
}

export interface CheckpointInput {
  step: number;
  params: Map<string, Float32Array>;
  shapes: Map<string, number[]>;
  /** alias -> stored name for tied parameters (an alias present in `params` is not stored again). */
  ties?: Record<string, string>;
  optimizer?: OptimizerState;
  rng?: Record<string, RngState>;
  samplers?: Record<string, unknown>;
  mixer?: MixerState;
  config?: unknown;
  extra?: Record<string, unknown>;
  /** The run's identity, verified on resume (see checkIdentity in run-folder.ts). */
  identity?: Record<string, unknown>;
}

export interface Checkpoint {
  dir: string;
  step: number;
  params: Map<string, Float32Array>;
  shapes: Map<string, number[]>;
  ties: Record<string, string>;
  /** Null when the checkpoint has no optimizer file or loading it was not asked for. */
  optimizer: OptimizerState | null;
  trainer: TrainerState;
}

export type CheckpointProgress =
  | { phase: 'write'; file: string; bytes: number; totalBytes: number }
  | { phase: 'renamed'; dir: string }
  | { phase: 'committed'; dir: string };

export interface SaveCheckpointOptions {
  /** How many step directories to keep (newest by step); default 2. */
  keepLast?: number;
  /** Called as files are written and at the two commit points (for progress display and fault-injection tests). */
  onProgress?: (event: CheckpointProgress) => void;
}

export function checkpointRoot(outDir: string): string {
  return path.join(outDir, 'ckpt');
}

/** Write checkpoint `OUT/ckpt/step_<step>/` atomically, point `latest` at it and prune old ones. Returns its directory. */
export function saveCheckpoint(outDir: string, input: CheckpointInput, options: SaveCheckpointOptions = {}): string {
  const keepLast = options.keepLast ?? 2;
  if (!(Number.isInteger(keepLast) && keepLast >= 1)) throw new RangeError(`saveCheckpoint: keepLast must be an integer >= 1, got ${keepLast}`);
  if (!(Number.isInteger(input.step) && input.step >= 0)) throw new RangeError(`saveCheckpoint: step must be an integer >= 0, got ${input.step}`);
  const root = checkpointRoot(outDir);
  fs.mkdirSync(root, { recursive: true });
  removeLeftovers(root);

  const name = `step_${input.step}`;
  const finalDir = path.join(root, name);
  const tmpDir = path.join(root, `.${name}.tmp-${process.pid}-${Date.now()}`);
  fs.mkdirSync(tmpDir);
  const progress = withFaultInjection(options.onProgress);
  try {
    const modelHash = createHash('sha256');
    const modelBytes = writeModelSafetensors(path.join(tmpDir, MODEL_FILE), input.params, input.shapes, input.ties ?? {}, progress, modelHash);
    const files: Record<string, number> = { [MODEL_FILE]: modelBytes };
    const sha256: Record<string, string> = { [MODEL_FILE]: modelHash.digest('hex') };
    if (input.optimizer) {
      const h = createHash('sha256');
      files[OPTIMIZER_FILE] = writeSafetensorsStreamed(path.join(tmpDir, OPTIMIZER_FILE), input.optimizer.tensors, {}, progress, h);
      sha256[OPTIMIZER_FILE] = h.digest('hex');
    }
    const trainer: TrainerState & { files: Record<string, number>; sha256: Record<string, string> } = {
      format: TRAINER_FORMAT,
      version: TRAINER_FORMAT_VERSION,
      step: input.step,
      savedAt: new Date().toISOString(),
      optimizer: input.optimizer?.json ?? null,
      rng: input.rng ?? {},
      samplers: input.samplers ?? {},
      mixer: input.mixer ?? null,
      config: input.config ?? null,
      extra: input.extra ?? {},
      identity: input.identity ?? null,
      files,
      sha256,
    };
    writeFileSynced(path.join(tmpDir, TRAINER_FILE), sealTrainerJson(trainer as unknown as Record<string, unknown>));
    syncDir(tmpDir);
  } catch (e) {
    fs.rmSync(tmpDir, { recursive: true, force: true });
    throw e;
  }

  // A same-step directory (re-save after a resume) is moved aside, not deleted, until `latest` is updated.
  let trash: string | null = null;
  if (fs.existsSync(finalDir)) {
    trash = path.join(root, `.${name}.old-${process.pid}-${Date.now()}`);
    fs.renameSync(finalDir, trash);
  }
  fs.renameSync(tmpDir, finalDir);
  syncDir(root);
  progress?.({ phase: 'renamed', dir: finalDir });
  writeFileAtomic(path.join(root, LATEST_FILE), name + '\n');
  progress?.({ phase: 'committed', dir: finalDir });
  if (trash) fs.rmSync(trash, { recursive: true, force: true });
  pruneCheckpoints(root, keepLast, name);
  return finalDir;
}

/**
 * Fault injection, for the crash tests only (test/reliability/fault-injection.test.ts); inert
 * unless one of these is in the environment:
 *   UNITER_FAULT_CHECKPOINT_TRACE=FILE  append one line per checkpoint event of this process
 *                                       ("<n> <phase> <file or dir>", n counted from 1 across
 *                                       every checkpoint the process writes);
 *   UNITER_FAULT_KILL_CHECKPOINT=N      SIGKILL this process at its N-th event (after the
 *                                       event's bytes are written, before anything else).
 */
const FAULT_TRACE = process.env.UNITER_FAULT_CHECKPOINT_TRACE;
const FAULT_KILL_AT = Number(process.env.UNITER_FAULT_KILL_CHECKPOINT ?? NaN);
let faultEvents = 0;

function withFaultInjection(onProgress?: (e: CheckpointProgress) => void): ((e: CheckpointProgress) => void) | undefined {
  if (!FAULT_TRACE && !Number.isInteger(FAULT_KILL_AT)) return onProgress;
  return (e) => {
    onProgress?.(e);
    faultEvents++;
    if (FAULT_TRACE) fs.appendFileSync(FAULT_TRACE, `${faultEvents} ${e.phase} ${e.phase === 'write' ? e.file : path.basename(e.dir)}\n`);
    if (faultEvents === FAULT_KILL_AT) {
      process.kill(process.pid, 'SIGKILL');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0); // nothing runs after the kill
    }
  };
}

/** Complete checkpoints under OUT/ckpt, oldest first. */
export function listCheckpoints(outDir: string): Array<{ step: number; dir: string }> {
  const root = checkpointRoot(outDir);
  if (!fs.existsSync(root)) return [];
  return fs
    .readdirSync(root)
    .map((n) => ({ m: STEP_DIR.exec(n), n }))
    .filter((x): x is { m: RegExpExecArray; n: string } => x.m !== null && fs.statSync(path.join(root, x.n)).isDirectory())
    .map(({ m, n }) => ({ step: Number(m[1]), dir: path.join(root, n) }))
    .sort((a, b) => a.step - b.step);
}

/**
 * The checkpoint `OUT/ckpt/latest` names, or null when there is none. If the pointer is
 * missing (or names a directory that a crash during a same-step re-save left absent), the
 * newest step directory is used. A checkpoint that fails verification (damaged, truncated,
 * edited) is skipped for the newest older one that passes, and `onFallback` is told why (default:
 * a line on stderr); when none passes, the error lists every checkpoint and its problem.
 */
export function loadLatestCheckpoint(outDir: string, options: { loadOptimizer?: boolean; onFallback?: (message: string) => void } = {}): Checkpoint | null {
  const root = checkpointRoot(outDir);
  const pointer = path.join(root, LATEST_FILE);
  const candidates: string[] = [];
  if (fs.existsSync(pointer)) {
    const name = fs.readFileSync(pointer, 'utf8').trim();
    if (!STEP_DIR.test(name)) throw new Error(`${pointer}: expected a checkpoint name like 'step_1000', got '${name.slice(0, 80)}'`);
    const dir = path.join(root, name);
    if (fs.existsSync(dir)) candidates.push(dir);
  }
  // Then older ones, newest first; none newer than the pointer's (its commit did not finish).
  const pointedStep = candidates.length ? Number(STEP_DIR.exec(path.basename(candidates[0]))![1]) : Infinity;
  for (const c of listCheckpoints(outDir).reverse()) if (c.step < pointedStep) candidates.push(c.dir);
  if (candidates.length === 0) return null;
  const problems: string[] = [];
  for (const dir of candidates) {
    try {
      const ck = loadCheckpoint(dir, options);
      if (problems.length) {
        const say = options.onFallback ?? ((m: string) => process.stderr.write(m + '\n'));
        say(`checkpoint fallback: ${problems.join('; ')}; resuming from ${dir} (step ${ck.step}), the newest intact checkpoint`);
      }
      return ck;
    } catch (e) {
      problems.push(`${dir} is damaged (${(e as Error).message})`);
    }
  }
  throw new CheckpointError(`no intact checkpoint in ${root}: ${problems.join('; ')}`);
}

/** Read one checkpoint directory. */
export function loadCheckpoint(dir: string, options: { loadOptimizer?: boolean } = {}): Checkpoint {
  const trainerFile = path.join(dir, TRAINER_FILE);
  const { state: trainer, files, sha256 } = readTrainerState(trainerFile);
  const modelBytes = readVerified(dir, MODEL_FILE, files, sha256);
  const { params, shapes, ties } = readModelSafetensors(path.join(dir, MODEL_FILE), modelBytes);
  let optimizer: OptimizerState | null = null;
  if ((options.loadOptimizer ?? true) && trainer.optimizer) {
    const file = path.join(dir, OPTIMIZER_FILE);
    if (!fs.existsSync(file)) throw new CheckpointError(`${dir}: ${TRAINER_FILE} has optimizer state but ${OPTIMIZER_FILE} is missing`);
    optimizer = { tensors: parseSafetensors(readVerified(dir, OPTIMIZER_FILE, files, sha256), file).tensors, json: trainer.optimizer };
  }
  return { dir, step: trainer.step, params, shapes, ties, optimizer, trainer };
}

/**
 * A data file's bytes, checked against the size and SHA-256 trainer.json recorded; a mismatch
 * means the directory was damaged (or edited) after the write.
 */
function readVerified(dir: string, name: string, sizes: Record<string, number>, sha256: Record<string, string>): Buffer {
  const file = path.join(dir, name);
  const expected = sizes[name];
  const actual = fs.existsSync(file) ? fs.statSync(file).size : -1;
  if (expected !== undefined && actual !== expected) throw new CheckpointError(`${file}: ${actual < 0 ? 'missing' : `${actual} bytes`}, but ${TRAINER_FILE} recorded ${expected} bytes (damaged checkpoint)`);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new CheckpointError(`${file}: cannot read (${(e as Error).message})`);
  }
  const want = sha256[name];
  if (want !== undefined) {
    const got = createHash('sha256').update(bytes).digest('hex');
    if (got !== want) throw new CheckpointError(`${file}: SHA-256 ${got.slice(0, 16)}... differs from ${want.slice(0, 16)}... recorded in ${TRAINER_FILE} (damaged or modified checkpoint)`);
  }
  return bytes;
}

/** trainer.json text sealed with the SHA-256 of its own content (field `checksum`, last). */
function sealTrainerJson(trainer: Record<string, unknown>): string {
  const body = JSON.stringify(trainer, null, 1);
  return JSON.stringify({ ...trainer, checksum: sha256Hex(body) }, null, 1) + '\n';
}

function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

function readTrainerState(file: string): { state: TrainerState; files: Record<string, number>; sha256: Record<string, string> } {
  const t = readJsonFile(file, 'trainer state', (m) => new CheckpointError(m)) as (Partial<TrainerState> & { files?: Record<string, number>; sha256?: Record<string, string>; checksum?: unknown }) | null;
  if (!t || typeof t !== 'object' || t.format !== TRAINER_FORMAT) throw new CheckpointError(`${file}: not a uniter-ts trainer state (field 'format' should be '${TRAINER_FORMAT}')`);
  if (!TRAINER_READABLE_VERSIONS.includes(t.version as number)) throw new CheckpointError(`${file}: field 'version' is ${String(t.version)}, this build reads versions ${TRAINER_READABLE_VERSIONS.join(' and ')}`);
  if (t.version !== 1) {
    // Version 2 seals the file: any edit (a step, a learning rate, a recorded checksum) shows.
    const { checksum, ...rest } = t;
    if (typeof checksum !== 'string') throw new CheckpointError(`${file}: field 'checksum' is missing (version ${String(t.version)} trainer states are sealed)`);
    if (sha256Hex(JSON.stringify(rest, null, 1)) !== checksum) throw new CheckpointError(`${file}: content does not match its checksum (edited or damaged trainer state)`);
  }
  if (!(Number.isInteger(t.step) && (t.step as number) >= 0)) throw new CheckpointError(`${file}: field 'step' must be an integer >= 0, got ${JSON.stringify(t.step)}`);
  const state: TrainerState = {
    format: TRAINER_FORMAT,
    version: t.version as number,
    step: t.step as number,
    savedAt: String(t.savedAt ?? ''),
    optimizer: t.optimizer ?? null,
    rng: t.rng ?? {},
    samplers: t.samplers ?? {},
    mixer: t.mixer ?? null,
    config: t.config ?? null,
    extra: t.extra ?? {},
    identity: (t.identity as Record<string, unknown> | undefined) ?? null,
  };
  return { state, files: t.files ?? {}, sha256: t.sha256 ?? {} };
}

/** Write the from_pretrained folder layout (config.json + model.safetensors), replacing `dir` atomically. */
export function saveModelFolder(dir: string, config: Record<string, unknown>, params: Map<string, Float32Array>, shapes: Map<string, number[]>, options: { ties?: Record<string, string>; card?: ModelCardInfo } = {}): void {
  // model_type, vocab.txt and the model card: see src/model/model-card.ts.
  const full = withModelType(config);
  replaceDirAtomic(dir, (tmp) => {
    writeFileSynced(path.join(tmp, CONFIG_FILE), JSON.stringify(full, null, 2) + '\n');
    writeModelSafetensors(path.join(tmp, MODEL_FILE), params, shapes, options.ties ?? {});
    for (const [name, content] of modelFolderExtras(full, options.card ?? { trainedBy: 'uniter-ts' })) writeFileSynced(path.join(tmp, name), content);
  });
}

export function loadModelFolder(dir: string, modelBytes?: Uint8Array): { config: Record<string, unknown>; params: Map<string, Float32Array>; shapes: Map<string, number[]>; ties: Record<string, string> } {
  const configFile = path.join(dir, CONFIG_FILE);
  const config = readJsonObject(configFile, 'model config');
  return { config, ...readModelSafetensors(path.join(dir, MODEL_FILE), modelBytes) };
}

/**
 * Write parameters as safetensors, each tied tensor once. Ties are those given (alias -> stored
 * name) plus any two names that share the same Float32Array (the later one becomes the alias).
 * Returns the file size.
 */
export function writeModelSafetensors(file: string, params: Map<string, Float32Array>, shapes: Map<string, number[]>, ties: Record<string, string>, onProgress?: (e: CheckpointProgress) => void, hash?: Hash): number {
  const allTies: Record<string, string> = { ...ties };
  for (const [alias, target] of Object.entries(ties)) {
    if (!params.has(target)) throw new Error(`${file}: tie '${alias}' -> '${target}' names a parameter that is not in the parameter map`);
    const a = params.get(alias);
    if (a && a !== params.get(target)) throw new Error(`${file}: '${alias}' is declared tied to '${target}' but holds a different array`);
  }
  const owner = new Map<Float32Array, string>();
  const tensors = new Map<string, HostTensor>();
  for (const [name, value] of params) {
    if (name in allTies) continue;
    const first = owner.get(value);
    if (first !== undefined) {
      allTies[name] = first;
      continue;
    }
    owner.set(value, name);
    const shape = shapes.get(name);
    if (!shape) throw new Error(`${file}: parameter '${name}' has no entry in the shapes map`);
    if (numel(shape) !== value.length) throw new Error(`${file}: parameter '${name}' has ${value.length} values, shape [${shape}] needs ${numel(shape)}`);
    tensors.set(name, f32(shape, value));
  }
  const metadata: Record<string, string> = { format: 'pt' };
  if (Object.keys(allTies).length) metadata[TIES_METADATA_KEY] = JSON.stringify(allTies);
  return writeSafetensorsStreamed(file, tensors, metadata, onProgress, hash);
}

/** The parameter map with every tied alias added as a second name for its stored array (shared, not copied). */
export function withTiedAliases(params: Map<string, Float32Array>, ties: Record<string, string>): Map<string, Float32Array> {
  const out = new Map(params);
  for (const [alias, target] of Object.entries(ties)) {
    const value = params.get(target);
    if (!value) throw new Error(`tie '${alias}' -> '${target}': no parameter named '${target}'`);
    out.set(alias, value);
  }
  return out;
}

/** Read a model file written by writeModelSafetensors (or any float safetensors file). Aliases are not expanded. */
export function readModelSafetensors(file: string, bytes?: Uint8Array): { params: Map<string, Float32Array>; shapes: Map<string, number[]>; ties: Record<string, string> } {
  const { tensors, metadata } = bytes ? parseSafetensors(bytes, file) : readSafetensors(file);
  const params = new Map<string, Float32Array>();
  const shapes = new Map<string, number[]>();
  for (const [name, t] of tensors) {
    if (!(t.data instanceof Float32Array)) throw new Error(`${file}: tensor '${name}' is ${t.dtype}, expected a float parameter`);
    checkFiniteTensor(file, name, t.data, t.shape);
    params.set(name, t.data);
    shapes.set(name, t.shape);
  }
  let ties: Record<string, string> = {};
  const rawTies = metadata[TIES_METADATA_KEY];
  if (rawTies !== undefined) {
    try {
      ties = JSON.parse(rawTies) as Record<string, string>;
    } catch (e) {
      throw new Error(`${file}: metadata '${TIES_METADATA_KEY}' is not JSON (${(e as Error).message})`);
    }
    for (const [alias, target] of Object.entries(ties)) {
      if (!params.has(target)) throw new Error(`${file}: metadata '${TIES_METADATA_KEY}' ties '${alias}' to '${target}', which the file does not hold`);
    }
  }
  return { params, shapes, ties };
}

// ---------------------------------------------------------------------------------------------

const WRITE_CHUNK = 8 << 20;

/**
 * Safetensors written tensor by tensor straight from the arrays (no whole-file buffer: a base
 * model's moments are ~0.9 GB), in the layout of engine/safetensors.ts, hashed as written, then
 * fsynced (the checkpoint folder is renamed into place as a whole). Returns the file size.
 */
function writeSafetensorsStreamed(file: string, tensors: Map<string, HostTensor>, metadata: Record<string, string>, onProgress?: (e: CheckpointProgress) => void, hash?: Hash): number {
  const { head, data, totalBytes: total } = safetensorsLayout(tensors, metadata, file);
  const base = path.basename(file);
  const fd = fs.openSync(file, 'w');
  try {
    let written = 0;
    const put = (bytes: Uint8Array): void => {
      for (let pos = 0; pos < bytes.length; ) {
        const n = fs.writeSync(fd, bytes, pos, Math.min(WRITE_CHUNK, bytes.length - pos));
        hash?.update(bytes.subarray(pos, pos + n));
        pos += n;
        written += n;
        onProgress?.({ phase: 'write', file: base, bytes: written, totalBytes: total });
      }
    };
    put(head);
    for (const d of data) put(d);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return total;
}

function writeFileSynced(file: string, text: string): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function syncDir(dir: string): void {
  let fd: number | null = null;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Some file systems refuse fsync on a directory; rename is still atomic there.
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

/** Temporary and set-aside directories of writers that died (never named step_<N>, never loaded). */
function removeLeftovers(root: string): void {
  for (const n of fs.readdirSync(root)) {
    if (/^\.step_\d+\.(tmp|old)-/.test(n)) fs.rmSync(path.join(root, n), { recursive: true, force: true });
  }
}

function pruneCheckpoints(root: string, keepLast: number, latestName: string): void {
  const dirs = fs
    .readdirSync(root)
    .map((n) => ({ n, m: STEP_DIR.exec(n) }))
    .filter((x) => x.m !== null)
    .sort((a, b) => Number(b.m![1]) - Number(a.m![1]));
  for (const [i, { n }] of dirs.entries()) {
    if (i >= keepLast && n !== latestName) fs.rmSync(path.join(root, n), { recursive: true, force: true });
  }
}
