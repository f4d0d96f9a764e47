/**
 * Batching by token count (official `data/sampler.py::TokenBucketSampler`, spec 2.9) and a
 * loader that turns a task dataset into an endless stream of collated batches.
 *
 * Per epoch: shuffle the example indices, cut them into buckets of `bucketSize`, sort each bucket
 * by length (descending, stable), then walk it in groups of `sizeMultiple`: a group joins the
 * current batch while maxLen * (batchSize + sizeMultiple) <= batchTokens, else the batch is
 * closed and the group starts the next one. maxLen is reset per BUCKET, not per batch (an
 * official quirk: with the descending sort every batch of a bucket is sized by the bucket's
 * longest example). The bucket's last batch is dropped when `dropLast` (training). Finally the
 * batches are shuffled. Examples whose text is longer than `maxTxtLen` wordpieces never enter
 * (the official txt_db filter); they are counted in `dropped`.
 *
 * Resume: `state()` is {epoch, position, rngState at the start of that epoch}; `restore()`
 * recomputes that epoch's batches (and per-epoch dataset draws such as ITM negatives) from the
 * saved rng state and continues at `position`, so a resumed run draws exactly the same batches.
 */
import { Rng, type RngState } from '../util/rng.js';
import type { Batch } from './types.js';
import type { TaskDataset } from './datasets.js';

/** Official utils/const.py BUCKET_SIZE. */
export const BUCKET_SIZE = 8192;

export interface TokenBucketOptions {
  /** Tokens per batch, padding included (the official `train_batch_size`). */
  batchTokens: number;
  bucketSize?: number;
  sizeMultiple?: number;
  /** Drop each bucket's last batch (training). */
  dropLast: boolean;
  /** Drop examples with more wordpieces than this (official 60, VCR 220); undefined = keep all. */
  maxTxtLen?: number;
}

/** What the sampler needs to know about the examples. */
export interface LengthSource {
  /** Wordpieces per example (filter key). */
  txtLens(): readonly number[];
  /** Bucket length per example for the current epoch. */
  lens(): readonly number[];
  /** Per-epoch draws that change lengths (ITM negatives); run before the epoch's batches are made. */
  newEpoch?(rng: Rng): void;
}

export interface SamplerState {
  epoch: number;
  /** Batches of this epoch already handed out. */
  position: number;
  /** Rng state at the start of this epoch. */
  rngState: RngState;
}

/** Common surface of the batch samplers (what TaskLoader drives). */
export interface BatchSampler {
  readonly epoch: number;
  readonly position: number;
  /** Number of batches of the current epoch. */
  readonly epochLength: number;
  /** Next batch of example indices; starts a new epoch when the current one is exhausted. */
  next(): number[];
  state(): SamplerState;
  restore(s: SamplerState): void;
}

/** One epoch of token buckets from given lengths (pure; draws from `rng`). */
export function tokenBucketBatches(kept: readonly number[], lens: readonly number[], rng: Rng, opts: TokenBucketOptions): number[][] {
  const bucketSize = opts.bucketSize ?? BUCKET_SIZE;
  const mul = opts.sizeMultiple ?? 8;
  if (!(opts.batchTokens > 0)) throw new Error(`token bucket sampler: batchTokens must be positive, got ${opts.batchTokens}`);
  if (!(bucketSize > 0 && mul > 0)) throw new Error(`token bucket sampler: bucketSize (${bucketSize}) and sizeMultiple (${mul}) must be positive`);
  const ids = rng.shuffle(kept.slice());
  const batches: number[][] = [];
  for (let b = 0; b < ids.length; b += bucketSize) {
    // Array.prototype.sort is stable, like Python's sorted: ties keep the shuffled order.
    const bucket = ids.slice(b, b + bucketSize).sort((x, y) => lens[y] - lens[x]);
    let maxLen = 0;
    let batch: number[] = [];
    for (let g = 0; g < bucket.length; g += mul) {
      const group = bucket.slice(g, g + mul);
      for (const i of group) maxLen = Math.max(maxLen, lens[i]);
      if (maxLen * (batch.length + mul) > opts.batchTokens) {
        if (batch.length === 0) {
          throw new Error(`token bucket sampler: batchTokens ${opts.batchTokens} cannot hold ${mul} examples of length ${maxLen}; raise batchTokens or lower maxTxtLen`);
        }
        batches.push(batch);
        batch = group;
      } else {
        batch.push(...group);
      }
    }
    if (!opts.dropLast && batch.length > 0) batches.push(batch);
  }
  return rng.shuffle(batches);
}

/** Indices kept by the max_txt_len filter, and how many were dropped. */
export function filterByTextLength(txtLens: readonly number[], maxTxtLen: number | undefined): { kept: number[]; dropped: number[] } {
  const kept: number[] = [];
  const dropped: number[] = [];
  txtLens.forEach((l, i) => (maxTxtLen === undefined || maxTxtLen < 0 || l <= maxTxtLen ? kept : dropped).push(i));
  return { kept, dropped };
}

abstract class EpochSampler implements BatchSampler {
  private epochNo = 0;
  private pos = 0;
  private batches: number[][] | null = null;
  private epochStart: RngState;

  constructor(
    protected readonly source: LengthSource,
    protected readonly rng: Rng,
  ) {
    this.epochStart = rng.getState();
  }

  get epoch(): number {
    return this.epochNo;
  }

  get position(): number {
    return this.pos;
  }

  get epochLength(): number {
    return this.current().length;
  }

  protected abstract build(): number[][];

  /** Build the epoch's batches from the rng as it stands at the epoch start. */
  private makeEpoch(): number[][] {
    // Per-epoch dataset draws use a stream forked from the epoch-start state, so they are
    // reproducible without advancing the batching stream.
    this.source.newEpoch?.(this.rng.fork('epoch-draws', this.epochNo));
    const batches = this.build();
    if (batches.length === 0) throw new Error('sampler: an epoch produced no batch (dataset smaller than one batch with dropLast, or every example filtered out)');
    return batches;
  }

  private current(): number[][] {
    this.batches ??= this.makeEpoch();
    return this.batches;
  }

  next(): number[] {
    let batches = this.current();
    if (this.pos >= batches.length) {
      this.epochNo++;
      this.pos = 0;
      this.epochStart = this.rng.getState();
      this.batches = null;
      batches = this.current();
    }
    return batches[this.pos++];
  }

  state(): SamplerState {
    return { epoch: this.epochNo, position: this.pos, rngState: [...this.epochStart] as RngState };
  }

  restore(s: SamplerState): void {
    if (!Number.isInteger(s.epoch) || s.epoch < 0 || !Number.isInteger(s.position) || s.position < 0 || !Array.isArray(s.rngState) || s.rngState.length !== 4) {
      throw new Error(`sampler: invalid state ${JSON.stringify(s)}`);
    }
    this.epochNo = s.epoch;
    this.epochStart = [...s.rngState] as RngState;
    this.rng.setState(this.epochStart);
    this.batches = this.makeEpoch();
    if (s.position > this.batches.length) throw new Error(`sampler: state position ${s.position} is past the ${this.batches.length} batches of epoch ${s.epoch}`);
    this.pos = s.position;
  }
}

/** Official TokenBucketSampler with max_txt_len filtering, seeded and resumable. */
export class TokenBucketSampler extends EpochSampler {
  /** Indices of examples dropped for text longer than maxTxtLen. */
  readonly droppedIndices: readonly number[];
  private readonly kept: readonly number[];

  constructor(
    source: LengthSource,
    private readonly opts: TokenBucketOptions,
    rng: Rng,
  ) {
    super(source, rng);
    const { kept, dropped } = filterByTextLength(source.txtLens(), opts.maxTxtLen);
    this.kept = kept;
    this.droppedIndices = dropped;
  }

  /** Number of examples dropped by the max_txt_len filter. */
  get dropped(): number {
    return this.droppedIndices.length;
  }

  protected build(): number[][] {
    return tokenBucketBatches(this.kept, this.source.lens(), this.rng, this.opts);
  }
}

/**
 * Fixed number of examples per batch (official RE training: 128 examples, and any loader that
 * batches by count). `shuffle: false` keeps dataset order (the official RE loader never
 * reshuffles).
 */
export class ExampleCountSampler extends EpochSampler {
  constructor(
    source: LengthSource,
    private readonly opts: { batchSize: number; shuffle: boolean; dropLast: boolean },
    rng: Rng,
  ) {
    super(source, rng);
    if (!(opts.batchSize >= 1)) throw new Error(`sampler: batchSize must be >= 1, got ${opts.batchSize}`);
  }

  protected build(): number[][] {
    const n = this.source.txtLens().length;
    const ids = Array.from({ length: n }, (_, i) => i);
    if (this.opts.shuffle) this.rng.shuffle(ids);
    const out: number[][] = [];
    for (let i = 0; i < n; i += this.opts.batchSize) {
      const b = ids.slice(i, i + this.opts.batchSize);
      if (b.length === this.opts.batchSize || !this.opts.dropLast) out.push(b);
    }
    return out;
  }
}

export interface LoadedBatch {
  task: string;
  batch: Batch;
  /** Example ids in batch order (one per example, not per row). */
  ids: string[];
  epoch: number;
  /** Index of this batch within its epoch. */
  position: number;
}

export interface TaskLoaderOptions extends TokenBucketOptions {
  seed: number;
}

/**
 * Endless stream of collated batches for one task: token-bucket batches, epochs restarting when
 * exhausted, per-epoch dataset draws (ITM negatives) re-done each epoch. Per-example randomness
 * (masking, retrieval negatives) uses an Rng derived from (seed, task, epoch, batch position), so
 * it is reproduced exactly after `restore()` without extra state.
 */
export class TaskLoader<E> {
  readonly sampler: BatchSampler;

  constructor(
    readonly dataset: TaskDataset<E>,
    private readonly opts: TaskLoaderOptions | { seed: number; sampler: BatchSampler },
  ) {
    this.sampler = 'sampler' in opts ? opts.sampler : new TokenBucketSampler(dataset, opts, new Rng(opts.seed, 'sampler', dataset.task));
  }

  /** Examples dropped by the max_txt_len filter (0 with a custom sampler). */
  get dropped(): number {
    return this.sampler instanceof TokenBucketSampler ? this.sampler.dropped : 0;
  }

  next(): LoadedBatch {
    const indices = this.sampler.next();
    const epoch = this.sampler.epoch;
    const position = this.sampler.position - 1;
    const rng = new Rng(this.opts.seed, 'examples', this.dataset.task, epoch, position);
    const examples = indices.map((i) => this.dataset.get(i, rng));
    return { task: this.dataset.task, batch: this.dataset.collate(examples), ids: indices.map((i) => this.dataset.ids[i]), epoch, position };
  }

  /** The remaining batches of the current epoch (one pass, e.g. for evaluation). */
  *restOfEpoch(): Generator<LoadedBatch> {
    const epoch = this.sampler.epoch;
    while (this.sampler.position < this.sampler.epochLength && this.sampler.epoch === epoch) yield this.next();
  }

  /** Endless iteration (epochs restart). */
  *[Symbol.iterator](): Generator<LoadedBatch> {
    for (;;) yield this.next();
  }

  state(): SamplerState {
    return this.sampler.state();
  }

  restore(s: SamplerState): void {
    this.sampler.restore(s);
  }
}
