/**
 * What a UNITER model folder carries besides config.json and model.safetensors, so that it can be
 * used without this library (e.g. an exported ONNX model with the tokenizer of the folder):
 *  - config.json gets `model_type: "uniter"` (and `id2label` where the head has named classes);
 *  - vocab.txt, the WordPiece vocabulary the model was trained with (bert-base-cased, bundled);
 *  - README.md, a model card: what trained it, on what, its architecture and metrics when known.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bundledVocabPath } from '../data/tokenizer.js';
import { writeFileAtomic } from '../util/atomic.js';

export const MODEL_TYPE = 'uniter';
export const VOCAB_FILE = 'vocab.txt';
export const CARD_FILE = 'README.md';
/** The tokenizer of every model this library trains and of the official checkpoints (meta.json `toker`). */
export const TOKENIZER_NAME = 'bert-base-cased';

export interface ModelCardInfo {
  /** The command or source that produced the weights. */
  trainedBy: string;
  /** The data it was trained on, in words. */
  data?: string;
  /** The fine-tuning task, when it is a task model. */
  task?: string;
  steps?: number;
  /** Metrics by split (or by pre-training task). */
  metrics?: Record<string, Record<string, number>>;
  notes?: string[];
}

/** config.json content of a model folder: model_type first, then the fields given. */
export function withModelType(config: Record<string, unknown>): Record<string, unknown> {
  return { model_type: MODEL_TYPE, ...config };
}

function num(config: Record<string, unknown>, key: string): string {
  return typeof config[key] === 'number' ? String(config[key]) : '?';
}

/** The model card (Markdown, with a YAML front matter as model hubs read it). */
export function modelCardText(config: Record<string, unknown>, info: ModelCardInfo): string {
  const lines = ['---', 'library_name: uniter-ts', `tags: [uniter, vision-language${info.task ? `, ${info.task}` : ''}]`, '---', ''];
  lines.push(`# UNITER${info.task ? ` fine-tuned for ${info.task}` : ''}`, '');
  lines.push(`- Trained by: ${info.trainedBy}`);
  if (info.data) lines.push(`- Data: ${info.data}`);
  if (info.steps !== undefined) lines.push(`- Steps: ${info.steps}`);
  lines.push(
    `- Architecture: hidden ${num(config, 'hidden_size')}, ${num(config, 'num_hidden_layers')} layers, ${num(config, 'num_attention_heads')} heads, intermediate ${num(config, 'intermediate_size')}, vocabulary ${num(config, 'vocab_size')}, region features ${num(config, 'img_dim')}-d`,
  );
  lines.push(`- Tokenizer: ${TOKENIZER_NAME} WordPiece (${VOCAB_FILE}, lower-casing off)`);
  const id2label = config.id2label as Record<string, string> | undefined;
  if (id2label && typeof id2label === 'object') {
    const names = Object.values(id2label);
    lines.push(`- Labels (config.json id2label): ${names.length} (${names.slice(0, 8).join(', ')}${names.length > 8 ? ', ...' : ''})`);
  }
  const vocabSize = typeof config.vocab_size === 'number' ? config.vocab_size : null;
  if (vocabSize !== null && vocabSize > 28996) lines.push(`- Note: the word embedding has ${vocabSize} rows; ${VOCAB_FILE} names the first 28996 (the rest are task tokens, e.g. VCR's person tags)`);
  for (const n of info.notes ?? []) lines.push(`- ${n}`);
  if (info.metrics && Object.keys(info.metrics).length) {
    lines.push('', '## Metrics', '', '| split / task | metric | value |', '|---|---|---|');
    for (const [split, m] of Object.entries(info.metrics)) for (const [k, v] of Object.entries(m)) lines.push(`| ${split} | ${k} | ${Number.isInteger(v) ? v : v.toFixed(4)} |`);
  } else lines.push('', 'Metrics: not recorded with this folder.');
  lines.push(
    '',
    '## Use',
    '',
    '```js',
    "import { Uniter } from 'uniter-ts';",
    `const model = await Uniter.fromPretrained('path/to/this/folder');`,
    '```',
    '',
    'Files: `config.json` (official UNITER field names), `model.safetensors` (official parameter names, float32,',
    `tied weights stored once and listed in the metadata), \`${VOCAB_FILE}\`, this card.`,
    '',
  );
  return lines.join('\n');
}

/** The files besides config.json and model.safetensors, by name. */
export function modelFolderExtras(config: Record<string, unknown>, info: ModelCardInfo): Map<string, string> {
  return new Map<string, string>([
    [VOCAB_FILE, fs.readFileSync(bundledVocabPath(), 'utf8')],
    [CARD_FILE, modelCardText(config, info)],
  ]);
}

/**
 * Complete an existing model folder: model_type in config.json, vocab.txt, and README.md written
 * from `info` (replacing an earlier card). Each file is written atomically.
 */
export function writeModelCard(dir: string, info: ModelCardInfo): void {
  const configFile = path.join(dir, 'config.json');
  if (!fs.existsSync(configFile)) return;
  const config = JSON.parse(fs.readFileSync(configFile, 'utf8')) as Record<string, unknown>;
  if (config.model_type === undefined) writeFileAtomic(configFile, JSON.stringify(withModelType(config), null, 2) + '\n');
  for (const [name, content] of modelFolderExtras(config, info)) writeFileAtomic(path.join(dir, name), content);
}
