/**
 * Checkpoint conversion in both directions:
 *  - a PyTorch checkpoint (`uniter-base.pt`, `model_step_N.pt`, ...) -> a model folder with
 *    `config.json` and `model.safetensors` (official names, float32, ties stored once);
 *  - a model folder -> safetensors with every official name (ties expanded, for
 *    `safetensors.torch.load_file` + `load_state_dict`), or -> a `torch.save` checkpoint;
 *  - a BUTD region detector (the reference port's torch state dict, or the original Caffe
 *    release) -> a detector folder with `config.json` and `model.safetensors`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HostTensor } from '../engine/host.js';
import { SafetensorsError, parseSafetensors, readSafetensors, writeSafetensors } from '../engine/safetensors.js';
import { readFileReporting, type PhaseProgress } from '../util/progress.js';
import { writeFileAtomic } from '../util/atomic.js';
import { OfficialWeights, UniterConfigJson, expandTies, resolveUniterConfig, toOfficialWeights } from './official-names.js';
import { TorchCheckpoint, TorchFormat, readTorchCheckpoint } from './torch-checkpoint.js';
import { DetectorConfig, parseDetectorConfig, writeDetectorConfig } from '../detector/config.js';
import { replaceDirAtomic } from '../util/atomic.js';
import { caffeToDetector } from './caffe-detector.js';
import { CaffeError } from './caffe.js';
import { DetectorWeightsError, checkDetectorTensors } from '../detector/weights.js';
import { inferDetectorConfig } from './detector-weights.js';
import { TorchCheckpointError } from './torch-tensor.js';
import { TorchSaveFormat, stateDictFromHost, writeTorchCheckpoint } from './torch-writer.js';
import { readJsonObject } from '../util/json.js';
import { readAns2Label } from '../finetune/task-registry.js';
import { parseConfig } from '../model/config.js';
import { modelFolderExtras, withModelType } from '../model/model-card.js';
import { allSpecs, bodySpecs } from '../model/params.js';
import { headOf } from '../model/task-graphs.js';
import { loadModelFolder } from '../pretrain/checkpoint.js';
import { headsInWeights } from '../api/scoring-heads.js';

export const CONFIG_FILE = 'config.json';
export const WEIGHTS_FILE = 'model.safetensors';
export const WEIGHTS_FORMAT = 'UNITER state_dict (official names), float32';

/** A conversion refused before anything was written (bad output path, unloadable result, unknown head count). */
export class ConvertError extends Error {}

/**
 * The config written beside a weights file by `--to-torch` / `--to-torch-safetensors`, and read
 * back when that file is converted again: OUT.pt -> OUT.config.json (the last extension replaced).
 */
export function sidecarConfigPath(weightsFile: string): string {
  const base = path.basename(weightsFile);
  const stem = base.includes('.') ? base.slice(0, base.lastIndexOf('.')) : base;
  return path.join(path.dirname(weightsFile), `${stem}.config.json`);
}

/** Refuse an output folder that is a file, or an existing one without overwrite. */
function checkModelOutDir(outDir: string, overwrite: boolean): void {
  if (!fs.existsSync(outDir)) return;
  if (!fs.statSync(outDir).isDirectory()) throw new ConvertError(`${outDir} is a file, not a folder; choose another output path`);
  if (!overwrite) throw new ConvertError(`${outDir} already exists; pass --overwrite to replace it (it is replaced atomically, only once the new folder has loaded)`);
}

/** Refuse an output file that is a folder, or an existing one without overwrite. */
function checkOutFile(file: string, overwrite: boolean): void {
  if (!fs.existsSync(file)) return;
  if (fs.statSync(file).isDirectory()) throw new ConvertError(`${file} is a folder; give a file path (e.g. ${path.join(file, 'model.pt')})`);
  if (!overwrite) throw new ConvertError(`${file} already exists; pass --overwrite to replace it`);
}

/**
 * Load a just-written model folder the way the library will: config.json parses, every tensor is
 * float32 and finite, the model body is complete with the config's shapes, and the heads present
 * have their shapes. Throws naming the first problem.
 */
export function verifyModelFolder(dir: string, onProgress?: PhaseProgress): void {
  const bytes = readFileReporting(path.join(dir, WEIGHTS_FILE), onProgress); // read once, checked twice
  const { config } = loadModelFolder(dir, bytes); // float tensors only (int8 etc. refused), config.json readable
  const cfg = parseConfig(config, path.join(dir, CONFIG_FILE));
  const weights = readUniterWeights(dir, { bytes });
  const shapes = new Map([...weights.tensors].map(([k, t]) => [k, t.shape]));
  const aliases = new Set(Object.keys(weights.tied));
  const check = (name: string, want: readonly number[], required: boolean) => {
    const got = shapes.get(name);
    if (!got) {
      if (required && !aliases.has(name)) throw new ConvertError(`the weights lack '${name}' (shape [${want}]) of the model body`);
      return;
    }
    if (got.join() !== want.join()) throw new ConvertError(`tensor '${name}' has shape [${got}], the config needs [${want}]`);
  };
  for (const spec of bodySpecs(cfg)) check(spec.name, spec.shape, true);
  for (const { task } of headsInWeights(shapes, cfg)) {
    const vqa = shapes.get('vqa_output.3.weight');
    for (const spec of allSpecs(cfg, headOf(task), { numAnswers: vqa?.[0] })) check(spec.name, spec.shape, false);
  }
}

export interface ConvertReport extends OfficialWeights {
  input: string;
  format: TorchFormat;
  wrapper: string | null;
  /** Non-tensor entries of the state dict that were left out. */
  skipped: Array<{ name: string; value: string }>;
  config: UniterConfigJson;
  configSource: string;
  configNotes: string[];
  configFile: string;
  weightsFile: string;
}

/**
 * PyTorch checkpoint -> model folder (config.json with model_type, model.safetensors, vocab.txt,
 * README.md). The config comes from `configFile`, else from the config written beside the
 * checkpoint (IN.config.json, as --to-torch writes it, or config.json in the same folder), else
 * from the tensor shapes; the head count cannot be read off shapes, so without one of those it
 * must be given (`numHeads`) and is never guessed. With `ans2label` (the official VQA answer
 * vocabulary {answer: row}), config.json also names the answer head's rows (`id2label`).
 *
 * The folder is built aside, loaded back (verifyModelFolder) and only then renamed into place; an
 * existing OUT_DIR is replaced (atomically) only with `overwrite`. On any error nothing is left.
 */
export function convertTorchCheckpoint(
  input: string,
  outDir: string,
  opts: { configFile?: string; ans2label?: string; checkpoint?: TorchCheckpoint; numHeads?: number; overwrite?: boolean; onProgress?: PhaseProgress } = {},
): ConvertReport {
  checkModelOutDir(outDir, opts.overwrite === true);
  const ckpt = opts.checkpoint ?? readTorchCheckpoint(input, opts.onProgress);
  const official = toOfficialWeights(ckpt);
  let given: { source: string; json: Record<string, unknown> } | undefined;
  if (opts.configFile) given = { source: opts.configFile, json: readJsonObject(opts.configFile, 'config', (m) => new TorchCheckpointError(m)) };
  else {
    for (const beside of [sidecarConfigPath(input), path.join(path.dirname(input), CONFIG_FILE)]) {
      if (fs.existsSync(beside) && fs.statSync(beside).isFile()) {
        given = { source: beside, json: readJsonObject(beside, 'config', (m) => new TorchCheckpointError(m)) };
        break;
      }
    }
  }
  if (opts.numHeads !== undefined) {
    const stated = given?.json.num_attention_heads;
    if (stated !== undefined && stated !== opts.numHeads) throw new ConvertError(`--num-heads ${opts.numHeads} contradicts num_attention_heads ${JSON.stringify(stated)} in ${given!.source}`);
    given = { source: given ? `${given.source} + --num-heads` : '--num-heads', json: { ...(given?.json ?? {}), num_attention_heads: opts.numHeads } };
  }
  if (given?.json.num_attention_heads === undefined) {
    const hidden = official.tensors.get('uniter.embeddings.word_embeddings.weight')?.shape[1];
    const known = hidden === 768 ? ' (UNITER-base has 12 heads: --num-heads 12 or --config configs/official/uniter-base.json)' : hidden === 1024 ? ' (UNITER-large has 16: --num-heads 16 or --config configs/official/uniter-large.json)' : '';
    throw new TorchCheckpointError(
      `cannot infer config field 'num_attention_heads': tensor shapes do not show the head count${given ? ` and ${given.source} does not give it` : ''}; pass --num-heads N or --config with a model config JSON${known}`,
    );
  }
  const { config, notes } = resolveUniterConfig(official.tensors, given);
  let id2label: Record<string, string> | undefined;
  if (opts.ans2label) {
    const a2l = readAns2Label(opts.ans2label);
    const head = official.tensors.get('vqa_output.3.weight');
    if (!head) throw new TorchCheckpointError(`${opts.ans2label}: an answer vocabulary was given, but ${input} holds no VQA head (vqa_output.3.weight)`);
    const n = Object.keys(a2l).length;
    if (n !== head.shape[0]) throw new TorchCheckpointError(`${opts.ans2label} names ${n} answers, the VQA head of ${input} has ${head.shape[0]}`);
    id2label = Object.fromEntries(Object.entries(a2l).map(([a, l]) => [String(l), a]).sort((x, y) => Number(x[0]) - Number(y[0])));
  }
  const full = withModelType(id2label ? { ...config, id2label } : { ...config });
  replaceDirAtomic(outDir, (tmp) => {
    writeSafetensors(path.join(tmp, WEIGHTS_FILE), official.tensors, { format: WEIGHTS_FORMAT, tied: JSON.stringify(official.tied), source: path.basename(input) }, opts.onProgress);
    writeFileAtomic(path.join(tmp, CONFIG_FILE), `${JSON.stringify(full, null, 2)}\n`);
    for (const [name, content] of modelFolderExtras(full, { trainedBy: `uniter convert from ${path.basename(input)} (torch ${ckpt.format} format)`, data: 'not recorded in the checkpoint' })) writeFileAtomic(path.join(tmp, name), content);
    try {
      verifyModelFolder(tmp, opts.onProgress && ((phase, done, total, unit) => opts.onProgress!(`loading back ${phase.replace(/^reading /, '')}`, done, total, unit)));
    } catch (e) {
      throw new ConvertError(`refusing to write ${outDir}: the converted folder would not load (${(e as Error).message}); nothing was written`);
    }
  });
  return {
    ...official,
    input,
    format: ckpt.format,
    wrapper: ckpt.wrapper,
    skipped: ckpt.skipped,
    config,
    configSource: given ? `${given.source}, checked against the tensor shapes` : 'inferred from tensor shapes',
    configNotes: notes,
    configFile: path.join(outDir, CONFIG_FILE),
    weightsFile: path.join(outDir, WEIGHTS_FILE),
  };
}

/**
 * Weights of a converted model: a model folder (its model.safetensors) or a safetensors file;
 * `bytes`: the file's contents, already read; `onProgress`: the bytes read (phase `reading <name>`).
 */
export function readUniterWeights(inPath: string, opts: { bytes?: Uint8Array; onProgress?: PhaseProgress } = {}): { file: string; tensors: Map<string, HostTensor>; tied: Record<string, string> } {
  const file = fs.existsSync(inPath) && fs.statSync(inPath).isDirectory() ? path.join(inPath, WEIGHTS_FILE) : inPath;
  const { tensors, metadata } = opts.bytes ? parseSafetensors(opts.bytes, file) : readSafetensors(file, opts.onProgress);
  let tied: Record<string, string> = {};
  if (metadata.tied !== undefined) {
    try {
      tied = JSON.parse(metadata.tied) as Record<string, string>;
    } catch (e) {
      throw new SafetensorsError(`${file}: __metadata__.tied is not valid JSON (${(e as Error).message})`);
    }
    if (typeof tied !== 'object' || tied === null || Array.isArray(tied) || Object.values(tied).some((v) => typeof v !== 'string')) {
      throw new SafetensorsError(`${file}: __metadata__.tied must be a JSON object of alias -> primary names`);
    }
  }
  return { file, tensors, tied };
}

export interface ExportReport {
  file: string;
  /** The model config written beside the file (OUT.config.json), read back when it is converted again. */
  configFile: string | null;
  tensorCount: number;
  expanded: string[];
}

/** The model folder's config.json, when it has one (written beside exported weights). */
function folderConfig(inPath: string): Record<string, unknown> | null {
  const dir = fs.existsSync(inPath) && fs.statSync(inPath).isDirectory() ? inPath : null;
  const file = dir ? path.join(dir, CONFIG_FILE) : sidecarConfigPath(inPath);
  return fs.existsSync(file) ? readJsonObject(file, 'model config', (m) => new SafetensorsError(m)) : null;
}

/**
 * Read a model folder and export it through `write` (which returns the tensor count), with its
 * config beside the file; an existing output or config is refused before any work unless `overwrite`.
 */
function exportFolder(inPath: string, outFile: string, opts: { overwrite?: boolean; onProgress?: PhaseProgress }, write: (w: ReturnType<typeof readUniterWeights>) => number): ExportReport {
  const config = folderConfig(inPath);
  checkOutFile(outFile, opts.overwrite === true);
  const configFile = config ? sidecarConfigPath(outFile) : null;
  if (configFile) checkOutFile(configFile, opts.overwrite === true);
  const w = readUniterWeights(inPath, { onProgress: opts.onProgress });
  const tensorCount = write(w);
  if (configFile) writeFileAtomic(configFile, `${JSON.stringify(config, null, 2)}\n`);
  return { file: outFile, configFile, tensorCount, expanded: Object.keys(w.tied) };
}

/** Model folder -> safetensors with every official name present (aliases get their own copy), config beside it. */
export function exportTorchSafetensors(inPath: string, outFile: string, opts: { overwrite?: boolean; onProgress?: PhaseProgress } = {}): ExportReport {
  return exportFolder(inPath, outFile, opts, (w) => {
    const all = expandTies(w.tensors, w.tied, w.file);
    writeSafetensors(outFile, all, { format: 'pt' }, opts.onProgress);
    return all.size;
  });
}

/** Model folder -> a torch.save checkpoint (zip by default), config beside it; tied names share one storage as in PyTorch. */
export function exportTorchCheckpoint(inPath: string, outFile: string, format: TorchSaveFormat = 'zip', opts: { overwrite?: boolean; onProgress?: PhaseProgress } = {}): ExportReport {
  return exportFolder(inPath, outFile, opts, (w) => {
    expandTies(w.tensors, w.tied, w.file); // validates the ties
    writeTorchCheckpoint(outFile, stateDictFromHost(w.tensors, { tied: w.tied, onProgress: opts.onProgress }), format, opts.onProgress);
    return w.tensors.size + Object.keys(w.tied).length;
  });
}

/** Human summary of a conversion. */
export function formatConvertReport(r: ConvertReport, maxListed = 6): string {
  const lines: string[] = [];
  const aliases = Object.keys(r.tied);
  lines.push(`read ${r.input} (torch ${r.format} format${r.wrapper ? `, state dict under '${r.wrapper}'` : ''})`);
  lines.push(`  ${r.tensors.size + aliases.length} tensors -> ${r.tensors.size} stored${aliases.length ? ` + ${aliases.length} tied alias${aliases.length > 1 ? 'es' : ''}` : ''}`);
  for (const { from, to, names } of r.casts) {
    lines.push(`  cast ${from} -> ${to}: ${names.length} tensor${names.length > 1 ? 's' : ''}${from === 'float64' ? ' (rounded)' : ' (exact)'}`);
  }
  if (r.casts.length === 0) lines.push('  dtypes kept (no cast needed)');
  for (const a of aliases) lines.push(`  tied: ${a} -> ${r.tied[a]} (${r.tieEvidence[a]})`);
  if (r.renamed.length) {
    lines.push(`  renamed ${r.renamed.length} key${r.renamed.length > 1 ? 's' : ''}:`);
    for (const [from, to] of r.renamed.slice(0, maxListed)) lines.push(`    ${from} -> ${to}`);
    if (r.renamed.length > maxListed) lines.push(`    ... and ${r.renamed.length - maxListed} more`);
  }
  if (r.skipped.length) lines.push(`  skipped non-tensor entries: ${r.skipped.map((s) => `${s.name} (${s.value})`).join(', ')}`);
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  const c = r.config;
  lines.push(
    `  config (${r.configSource}): vocab ${c.vocab_size}, hidden ${c.hidden_size}, layers ${c.num_hidden_layers}, heads ${c.num_attention_heads}, intermediate ${c.intermediate_size}, positions ${c.max_position_embeddings}, token types ${c.type_vocab_size}, img_dim ${c.img_dim}, img_label_dim ${c.img_label_dim}`,
  );
  for (const n of r.configNotes) lines.push(`    ${n}`);
  lines.push(`wrote ${r.configFile}`);
  lines.push(`wrote ${r.weightsFile}`);
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Region detector folders

export const DETECTOR_WEIGHTS_FORMAT = 'BUTD Faster R-CNN state_dict (reference names), float32';

export interface DetectorConvertReport {
  input: string;
  /** 'caffe' (caffemodel + prototxt) or the torch.save format. */
  source: 'caffe' | TorchFormat;
  config: DetectorConfig;
  configSource: string;
  /** Config values read off the weights, and those that are VG defaults (inferred configs only). */
  inferred: string[];
  defaults: string[];
  notes: string[];
  /** State-dict entries left out (num_batches_tracked counters, names the reference lacks). */
  dropped: string[];
  tensorCount: number;
  outDir: string;
  configFile: string;
  weightsFile: string;
}

/** Refuse to replace an existing output unless asked; never replace a file with a folder. */
function checkOutDir(outDir: string, overwrite: boolean): void {
  if (!fs.existsSync(outDir)) return;
  if (!fs.statSync(outDir).isDirectory()) throw new DetectorWeightsError(`${outDir} exists and is not a folder; choose another output path`);
  if (!overwrite) throw new DetectorWeightsError(`${outDir} already exists; pass --overwrite to replace it`);
}

function writeDetectorFolder(outDir: string, config: DetectorConfig, tensors: Map<string, HostTensor>, source: string, onProgress?: PhaseProgress): { configFile: string; weightsFile: string } {
  replaceDirAtomic(outDir, (tmp) => {
    writeDetectorConfig(path.join(tmp, CONFIG_FILE), config);
    writeSafetensors(path.join(tmp, WEIGHTS_FILE), tensors, { format: DETECTOR_WEIGHTS_FORMAT, source }, onProgress);
  });
  return { configFile: path.join(outDir, CONFIG_FILE), weightsFile: path.join(outDir, WEIGHTS_FILE) };
}

/** The original BUTD Caffe release (weights + test prototxt) -> a detector folder. */
export function convertDetectorCaffe(input: string, prototxt: string, outDir: string, opts: { overwrite?: boolean; onProgress?: PhaseProgress } = {}): DetectorConvertReport {
  checkOutDir(outDir, opts.overwrite === true);
  const read = (file: string, onProgress?: PhaseProgress): Buffer => {
    try {
      return readFileReporting(file, onProgress);
    } catch (e) {
      throw new CaffeError(`${file}: cannot read (${(e as Error).message})`);
    }
  };
  const bytes = read(input, opts.onProgress);
  const text = read(prototxt).toString('utf8');
  const { config, tensors, notes } = caffeToDetector(bytes, text, { caffemodel: input, prototxt }, opts.onProgress);
  const files = writeDetectorFolder(outDir, config, tensors, path.basename(input), opts.onProgress);
  return { input, source: 'caffe', config, configSource: `derived from ${prototxt} and the blob shapes, other values VG defaults`, inferred: [], defaults: [], notes, dropped: [], tensorCount: tensors.size, outDir, ...files };
}

/** Read a detector config file: JSON with the reference's keys (config.json). */
function readDetectorConfigFile(file: string): DetectorConfig {
  if (/\.ya?ml$/i.test(file)) {
    throw new DetectorWeightsError(`${file}: only JSON configs are read; give the reference config as JSON with the same keys (as in a detector folder's config.json)`);
  }
  return parseDetectorConfig(readJsonObject(file, 'detector config', (m) => new DetectorWeightsError(m)), file);
}

/** A reference-port torch state dict (already read) -> a detector folder. */
export function convertDetectorTorch(ckpt: TorchCheckpoint, outDir: string, opts: { configFile?: string; overwrite?: boolean; onProgress?: PhaseProgress } = {}): DetectorConvertReport {
  checkOutDir(outDir, opts.overwrite === true);
  const where = ckpt.wrapper ? `${ckpt.file} [${ckpt.wrapper}]` : ckpt.file;
  const tensors = new Map<string, HostTensor>();
  const dropped: string[] = [];
  const notes: string[] = [];
  for (const [n, t] of ckpt.tensors) {
    // BatchNorm's batch counters only matter for training.
    if (n.endsWith('.num_batches_tracked')) {
      dropped.push(n);
      continue;
    }
    if (t.dtype === 'float64') {
      tensors.set(n, { dtype: 'float32', shape: t.shape, data: Float32Array.from(t.data as Float64Array) });
      notes.push(`${n}: float64 rounded to float32`);
    } else if (t.dtype !== 'float32') {
      throw new DetectorWeightsError(`${where}: tensor '${n}' is ${t.dtype}; the detector's parameters are floating point`);
    } else tensors.set(n, t);
  }
  let config: DetectorConfig;
  let inferred: string[] = [];
  let defaults: string[] = [];
  if (opts.configFile) config = readDetectorConfigFile(opts.configFile);
  else ({ config, inferred, defaults } = inferDetectorConfig(tensors, where));
  const { unexpected } = checkDetectorTensors(config, tensors, opts.configFile ? `${where} (with ${opts.configFile})` : where);
  for (const n of unexpected) {
    tensors.delete(n);
    dropped.push(n);
  }
  if (unexpected.length) notes.push(`left out ${unexpected.length} tensor(s) the reference detector does not have: ${unexpected.slice(0, 6).join(', ')}${unexpected.length > 6 ? ', ...' : ''}`);
  const files = writeDetectorFolder(outDir, config, tensors, path.basename(ckpt.file), opts.onProgress);
  return {
    input: ckpt.file,
    source: ckpt.format,
    config,
    configSource: opts.configFile ?? 'inferred from tensor shapes on top of the VG config',
    inferred,
    defaults,
    notes,
    dropped,
    tensorCount: tensors.size,
    outDir,
    ...files,
  };
}

export function formatDetectorReport(r: DetectorConvertReport): string {
  const c = r.config;
  const lines = [`read ${r.input} (${r.source === 'caffe' ? 'Caffe BUTD release' : `torch ${r.source} format`}): region detector`];
  lines.push(`  ${r.tensorCount} tensors${r.dropped.length ? `; left out ${r.dropped.length} (${r.dropped.filter((n) => n.endsWith('num_batches_tracked')).length} num_batches_tracked)` : ''}`);
  lines.push(`  config (${r.configSource}): ResNet-${c.resnets.depth}, stem ${c.resnets.stem_out_channels}, res2 ${c.resnets.res2_out_channels}, width ${c.resnets.width_per_group}, RPN hidden ${c.proposal_generator.hidden_channels}, ${c.roi_heads.num_classes} classes, ${c.roi_box_head.num_attrs} attributes`);
  for (const l of r.inferred) lines.push(`    inferred: ${l}`);
  for (const l of r.defaults) lines.push(`    VG default: ${l}`);
  for (const n of r.notes) lines.push(`  note: ${n}`);
  lines.push(`wrote ${r.configFile}`);
  lines.push(`wrote ${r.weightsFile}`);
  return lines.join('\n');
}
