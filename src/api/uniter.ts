/**
 * The friendly face of the library: load a model folder, turn texts and region features into
 * official batches, and get scores back as plain arrays. A thin layer over UniterRunner (the
 * compiled inference graph is cached, so batches of any size reuse one session).
 */
import type { Batch } from '../data/types.js';
import { BertTokenizer, defaultTokenizer } from '../data/tokenizer.js';
import type { HostTensor } from '../engine/host.js';
import { toNumbers } from '../engine/host.js';
import type { UniterConfig } from '../model/config.js';
import { PRECISIONS, Precision } from '../model/uniter.js';
import type { LoadReport } from '../model/load.js';
import { UniterRunner } from '../model/runner.js';
import { ExportOptions, ExportResult, exportModel } from '../export/export.js';
import { ModelInput, TextImageInput, collateInputs } from './inputs.js';
import { Aligner, Alignment } from './alignment.js';
import { LoadPretrainedOptions, PretrainedModel, loadPretrained } from './pretrained.js';
import { SCORE_OUTPUT, ScoringTask } from './scoring-heads.js';

export interface FromPretrainedOptions extends LoadPretrainedOptions {
  /** ONNX Runtime intra-op threads (default: all cores). */
  threads?: number;
  /** WordPiece vocabulary (default: the bundled bert-base-cased). */
  vocabFile?: string;
  /**
   * 'int8': the encoder's linear layers run as int8 GEMMs (weights quantized per output channel
   * when the graph is built, activations at run time), about 2-3x faster on CPUs with VNNI, with
   * ITM probabilities typically within 0.01 of float32 (docs/benchmarks.md). Embeddings, layer
   * norms, softmax, the pooler and the heads stay float32. Default 'float32'.
   */
  precision?: Precision;
}

/** A batch already collated, or plain inputs to collate for the model's task. */
export type BatchOrInputs = Batch | readonly ModelInput[];

const CLASSIFIERS: readonly ScoringTask[] = ['vqa', 've', 'nlvr2_paired', 'nlvr2_paired_attn', 'nlvr2_triplet', 'vcr'];

function rowsOf(t: HostTensor): number[][] {
  const [n, c] = t.shape;
  const v = toNumbers(t);
  return Array.from({ length: n }, (_, i) => v.slice(i * c, (i + 1) * c));
}

function argmax(xs: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

export class Uniter {
  private readonly runner: UniterRunner;
  private aligner: Aligner | null = null;

  private constructor(
    private readonly model: PretrainedModel,
    readonly tokenizer: BertTokenizer,
    private readonly threads?: number,
    /** Precision of the scoring graph ('int8': quantized encoder linears). */
    readonly precision: Precision = 'float32',
  ) {
    this.runner = new UniterRunner(model.config, model.params, threads);
  }

  /** Load `dir` (config.json + model.safetensors) for one task (default: the head the weights hold). */
  static fromPretrained(dir: string, opts: FromPretrainedOptions = {}): Uniter {
    const precision = opts.precision ?? 'float32';
    if (!PRECISIONS.includes(precision)) throw new Error(`fromPretrained: precision must be one of ${PRECISIONS.join(', ')}, got '${String(precision)}'`);
    const model = loadPretrained(dir, { task: opts.task });
    const tokenizer = opts.vocabFile ? BertTokenizer.load(opts.vocabFile) : defaultTokenizer();
    return new Uniter(model, tokenizer, opts.threads, precision);
  }

  get task(): ScoringTask {
    return this.model.task;
  }

  get config(): UniterConfig {
    return this.model.config;
  }

  /** VQA/VE: number of answers (columns of `answer`). */
  get numAnswers(): number | undefined {
    return this.model.numAnswers;
  }

  /** Heads the folder's weights hold (any of them can be loaded with fromPretrained({task})). */
  get heads(): readonly ScoringTask[] {
    return this.model.heads;
  }

  /** What was loaded, missing (left zero, unused by this task) and ignored. */
  get loadReport(): LoadReport {
    return this.model.report;
  }

  /** The official batch for this model's task. */
  collate(inputs: readonly ModelInput[]): Batch {
    return collateInputs(this.task, inputs, this.tokenizer, this.config);
  }

  /** Every output of the inference graph by official name (scores, pooled_output, sequence_output). */
  async forward(batch: BatchOrInputs): Promise<Map<string, HostTensor>> {
    return this.run(this.batchOf(batch, 'forward'));
  }

  /** The task's score tensor (itm_scores, answer_scores, scores or rank_scores). */
  async scores(batch: BatchOrInputs): Promise<HostTensor> {
    // A graph with the scores as its only output: no sequence or pooled output copied out.
    const name = SCORE_OUTPUT[this.task];
    return (await this.run(this.batchOf(batch, 'scores'), [name])).get(name)!;
  }

  private async run(batch: BatchOrInputs, outputs?: readonly string[]): Promise<Map<string, HostTensor>> {
    const b = Array.isArray(batch) ? this.collate(batch as readonly ModelInput[]) : (batch as Batch);
    return this.runner.run(this.task, b, { training: false, grads: false, inference: true, numAnswers: this.numAnswers, precision: this.precision, outputs });
  }

  /** ITM: probability that each text matches its image (softmax of itm_scores, column 1). */
  async scoreItm(batch: BatchOrInputs): Promise<number[]> {
    this.expect(['itm'], 'scoreItm');
    return rowsOf(await this.scores(this.batchOf(batch, 'scoreItm'))).map(([no, yes]) => {
      const m = Math.max(no, yes);
      return Math.exp(yes - m) / (Math.exp(no - m) + Math.exp(yes - m));
    });
  }

  /**
   * Classifier logits, one row per question / statement / candidate: VQA [numAnswers], VE
   * [contradiction, entailment, neutral], NLVR2 [false, true], VCR [wrong, right] per candidate row.
   */
  async answer(batch: BatchOrInputs): Promise<number[][]> {
    this.expect(CLASSIFIERS, 'answer');
    return rowsOf(await this.scores(this.batchOf(batch, 'answer')));
  }

  /** Referring expressions: per row, one score per real region (padding dropped). */
  async refexp(batch: BatchOrInputs): Promise<number[][]> {
    this.expect(['re_mlp1', 're_mlp2'], 'refexp');
    const b = this.batchOf(batch, 'refexp');
    const pad = b.get('obj_masks');
    if (!pad) throw new Error("refexp: batch lacks field 'obj_masks' (build it with reCollate or collate())");
    const scores = rowsOf(await this.scores(b));
    const n = pad.shape[1];
    return scores.map((r, i) => r.filter((_, k) => !pad.data[i * n + k]));
  }

  /** Retrieval: the rank score of each (text, image) row; higher = better match. */
  async rank(batch: BatchOrInputs): Promise<number[]> {
    this.expect(['retrieval'], 'rank');
    return toNumbers(await this.scores(this.batchOf(batch, 'rank')));
  }

  /** The arg-max class (VQA answer label, VE class, NLVR2 label) or region (refexp) per example. */
  async predict(batch: BatchOrInputs): Promise<number[]> {
    if (this.task === 're_mlp1' || this.task === 're_mlp2') return (await this.refexp(this.batchOf(batch, 'predict'))).map(argmax);
    this.expect(CLASSIFIERS.filter((t) => t !== 'vcr'), 'predict');
    return (await this.answer(this.batchOf(batch, 'predict'))).map(argmax);
  }

  /**
   * Word-region alignment of each (text, image) pair: the WRA transport plan over the last
   * layer's states and every layer's and head's token-region attention (any task's model: only
   * the encoder is read).
   */
  async align(inputs: readonly TextImageInput[]): Promise<Alignment[]> {
    this.aligner ??= new Aligner(this.config, this.model.params, this.tokenizer, this.threads);
    return this.aligner.align(inputs);
  }

  /** Write this model's scoring graph as a standalone ONNX file (see exportOnnx for the options). */
  async exportOnnx(out: string, opts: Omit<ExportOptions, 'out'> = {}): Promise<ExportResult> {
    return exportModel(this.model, { precision: this.precision, ...opts, out });
  }

  /** Plain inputs collated, a collated batch as it is; anything else is an error naming the method's argument. */
  private batchOf(batch: BatchOrInputs, method: string): Batch {
    if (Array.isArray(batch)) return this.collate(batch as readonly ModelInput[]);
    if (batch instanceof Map) return batch;
    const got = batch === null ? 'null' : typeof batch === 'object' ? `an object (${(batch as object).constructor?.name ?? 'no prototype'})` : `${typeof batch} ${JSON.stringify(batch)?.slice(0, 40)}`;
    throw new TypeError(`${method}(batch): 'batch' must be an array of inputs ({text, image} objects) or a collated batch (a Map of tensors), got ${got}`);
  }

  private expect(tasks: readonly ScoringTask[], method: string): void {
    if (!tasks.includes(this.task)) throw new Error(`${method}() needs a model loaded for ${tasks.join(' / ')}; this one runs '${this.task}' (load it with fromPretrained(dir, {task}))`);
  }
}
