/**
 * Will a training run fit in memory? An estimate of a run's peak resident memory from its
 * configuration, what this process can get, and the refusal when the first exceeds the second:
 * before anything is allocated or written, instead of a V8 abort or "Array buffer allocation
 * failed" minutes into the run (issue 15, case 5). Pre-training and fine-tuning share it.
 *
 * The estimate (bytes):
 *   weights      4 P             P = the trained parameter count (ties stored once)
 *   Adam moments 8 P
 *   gradients    4 P             (8 P with gradient accumulation: the sum and the next micro-batch's)
 *   activations  what the training graph keeps for the backward pass of the largest micro-batch
 *                of T joint tokens (padding included) in sequences up to L:
 *                  masks   T layers (2 H + heads L)          dropout keep-masks, one byte each
 *                  layers  4 T ACT_FACTOR layers (10 H + 2 I + 2 heads L)
 *                          with checkpoint_activations: 4 T (layers H + RECOMPUTED ACT_FACTOR (10 H + 2 I + 2 heads L)),
 *                          each layer's input kept, and the intermediates of the layer being
 *                          recomputed with its backward pass's temporaries
 *                  heads   4 T HEAD_FACTOR (2 img_dim + 0.15 vocab)   region features; MLM logits
 *                or the validation batch's forward, whichever is larger
 *   runtime      Node, ONNX Runtime, the compiled graphs and the data readers: RUNTIME_BYTES
 * The factors are calibrated against the measured peak RSS of tiny to mid-size runs of `uniter
 * pretrain` on the 2-core machine (bench/memory-calibration.ts; the table is in
 * docs/reliability.md, case 5). The estimate was within MEMORY_ESTIMATE_MARGIN of each.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as v8 from 'node:v8';
import type { UniterConfig } from '../model/config.js';
import { allSpecs, TIES, type HeadName, type HeadOptions } from '../model/params.js';
import type { PretrainTask } from '../model/task-graphs.js';

/** Peak RSS of the calibration runs lies within this fraction of the estimate (either side). */
export const MEMORY_ESTIMATE_MARGIN = 0.2;
/**
 * Calibrated by least squares on the runs of bench/memory-calibration.ts (fresh processes, peak
 * RSS): bytes kept per (token, layer) over the naive count of the layer's tensors, the same for
 * the region-feature and MLM heads, the validation forward's share, and Node + ONNX Runtime +
 * graphs + readers.
 */
const ACT_FACTOR = 3;
/** Layers' worth of activations alive at once with checkpointing (one recomputed layer and its backward's temporaries). */
const RECOMPUTED = 2.1;
const HEAD_FACTOR = 2.2;
const VAL_FACTOR = 0.5;
const RUNTIME_BYTES = 200 * 2 ** 20;
const F32 = 4;

/** What the estimate needs to know of a training run. */
export interface TrainingMemoryInput {
  /** 'pre-training' or 'fine-tuning', for messages. */
  run: string;
  model: UniterConfig;
  /** Trained parameters (ties stored once). */
  parameters: number;
  /** Joint tokens (rows x padded length) of the largest training micro-batch. */
  trainTokens: number;
  /** Joint tokens of the largest validation batch. */
  valTokens: number;
  /** Longest joint sequence (text + [CLS]/[SEP] + regions). */
  seqLen: number;
  accumulation: number;
  /** The step scores masked tokens over the vocabulary (MLM). */
  vocabularyHead: boolean;
  checkpointActivations: boolean;
  /** The config's batch fields as written, for messages (e.g. 'train_batch_size 4096, val_batch_size 4096'). */
  batchFields: string;
}

/** A pre-training run, as the trainer describes it. */
export interface MemoryEstimateInput {
  model: UniterConfig;
  tasks: readonly PretrainTask[];
  /** Joint tokens per training micro-batch, padding included (train_batch_size). */
  trainBatchTokens: number;
  valBatchTokens: number;
  accumulation: number;
  /** Longest joint sequence (text + [CLS]/[SEP] + regions) the data holds. */
  maxSeqLen: number;
  checkpointActivations?: boolean;
}

export interface MemoryEstimate {
  parameters: number;
  /** Tokens and sequence length of the largest micro-batch. */
  tokens: number;
  seqLen: number;
  bytes: { weights: number; adam: number; gradients: number; activations: number; runtime: number; total: number };
}

/** Parameters of `head` (tied aliases counted once). */
export function parameterCount(cfg: UniterConfig, head: HeadName = 'pretrain', headOpts: HeadOptions = {}): number {
  let n = 0;
  for (const s of allSpecs(cfg, head, headOpts)) if (!TIES[s.name]) n += s.shape.reduce((a, b) => a * b, 1);
  return n;
}

/** The general input of a pre-training run. */
export function pretrainMemoryInput(input: MemoryEstimateInput): TrainingMemoryInput {
  const L = Math.max(1, input.maxSeqLen);
  return {
    run: 'pre-training',
    model: input.model,
    parameters: parameterCount(input.model),
    // The sampler packs sequences up to the token budget; one longer sequence is a batch by itself.
    trainTokens: Math.max(input.trainBatchTokens, L),
    valTokens: Math.max(input.valBatchTokens, L),
    seqLen: L,
    accumulation: input.accumulation,
    vocabularyHead: input.tasks.includes('mlm'),
    checkpointActivations: input.checkpointActivations ?? false,
    batchFields: `train_batch_size ${input.trainBatchTokens}, val_batch_size ${input.valBatchTokens}`,
  };
}

export function estimatePretrainMemory(input: MemoryEstimateInput): MemoryEstimate {
  return estimateTrainingMemory(pretrainMemoryInput(input));
}

export function estimateTrainingMemory(input: TrainingMemoryInput): MemoryEstimate {
  const c = input.model;
  const P = input.parameters;
  const L = Math.max(1, input.seqLen);
  const T = Math.max(input.trainTokens, L);
  const H = c.hidden_size;
  const layers = c.num_hidden_layers;
  const perTokenLayer = 10 * H + 2 * c.intermediate_size + 2 * c.num_attention_heads * L;
  // Region features enter as [T, img_dim] (and their gradient path); MLM scores its masked tokens over the vocabulary.
  const perTokenHeads = 2 * c.img_dim + (input.vocabularyHead ? 0.15 * c.vocab_size : 0);
  // Dropout keep-masks are graph inputs, alive for the whole step: two [T, H] and one [T, heads L] per layer, a byte each.
  const masks = c.hidden_dropout_prob > 0 || c.attention_probs_dropout_prob > 0 ? T * layers * (2 * H + c.num_attention_heads * L) : 0;
  const layerActivations = input.checkpointActivations ? F32 * T * (layers * H + RECOMPUTED * ACT_FACTOR * perTokenLayer) : F32 * T * ACT_FACTOR * layers * perTokenLayer;
  const train = masks + layerActivations + F32 * T * HEAD_FACTOR * perTokenHeads;
  // Validation runs forward only: about one layer's tensors live at a time.
  const Tv = Math.max(input.valTokens, L);
  const val = VAL_FACTOR * F32 * Tv * (perTokenLayer + c.img_dim + 0.15 * c.vocab_size);
  const weights = F32 * P;
  const adam = 2 * F32 * P;
  const gradients = (input.accumulation > 1 ? 2 : 1) * F32 * P;
  const activations = Math.max(train, val);
  const total = weights + adam + gradients + activations + RUNTIME_BYTES;
  return { parameters: P, tokens: T, seqLen: L, bytes: { weights, adam, gradients, activations, runtime: RUNTIME_BYTES, total } };
}

export interface AvailableMemory {
  /** Bytes this run may use (the smallest of the limits found). */
  bytes: number;
  /** Which limit that is. */
  source: string;
  /** Every limit found, for the message. */
  limits: string[];
}

/** 6G, 6GiB, 512M, 1.5g, 6442450944 (bytes). Binary units. */
export function parseMemorySize(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new Error(`${what}: expected a size like 6G, 512M or a number of bytes, got '${text}'`);
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const bytes = Math.floor(Number(m[1]) * scale);
  if (!(bytes > 0) || !Number.isSafeInteger(bytes)) throw new Error(`${what}: '${text}' is not a positive size`);
  return bytes;
}

function readNumber(file: string): number | null {
  try {
    const t = fs.readFileSync(file, 'utf8').trim();
    if (t === 'max') return null;
    const n = Number(t);
    // cgroup v1 says "no limit" with a number near 2^63.
    return Number.isFinite(n) && n > 0 && n < 2 ** 60 ? n : null;
  } catch {
    return null;
  }
}

/**
 * What this process can get: the cgroup's limit less what the rest of the cgroup uses
 * (/sys/fs/cgroup/memory.max, or memory/memory.limit_in_bytes for cgroup v1), the system's
 * available memory (os.freemem, MemAvailable on Linux) plus this process's own resident memory,
 * and the machine's total. `UNITER_MEMORY_LIMIT` (a size, e.g. 6G) replaces them all; 'off'
 * turns the check off (returns null).
 */
export function availableMemory(env: NodeJS.ProcessEnv = process.env): AvailableMemory | null {
  const override = env.UNITER_MEMORY_LIMIT;
  if (override !== undefined && override !== '') {
    if (override.trim().toLowerCase() === 'off') return null;
    const bytes = parseMemorySize(override, 'UNITER_MEMORY_LIMIT');
    return { bytes, source: 'UNITER_MEMORY_LIMIT', limits: [`UNITER_MEMORY_LIMIT ${fmtBytes(bytes)}`] };
  }
  const rss = process.memoryUsage.rss();
  const candidates: Array<{ bytes: number; source: string }> = [];
  for (const [limitFile, usageFile] of [
    ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'],
    ['/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory/memory.usage_in_bytes'],
  ]) {
    const limit = readNumber(limitFile);
    if (limit === null) continue;
    const used = readNumber(usageFile) ?? rss;
    candidates.push({ bytes: Math.max(0, limit - Math.max(0, used - rss)), source: `the cgroup limit ${fmtBytes(limit)} (${limitFile}) less ${fmtBytes(Math.max(0, used - rss))} used by other processes in it` });
    break;
  }
  candidates.push({ bytes: os.freemem() + rss, source: `available system memory ${fmtBytes(os.freemem())} plus this process's ${fmtBytes(rss)}` });
  candidates.push({ bytes: os.totalmem(), source: `total memory ${fmtBytes(os.totalmem())}` });
  const best = candidates.reduce((a, b) => (b.bytes < a.bytes ? b : a));
  return { bytes: best.bytes, source: best.source, limits: candidates.map((c) => c.source) };
}

export function fmtBytes(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

export class MemoryLimitError extends Error {
  override name = 'MemoryLimitError';
}

/** The estimate, as one line of numbers. */
export function describeEstimate(e: MemoryEstimate, input: TrainingMemoryInput): string {
  const c = input.model;
  const b = e.bytes;
  return (
    `hidden ${c.hidden_size}, ${c.num_hidden_layers} layers, intermediate ${c.intermediate_size}, ${c.num_attention_heads} heads: ${(e.parameters / 1e6).toFixed(1)}M parameters; ` +
    `largest micro-batch ${e.tokens} joint tokens (${input.batchFields}, sequences up to ${e.seqLen}), gradient_accumulation_steps ${input.accumulation}, checkpoint_activations ${input.checkpointActivations}. ` +
    `Estimated peak ${fmtBytes(b.total)} = weights ${fmtBytes(b.weights)} + Adam moments ${fmtBytes(b.adam)} + gradients ${fmtBytes(b.gradients)} + activations ${fmtBytes(b.activations)} + runtime ${fmtBytes(b.runtime)} (within ±${MEMORY_ESTIMATE_MARGIN * 100}% of measured runs)`
  );
}

/**
 * Refuse a run whose estimated peak exceeds what the process can get, naming the numbers;
 * returns the estimate and the limit (null when the check is off). V8's heap limit matters only
 * for JS objects (parameters, moments and batches are typed arrays outside its heap); a heap
 * already near it is refused too.
 */
export function checkTrainingMemory(input: TrainingMemoryInput, available: AvailableMemory | null = availableMemory()): { estimate: MemoryEstimate; available: AvailableMemory | null } {
  const estimate = estimateTrainingMemory(input);
  if (!available) return { estimate, available };
  if (estimate.bytes.total > available.bytes) {
    throw new MemoryLimitError(
      `this ${input.run} run does not fit in memory: ${describeEstimate(estimate, input)}; ` +
        `this process can get ${fmtBytes(available.bytes)} (${available.source}). ` +
        `Lower train_batch_size / val_batch_size, set checkpoint_activations${input.checkpointActivations ? ' (already on)' : ''}, or use a smaller model; ` +
        `UNITER_MEMORY_LIMIT=SIZE sets the memory the check assumes (UNITER_MEMORY_LIMIT=off skips it)`,
    );
  }
  const heap = v8.getHeapStatistics();
  if (heap.used_heap_size > 0.9 * heap.heap_size_limit) {
    throw new MemoryLimitError(`V8's heap is nearly full before ${input.run} starts (${fmtBytes(heap.used_heap_size)} of its ${fmtBytes(heap.heap_size_limit)} limit); raise it with node --max-old-space-size or use less data in memory`);
  }
  return { estimate, available };
}

/** What a run may use: a byte count (the library's memoryLimit option), 'off', or (default) what the process can get. */
export function memoryLimitFrom(limit: number | 'off' | undefined): AvailableMemory | null {
  return limit === 'off' ? null : typeof limit === 'number' ? { bytes: limit, source: `the memoryLimit option, ${fmtBytes(limit)}`, limits: [] } : availableMemory();
}

/** Longest joint sequence in the data: the longest kept text (at most maxTxtLen) + [CLS]/[SEP] + the most regions of any image. */
export function longestSequence(sources: ReadonlyArray<{ img: { keys(): string[]; nbb(k: string): number } }>, maxTxtLen: number): number {
  let regions = 0;
  const seen = new Set<unknown>();
  for (const s of sources) {
    if (seen.has(s.img)) continue;
    seen.add(s.img);
    for (const k of s.img.keys()) regions = Math.max(regions, s.img.nbb(k));
  }
  return maxTxtLen + 2 + regions;
}

/** RangeError "Array buffer allocation failed", V8's and ONNX Runtime's allocation failures. */
export function isOutOfMemory(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  return /Array buffer allocation failed|Failed to allocate memory|bad_alloc|Cannot allocate memory|Invalid typed array length|Reached heap limit/i.test(e.message);
}
