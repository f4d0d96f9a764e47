/**
 * ONNX export of a model folder for one scoring task: the inference graph (no targets, no loss)
 * with the weights inside, inputs named as the official batch fields, dynamic batch and sequence
 * axes (B, Lt, N, Lj), and a JSON sidecar describing inputs, outputs, dims and the config.
 * `verify` runs the written file in a fresh ONNX Runtime session on generated batches of two
 * sizes and compares it with the library's own outputs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Dim } from '../engine/dims.js';
import type { DType, HostTensor } from '../engine/host.js';
import { emitOnnx } from '../engine/onnx.js';
import { fromOrt, toOrt } from '../engine/runtime.js';
import { UniterRunner } from '../model/runner.js';
import { buildTaskGraph } from '../model/task-graphs.js';
import { PRECISIONS, Precision } from '../model/uniter.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { PhaseProgress } from '../util/progress.js';
import { PretrainedModel, loadPretrained } from '../api/pretrained.js';
import { SCORE_OUTPUT, ScoringTask, TaskRequest } from '../api/scoring-heads.js';
import { OutputInfo, WrittenOnnx, writeOnnxModel } from './onnx-file.js';
import { VERIFY_SHAPES, sampleBatch } from './sample.js';

export const SIDECAR_FORMAT = 'uniter-ts/onnx-export';
export const SIDECAR_VERSION = 1;
export const DEFAULT_TOLERANCE = 1e-5;

/** What each official batch field is; an exported graph may only ask for these. */
export const BATCH_INPUTS: Readonly<Record<string, string>> = {
  input_ids: 'WordPiece ids "[CLS] text [SEP]" per row, right-padded with 0',
  position_ids: 'text positions 0 .. Lt-1 (one row shared by the batch)',
  img_feat: 'region features, zero-padded to N regions',
  img_pos_feat: 'region boxes [x1, y1, x2, y2, w, h, w*h], normalised by the image size, zero-padded',
  attn_masks: 'row i: tl_i + nbb_i ones (its text and regions), then 0',
  gather_index: 'slot j of row i takes position gather_index[i, j] of cat(text [Lt], regions [N]): text, regions, then padding (official get_gather_index)',
  img_type_ids: 'region token types: 1 = left image, 2 = right image, 0 at padding',
  obj_masks: 'true at padded regions (rows with fewer than N regions)',
  txt_type_ids: 'token types: 0 question, 2 answer, 3 rationale (VCR)',
};

export const DIM_DESCRIPTIONS: Readonly<Record<string, string>> = {
  B: 'rows in the batch (NLVR2 paired: 2 per statement, left image row then right)',
  Lt: 'longest text in the batch, [CLS] and [SEP] included',
  N: 'most regions of any row',
  Lj: 'longest row: max over rows of text length + regions',
  S: 'statements (NLVR2 paired: B / 2)',
};

const OUTPUT_DESCRIPTIONS: Readonly<Record<string, string>> = {
  itm_scores: 'image-text matching logits [not matched, matched]',
  pooled_output: 'tanh(Linear([CLS] output)): the pooled joint representation',
  answer_scores: 'classifier logits',
  scores: 'one logit per region; -10000 at padded regions',
  rank_scores: 'retrieval score (apply a sigmoid for the trained margin loss)',
};

export interface IoSpec {
  name: string;
  dtype: DType;
  shape: Dim[];
  description: string;
}

export interface ExportOptions {
  out: string;
  /** Opset to stamp (18..21); default 18. */
  opset?: number;
  /** Also output pooled_output (not for the NLVR2 paired-attn and RE heads, which pool otherwise). */
  pooledOutput?: boolean;
  /** Weights in `OUT.onnx.data`: true, false, or 'auto' (default: only when over 2 GiB). */
  externalData?: boolean | 'auto';
  /** Largest model file with the weights inside (default: protobuf's 2 GiB). */
  inlineLimitBytes?: number;
  /** Verify the written file against the library on generated batches. */
  verify?: boolean;
  tolerance?: number;
  threads?: number;
  seed?: number;
  /**
   * 'int8': the encoder's linear layers as int8 DynamicQuantizeMatMul (com.microsoft, ONNX
   * Runtime) with the quantized weights inside the file; default 'float32' (standard ONNX ops only).
   */
  precision?: Precision;
  /**
   * Progress: bytes of the weights read (exportOnnx) and of each file written (phases `reading
   * <name>`, `writing <name>`), the int8 graph being built, the verification batches run.
   */
  onProgress?: PhaseProgress;
}

export interface ExportOnnxOptions extends ExportOptions {
  /** Model folder (config.json + model.safetensors). */
  checkpoint: string;
  /** Task (families 'nlvr2', 'refexp' take the variant the weights hold); default: the head the weights hold. */
  task?: TaskRequest;
}

export interface VerifyCase {
  dims: Record<string, number>;
  output: string;
  maxAbsDiff: number;
  ok: boolean;
}

export interface VerifyReport {
  ok: boolean;
  /** The library run compared with: the file's own precision (an int8 file against the library's int8 graph). */
  precision: Precision;
  /** |onnx - library| <= tolerance * max(1, |library|) elementwise. */
  tolerance: number;
  maxAbsDiff: number;
  cases: VerifyCase[];
}

export interface ExportResult {
  task: ScoringTask;
  precision: Precision;
  file: string;
  dataFile: string | null;
  sidecarFile: string;
  inputs: IoSpec[];
  outputs: IoSpec[];
  written: WrittenOnnx;
  verification: VerifyReport | null;
}

/** This package's version (recorded as the ONNX producer_version), if its package.json is found. */
function packageVersion(): string | undefined {
  try {
    // Compiled to dist/src/export/: the package root is three levels up.
    const pkg = JSON.parse(fs.readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { name?: string; version?: string };
    return pkg.name === 'uniter-ts' ? pkg.version : undefined;
  } catch {
    return undefined;
  }
}

export function sidecarPath(onnxFile: string): string {
  return `${onnxFile}.json`;
}

/** Tasks whose head reads the pooled output (the NLVR2 paired-attn and RE heads read the sequence). */
function hasPooledOutput(task: ScoringTask): boolean {
  return task !== 'nlvr2_paired_attn' && task !== 're_mlp1' && task !== 're_mlp2';
}

/** Output shapes with named dims (the traced graph knows NLVR2-paired rows only as a quotient). */
function outputSpec(name: string, model: PretrainedModel): IoSpec {
  const { task, config, numAnswers } = model;
  const H = config.hidden_size;
  const shapes: Record<string, Dim[]> = {
    itm_scores: ['B', 2],
    pooled_output: ['B', H],
    answer_scores:
      task === 'nlvr2_paired' || task === 'nlvr2_paired_attn' ? ['S', 2] : task === 'vqa' || task === 've' ? ['B', numAnswers!] : ['B', 2],
    scores: ['B', 'N'],
    rank_scores: ['B', 1],
  };
  const shape = shapes[name];
  if (!shape) throw new Error(`export: no output description for '${name}'`);
  const traced = model.graph.outputs[name];
  shape.forEach((d, i) => {
    const t = traced.shape[i];
    if (typeof d === 'number' && typeof t === 'number' && d !== t) throw new Error(`export: output '${name}' is [${traced.shape}] but the export describes [${shape}]`);
  });
  return { name, dtype: traced.dtype, shape, description: OUTPUT_DESCRIPTIONS[name] };
}

/** Load a model folder and export it. */
export async function exportOnnx(opts: ExportOnnxOptions): Promise<ExportResult> {
  return exportModel(loadPretrained(opts.checkpoint, { task: opts.task, onProgress: opts.onProgress }), opts);
}

/** Export an already loaded model. */
export async function exportModel(model: PretrainedModel, opts: ExportOptions & { checkpoint?: string }): Promise<ExportResult> {
  const { task } = model;
  const names = [SCORE_OUTPUT[task]];
  if (opts.pooledOutput) {
    if (!hasPooledOutput(task)) throw new Error(`export: task '${task}' has no pooled_output (its head attends over the whole sequence)`);
    names.push('pooled_output');
  }
  const outputs = names.map((n) => outputSpec(n, model));
  const precision = opts.precision ?? 'float32';
  if (!PRECISIONS.includes(precision)) throw new Error(`export: precision must be one of ${PRECISIONS.join(', ')}, got '${String(precision)}'`);
  // int8: the same inference graph with the encoder's linears quantized (their weights become constants).
  if (precision === 'int8') opts.onProgress?.('quantizing the encoder to int8', 0, 1, 'graphs');
  const tg =
    precision === 'int8'
      ? buildTaskGraph(model.config, task, { training: false, grads: false, inference: true, numAnswers: model.numAnswers, precision, outputs: names }, { weights: model.params })
      : model.graph;
  const emitted = emitOnnx(tg.graph, Object.fromEntries(names.map((n) => [n, tg.outputs[n]])), { name: `uniter_${task}${precision === 'int8' ? '_int8' : ''}` });
  const weights = new Map<string, HostTensor>();
  const inputs: IoSpec[] = [];
  for (const inp of emitted.inputs) {
    if (inp.role === 'param') {
      weights.set(inp.name, model.params.get(inp.name)!);
      continue;
    }
    const description = BATCH_INPUTS[inp.name];
    // A graph input that is not an official batch field would leave users computing it themselves.
    if (!description) throw new Error(`export: the ${task} graph needs input '${inp.name}', which is not an official batch field`);
    inputs.push({ name: inp.name, dtype: inp.dtype, shape: [...inp.shape], description });
  }

  const file = opts.out;
  const sidecarFile = sidecarPath(file);
  // With verify, the file is written and checked in a staging folder beside OUT (same base name,
  // so an external-data reference stays valid) and moved into place only once it passes.
  const staging = opts.verify ? path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.verify-${process.pid}-${Date.now()}`) : null;
  if (staging) fs.mkdirSync(staging, { recursive: true });
  const target = staging ? path.join(staging, path.basename(file)) : file;
  let written: WrittenOnnx;
  let verification: VerifyReport | null = null;
  try {
    written = writeOnnxModel(target, emitted, weights, {
      opset: opts.opset,
      externalData: opts.externalData,
      inlineLimitBytes: opts.inlineLimitBytes,
      outputs: outputs as OutputInfo[],
      producerVersion: packageVersion(),
      onProgress: opts.onProgress,
      docString: `UNITER ${task} scoring graph exported by uniter-ts. Inputs are the official batch fields; see ${path.basename(sidecarFile)}.`,
      metadata: {
        'uniter.task': task,
        'uniter.precision': precision,
        'uniter.config': JSON.stringify(model.config),
        ...(model.numAnswers !== undefined ? { 'uniter.num_answers': String(model.numAnswers) } : {}),
      },
    });
    if (staging) {
      try {
        verification = await verifyExport(target, model, names, { ...opts, precision, onBatch: opts.onProgress && ((done, total) => opts.onProgress!('verifying in a fresh ONNX Runtime session', done, total, 'batches')) });
      } catch (e) {
        throw new ExportVerificationError(`export verification of ${file} failed: ${(e as Error).message}; nothing was written`, null);
      }
      if (!verification.ok) {
        const bad = verification.cases.filter((c) => !c.ok).map((c) => `${c.output} [${Object.entries(c.dims).map(([k, n]) => `${k}=${n}`).join(' ')}] max |diff| ${c.maxAbsDiff.toExponential(2)}`);
        throw new ExportVerificationError(`export verification of ${file} failed: the ONNX file's outputs differ from the library's ${verification.precision} run by more than the tolerance ${verification.tolerance} (${bad.join('; ')}); nothing was written`, verification);
      }
      if (written.dataFile) fs.renameSync(written.dataFile, `${file}.data`);
      fs.renameSync(target, file);
      written = { ...written, dataFile: written.dataFile ? `${file}.data` : null };
    }
  } finally {
    if (staging) fs.rmSync(staging, { recursive: true, force: true });
  }

  const dims: Record<string, string> = {};
  for (const io of [...inputs, ...outputs]) for (const d of io.shape) if (typeof d === 'string') dims[d] = DIM_DESCRIPTIONS[d] ?? d;
  const sidecar = {
    format: SIDECAR_FORMAT,
    version: SIDECAR_VERSION,
    task,
    precision,
    model_file: path.basename(file),
    external_data: written.dataFile ? path.basename(written.dataFile) : null,
    opset: written.opset,
    ir_version: written.irVersion,
    checkpoint: opts.checkpoint ? path.resolve(opts.checkpoint) : path.resolve(model.dir),
    inputs,
    outputs,
    dims,
    ...(model.numAnswers !== undefined ? { num_answers: model.numAnswers } : {}),
    weights: { tensors: written.weightCount, bytes: written.weightBytes },
    config: model.config,
    verification,
  };
  writeFileAtomic(sidecarFile, JSON.stringify(sidecar, null, 2) + '\n');
  return { task, precision, file, dataFile: written.dataFile, sidecarFile, inputs, outputs, written, verification };
}

/** `verify` found the exported file wrong (or could not run it); nothing was written. */
export class ExportVerificationError extends Error {
  override name = 'ExportVerificationError';
  constructor(
    message: string,
    /** The comparison, when it ran to the end. */
    readonly report: VerifyReport | null,
  ) {
    super(message);
  }
}

/**
 * Run the exported file in a fresh session (not the library's session cache) on generated
 * batches whose every dynamic axis differs, and compare each output with the library's run of
 * the same precision (an int8 file with the library's int8 graph: the same fused graph, the same
 * quantized weights).
 *
 * Int8: the session runs with ONNX Runtime's weight prepacking off. The file holds the float32
 * weights as initializers, which ONNX Runtime prepacks for its float GEMMs (summing in another
 * order), while the library feeds them as inputs (never prepacked). The sums then differ by an
 * ulp or so, and quantizing the activations turns such a difference into a whole quantization
 * step wherever a value lies that close to a rounding boundary; later layers spread it (up to 0.18
 * on a random UNITER-base's ITM scores). Without prepacking the two runs are the same arithmetic (bitwise equal
 * in the tests), so the tolerance stays tight and a wrong graph or wrong weights still show.
 */
export async function verifyExport(
  file: string,
  model: PretrainedModel,
  outputs: readonly string[],
  opts: { tolerance?: number; threads?: number; seed?: number; precision?: Precision; /** Batches compared so far (0 before the session is created). */ onBatch?: (done: number, total: number) => void } = {},
): Promise<VerifyReport> {
  const tolerance = opts.tolerance ?? DEFAULT_TOLERANCE;
  opts.onBatch?.(0, VERIFY_SHAPES.length);
  const precision = opts.precision ?? 'float32';
  const session = await ort.InferenceSession.create(path.resolve(file), {
    intraOpNumThreads: opts.threads ?? 1,
    graphOptimizationLevel: 'all',
    ...(precision === 'int8' ? { extra: { session: { disable_prepacking: '1' } } } : {}),
  });
  const runner = new UniterRunner(model.config, model.params, opts.threads ?? 1);
  const cases: VerifyCase[] = [];
  try {
    for (const [i, shape] of VERIFY_SHAPES.entries()) {
      const batch = sampleBatch(model.task, model.config, shape, (opts.seed ?? 0) + i);
      const feeds: Record<string, ort.Tensor> = {};
      for (const name of session.inputNames) {
        const t = batch.get(name);
        if (!t) throw new Error(`${file}: input '${name}' is not a field of the official ${model.task} batch (fields: ${[...batch.keys()].join(', ')})`);
        feeds[name] = toOrt(t);
      }
      const got = await session.run(feeds);
      const want = await runner.run(model.task, batch, { training: false, grads: false, inference: true, numAnswers: model.numAnswers, precision });
      const dims = {
        B: batch.get('input_ids')!.shape[0],
        Lt: batch.get('input_ids')!.shape[1],
        N: batch.get('img_feat')!.shape[1],
        Lj: batch.get('attn_masks')!.shape[1],
      };
      for (const name of outputs) {
        const g = fromOrt(got[name]);
        const w = want.get(name)!;
        let maxAbsDiff = 0;
        let ok = g.shape.join() === w.shape.join();
        if (ok) {
          for (let k = 0; k < w.data.length; k++) {
            const ref = Number(w.data[k]);
            const d = Math.abs(Number(g.data[k]) - ref);
            if (!(d <= tolerance * Math.max(1, Math.abs(ref)))) ok = false;
            maxAbsDiff = Number.isNaN(d) ? Infinity : Math.max(maxAbsDiff, d);
          }
        } else maxAbsDiff = Infinity;
        cases.push({ dims, output: name, maxAbsDiff, ok });
      }
      opts.onBatch?.(i + 1, VERIFY_SHAPES.length);
    }
  } finally {
    await session.release();
  }
  return { ok: cases.every((c) => c.ok), precision, tolerance, maxAbsDiff: Math.max(...cases.map((c) => c.maxAbsDiff)), cases };
}
