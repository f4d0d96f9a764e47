/**
 * Checkpoint conversion in both directions:
 *  - a PyTorch checkpoint (`uniter-base.pt`, `model_step_N.pt`, ...) -> a model folder with
 *    `config.json` and `model.safetensors` (official names, float32, ties stored once);
 *  - a model folder -> safetensors with every official name (ties expanded, for
 *    `safetensors.torch.load_file` + `load_state_dict`), or -> a `torch.save` checkpoint.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HostTensor } from '../engine/host.js';
import { SafetensorsError, readSafetensors, writeSafetensors } from '../engine/safetensors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { OfficialWeights, UniterConfigJson, expandTies, resolveUniterConfig, toOfficialWeights } from './official-names.js';
import { TorchFormat, readTorchCheckpoint } from './torch-checkpoint.js';
import { TorchCheckpointError } from './torch-tensor.js';
import { TorchSaveFormat, serializeTorchCheckpoint, stateDictFromHost } from './torch-writer.js';
import { readJsonObject } from '../util/json.js';
import { readAns2Label } from '../finetune/tasks.js';

export const CONFIG_FILE = 'config.json';
export const WEIGHTS_FILE = 'model.safetensors';
export const WEIGHTS_FORMAT = 'UNITER state_dict (official names), float32';

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

/** PyTorch checkpoint -> OUT_DIR/config.json + OUT_DIR/model.safetensors (each written atomically). */
/**
 * PyTorch checkpoint -> model folder. With `ans2label` (the official VQA answer vocabulary
 * {answer: row}), config.json also names the answer head's rows (`id2label`), so pipelines answer
 * in words; its size must match the head.
 */
export function convertTorchCheckpoint(input: string, outDir: string, opts: { configFile?: string; ans2label?: string } = {}): ConvertReport {
  const ckpt = readTorchCheckpoint(input);
  const official = toOfficialWeights(ckpt);
  const given = opts.configFile ? { source: opts.configFile, json: readJsonObject(opts.configFile, 'config', (m) => new TorchCheckpointError(m)) } : undefined;
  const { config, notes } = resolveUniterConfig(official.tensors, given);
  const configFile = path.join(outDir, CONFIG_FILE);
  const weightsFile = path.join(outDir, WEIGHTS_FILE);
  writeSafetensors(weightsFile, official.tensors, {
    format: WEIGHTS_FORMAT,
    tied: JSON.stringify(official.tied),
    source: path.basename(input),
  });
  let id2label: Record<string, string> | undefined;
  if (opts.ans2label) {
    const a2l = readAns2Label(opts.ans2label);
    const head = official.tensors.get('vqa_output.3.weight');
    if (!head) throw new TorchCheckpointError(`${opts.ans2label}: an answer vocabulary was given, but ${input} holds no VQA head (vqa_output.3.weight)`);
    const n = Object.keys(a2l).length;
    if (n !== head.shape[0]) throw new TorchCheckpointError(`${opts.ans2label} names ${n} answers, the VQA head of ${input} has ${head.shape[0]}`);
    id2label = Object.fromEntries(Object.entries(a2l).map(([a, l]) => [String(l), a]).sort((x, y) => Number(x[0]) - Number(y[0])));
  }
  writeFileAtomic(configFile, `${JSON.stringify(id2label ? { ...config, id2label } : config, null, 2)}\n`);
  return {
    ...official,
    input,
    format: ckpt.format,
    wrapper: ckpt.wrapper,
    skipped: ckpt.skipped,
    config,
    configSource: opts.configFile ?? 'inferred from tensor shapes',
    configNotes: notes,
    configFile,
    weightsFile,
  };
}

/** Weights of a converted model: a model folder (its model.safetensors) or a safetensors file. */
export function readUniterWeights(inPath: string): { file: string; tensors: Map<string, HostTensor>; tied: Record<string, string> } {
  const file = fs.existsSync(inPath) && fs.statSync(inPath).isDirectory() ? path.join(inPath, WEIGHTS_FILE) : inPath;
  const { tensors, metadata } = readSafetensors(file);
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
  tensorCount: number;
  expanded: string[];
}

/** Model folder -> safetensors with every official name present (aliases get their own copy). */
export function exportTorchSafetensors(inPath: string, outFile: string): ExportReport {
  const w = readUniterWeights(inPath);
  const all = expandTies(w.tensors, w.tied, w.file);
  writeSafetensors(outFile, all, { format: 'pt' });
  return { file: outFile, tensorCount: all.size, expanded: Object.keys(w.tied) };
}

/** Model folder -> a torch.save checkpoint (zip by default); tied names share one storage as in PyTorch. */
export function exportTorchCheckpoint(inPath: string, outFile: string, format: TorchSaveFormat = 'zip'): ExportReport {
  const w = readUniterWeights(inPath);
  expandTies(w.tensors, w.tied, w.file); // validates the ties
  const root = stateDictFromHost(w.tensors, { tied: w.tied });
  writeFileAtomic(outFile, serializeTorchCheckpoint(root, format));
  return { file: outFile, tensorCount: w.tensors.size + Object.keys(w.tied).length, expanded: Object.keys(w.tied) };
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
