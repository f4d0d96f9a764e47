/**
 * Task mixing as the official `MetaLoader` (`data/loader.py`): a pool holds each
 * `<task>_<dataset>` name repeated `mix_ratio` times, and one name is drawn uniformly from the
 * pool per optimizer step; every micro-batch of that step (gradient accumulation) trains that
 * task on that dataset. Draws come from a seeded Rng, so state() / restore() resume the exact
 * sequence.
 */
import { Rng, RngState } from '../util/rng.js';

/** A dataset entry as in a pretraining config's `train_datasets`. */
export interface MixDataset {
  name: string;
  tasks: readonly string[];
  mix_ratio: readonly number[];
}

export interface MixerState {
  /** The pool the state belongs to; restore() refuses a different one. */
  pool: string[];
  rng: RngState;
  draws: number;
  counts: Record<string, number>;
}

/** `<task>_<dataset>`, the official loader key (task names contain no underscore). */
export function mixName(task: string, dataset: string): string {
  if (task.includes('_')) throw new Error(`task name '${task}' must not contain '_'`);
  return `${task}_${dataset}`;
}

/** Split a `<task>_<dataset>` name at its first underscore. */
export function parseMixName(name: string): { task: string; dataset: string } {
  const i = name.indexOf('_');
  if (i <= 0 || i === name.length - 1) throw new Error(`'${name}' is not a <task>_<dataset> name`);
  return { task: name.slice(0, i), dataset: name.slice(i + 1) };
}

export class TaskMixer {
  /** Sampling pool in the official order: datasets in config order, each task repeated ratio times. */
  readonly pool: readonly string[];
  private readonly rng: Rng;
  private draws = 0;
  private readonly counts = new Map<string, number>();

  constructor(datasets: readonly MixDataset[], rng: Rng) {
    const pool: string[] = [];
    const seen = new Set<string>();
    for (const [d, ds] of datasets.entries()) {
      if (ds.tasks.length !== ds.mix_ratio.length) throw new Error(`task mixer: dataset ${d} ('${ds.name}') has ${ds.tasks.length} tasks but ${ds.mix_ratio.length} mix ratios`);
      for (const [i, task] of ds.tasks.entries()) {
        const ratio = ds.mix_ratio[i];
        if (!(Number.isInteger(ratio) && ratio >= 0)) throw new Error(`task mixer: dataset '${ds.name}' task '${task}': mix ratio must be an integer >= 0, got ${ratio}`);
        const name = mixName(task, ds.name);
        if (seen.has(name)) throw new Error(`task mixer: '${name}' appears twice`);
        seen.add(name);
        for (let r = 0; r < ratio; r++) pool.push(name);
      }
    }
    if (pool.length === 0) throw new Error('task mixer: the sampling pool is empty (all mix ratios are 0 or no datasets)');
    this.pool = pool;
    this.rng = rng;
    for (const name of seen) this.counts.set(name, 0);
  }

  /** Every distinct `<task>_<dataset>` name, including ones with ratio 0. */
  get names(): string[] {
    return [...this.counts.keys()];
  }

  /** Draw the task of the next optimizer step. */
  next(): string {
    const name = this.pool[this.rng.int(this.pool.length)];
    this.draws++;
    this.counts.set(name, (this.counts.get(name) ?? 0) + 1);
    return name;
  }

  /** How many steps drew each name so far. */
  drawCounts(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }

  get drawn(): number {
    return this.draws;
  }

  state(): MixerState {
    return { pool: [...this.pool], rng: this.rng.getState(), draws: this.draws, counts: this.drawCounts() };
  }

  restore(state: MixerState, source = 'task mixer state'): void {
    if (state.pool.length !== this.pool.length || state.pool.some((n, i) => n !== this.pool[i])) {
      throw new Error(`${source}: saved sampling pool [${summarizePool(state.pool)}] differs from the configured one [${summarizePool(this.pool)}]`);
    }
    if (!Array.isArray(state.rng) || state.rng.length !== 4 || state.rng.some((x) => !Number.isInteger(x))) throw new Error(`${source}: rng must be 4 integers, got ${JSON.stringify(state.rng)}`);
    if (!(Number.isInteger(state.draws) && state.draws >= 0)) throw new Error(`${source}: draws must be an integer >= 0, got ${state.draws}`);
    this.rng.setState(state.rng);
    this.draws = state.draws;
    for (const name of this.counts.keys()) this.counts.set(name, state.counts[name] ?? 0);
  }
}

function summarizePool(pool: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const n of pool) counts.set(n, (counts.get(n) ?? 0) + 1);
  return [...counts].map(([n, c]) => `${n} x${c}`).join(', ');
}
