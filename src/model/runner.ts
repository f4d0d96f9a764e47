/**
 * Holds a model's parameters and runs task graphs on them. Compiled programs (and so ONNX
 * Runtime sessions) are cached per task and options; batches of any size reuse them.
 */
import { DropoutSeed, Program, RunTimings, compile } from '../engine/runtime.js';
import type { QuantizedWeight } from '../engine/ops.js';
import type { Precision } from './uniter.js';
import type { HostTensor } from '../engine/host.js';
import { NonFiniteError, firstNonFinite, indexIn } from '../util/finite.js';
import type { Batch } from '../data/types.js';
import type { UniterConfig } from './config.js';
import { HeadName, TIES, allSpecs } from './params.js';
import { TaskGraph, TaskName, TaskOptions, buildTaskGraph, headOf, prepareFeeds } from './task-graphs.js';

export interface RunOptions extends TaskOptions {
  dropout?: DropoutSeed;
  /** Added to with the seconds the run spent (feeds, session, outputs). */
  timings?: RunTimings;
}

export interface RunnerDefaults {
  /**
   * Precision of inference runs that do not name one (`uniter evaluate --int8`): 'int8' makes
   * every inference graph of this runner quantized. Training graphs are always float32.
   */
  precision?: Precision;
  /** Activation checkpointing for every gradient graph that does not set it (config `checkpoint_activations`). */
  checkpointActivations?: boolean;
}

export class UniterRunner {
  private readonly programs = new Map<string, { program: Program; taskGraph: TaskGraph }>();
  /**
   * Int8 weights, quantized once from `params` when an int8 graph is first built. Int8 graphs are
   * for models whose weights no longer change (inference): a runner that trains its parameters in
   * place must not ask for precision 'int8'.
   */
  private readonly int8Cache = new Map<string, QuantizedWeight>();

  constructor(
    readonly cfg: UniterConfig,
    /** Parameters by primary official name (tied aliases are not stored). */
    readonly params: Map<string, HostTensor>,
    private readonly threads?: number,
    /**
     * What runs that do not say otherwise get (see RunnerDefaults).
     */
    readonly defaults: RunnerDefaults = {},
  ) {}

  /** Check that every parameter a head needs is present with the right shape. */
  validate(head: HeadName, opts: TaskOptions): void {
    for (const s of allSpecs(this.cfg, head, opts)) {
      if (TIES[s.name]) continue;
      const t = this.params.get(s.name);
      if (!t) throw new Error(`model parameters lack '${s.name}' (expected shape [${s.shape}]) needed by head '${head}'`);
      if (t.shape.join() !== s.shape.join()) throw new Error(`parameter '${s.name}' has shape [${t.shape}], the config needs [${s.shape}]`);
    }
  }

  compiled(task: TaskName, opts: TaskOptions): { program: Program; taskGraph: TaskGraph } {
    if (opts.precision === undefined && this.defaults.precision && opts.inference && !opts.grads && !opts.training) opts = { ...opts, precision: this.defaults.precision };
    if (opts.checkpointActivations === undefined && this.defaults.checkpointActivations && opts.grads) opts = { ...opts, checkpointActivations: true };
    const key = JSON.stringify([task, opts.training, opts.grads, !!opts.capture, opts.ot ?? null, opts.numAnswers ?? null, opts.sampleSize ?? null, !!opts.inference, !!opts.imgMasks, opts.reRankMargin ?? null, opts.precision ?? 'float32', opts.outputs ?? null, opts.fusedAttention ?? null, !!opts.checkpointActivations]);
    let hit = this.programs.get(key);
    if (!hit) {
      this.validate(headOf(task), opts);
      const taskGraph = buildTaskGraph(this.cfg, task, opts, opts.precision === 'int8' ? { weights: this.params, cache: this.int8Cache } : undefined);
      hit = { program: compile(taskGraph.graph, taskGraph.outputs, { threads: this.threads }), taskGraph };
      this.programs.set(key, hit);
    }
    return hit;
  }

  async run(task: TaskName, batch: Batch, opts: RunOptions): Promise<Map<string, HostTensor>> {
    const { program, taskGraph } = this.compiled(task, opts);
    const t0 = performance.now();
    const feeds = prepareFeeds(task, batch, { inference: opts.inference, reRank: opts.reRankMargin != null });
    for (const name of taskGraph.params) feeds.set(name, this.params.get(name)!);
    if (opts.timings) opts.timings.feeds += (performance.now() - t0) / 1000;
    const out = await program.run(feeds, opts.dropout, opts.timings);
    // Evaluation and inference: a NaN or infinite loss or score is an error, never a result
    // (a NaN score argmaxes to the first answer). Training steps check their own loss; captured
    // intermediates (golden parity) may hold masked -inf entries.
    if (!opts.training && !opts.capture) {
      for (const [name, t] of out) {
        if (!(t.data instanceof Float32Array || t.data instanceof Float64Array)) continue;
        const bad = firstNonFinite(t.data);
        if (bad >= 0) {
          throw new NonFiniteError(`task '${task}': output '${name}' holds ${t.data[bad]} at ${indexIn(t.shape, bad)} (batch row ${t.shape.length > 1 ? Math.floor(bad / (t.data.length / t.shape[0])) : 0}); are the weights and inputs finite?`);
        }
      }
    }
    return out;
  }
}
