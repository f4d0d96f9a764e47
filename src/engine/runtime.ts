/**
 * Running emitted graphs with onnxruntime-node on the CPU. Sessions are created once per graph
 * signature (a hash of the ONNX bytes and the thread count) and reused for every batch and
 * sequence size. Dropout masks are drawn here, from (seed, step, site), so a resumed run
 * reproduces them exactly.
 */
import { createHash } from 'node:crypto';
import * as os from 'node:os';
import * as ort from 'onnxruntime-node';
import { Rng } from '../util/rng.js';
import { evalDim } from './dims.js';
import type { Graph, Tensor } from './graph.js';
import { DType, HostTensor, numel } from './host.js';
import { EmitOptions, EmittedModel, emitOnnx } from './onnx.js';

export interface RuntimeOptions {
  /** Intra-op threads; default: all cores. */
  threads?: number;
}

/**
 * ONNX Runtime session settings shared by every program.
 *
 * cpuMemArena: ORT's CPU arena keeps every block it ever allocated and, with batch and sequence
 * sizes changing between runs, keeps growing: one process training UNITER-base at ~4k tokens on
 * MLM and ITM+WRA in turn reached 20 GiB with it, 10.5 GiB peak / 6.3 GiB steady without it, at
 * the same speed (training and inference measured side by side; bench/results). Off by default.
 *
 * spinning: whether idle intra-op threads busy-wait for work between ops (ORT's default). On an
 * idle machine it is faster (12-layer BERT forward ~1.1x, A/B with pauses between runs); when other
 * processes share the cores it burns CPU they need, and off measured faster there (UNITER training
 * steps 1.11-1.14x, batch-1 inference 1.4x at load 8-10; docs/benchmarks.md). On by default;
 * `UNITER_ORT_SPINNING=0` or setSessionSettings({ spinning: false }) turns it off.
 */
export interface SessionSettings {
  cpuMemArena: boolean;
  spinning: boolean;
}

const sessionSettings: SessionSettings = { cpuMemArena: false, spinning: process.env.UNITER_ORT_SPINNING !== '0' };

export function setSessionSettings(s: Partial<SessionSettings>): void {
  Object.assign(sessionSettings, s);
}

let defaultThreads = Math.max(1, typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length);

export function setDefaultThreads(n: number): void {
  if (!(n >= 1)) throw new Error(`threads must be >= 1, got ${n}`);
  defaultThreads = Math.floor(n);
}

const sessionCache = new Map<string, Promise<ort.InferenceSession>>();
/** How many sessions have been created (tests use this to prove reuse). */
export const sessionStats = { created: 0 };

export interface DropoutSeed {
  seed: number;
  step: number;
}

/**
 * Seconds a run spent, added to by Program.run: `feeds` building the input tensors and dropout
 * masks, `session` inside ONNX Runtime, `outputs` turning its outputs into host tensors.
 */
export interface RunTimings {
  feeds: number;
  session: number;
  outputs: number;
}

export class Program {
  readonly signature: string;
  private sessionPromise: Promise<ort.InferenceSession> | null = null;

  constructor(
    readonly model: EmittedModel,
    private readonly graph: Graph,
    private readonly threads: number,
  ) {
    this.signature = createHash('sha256').update(model.bytes).update(`threads=${threads}`).update(JSON.stringify(sessionSettings)).digest('hex');
  }

  private session(): Promise<ort.InferenceSession> {
    if (!this.sessionPromise) {
      let p = sessionCache.get(this.signature);
      if (!p) {
        sessionStats.created++;
        p = ort.InferenceSession.create(this.model.bytes, {
          intraOpNumThreads: this.threads,
          interOpNumThreads: 1,
          executionMode: 'sequential',
          graphOptimizationLevel: 'all',
          enableCpuMemArena: sessionSettings.cpuMemArena,
          extra: { session: { intra_op: { allow_spinning: sessionSettings.spinning ? '1' : '0' } } },
        });
        sessionCache.set(this.signature, p);
      }
      this.sessionPromise = p;
    }
    return this.sessionPromise;
  }

  /** Run with the given feeds (by input name). Dropout masks are generated when `dropout` is given; `timings` is added to. */
  async run(feeds: ReadonlyMap<string, HostTensor> | Record<string, HostTensor>, dropout?: DropoutSeed, timings?: RunTimings): Promise<Map<string, HostTensor>> {
    const t0 = performance.now();
    const get = (name: string) => (feeds instanceof Map ? feeds.get(name) : (feeds as Record<string, HostTensor>)[name]);
    const ortFeeds: Record<string, ort.Tensor> = {};
    const symbols = new Map<string, number>();
    const masks: Array<{ name: string; shape: readonly (number | string)[] }> = [];
    for (const inp of this.model.inputs) {
      if (inp.role === 'dropout') {
        masks.push(inp);
        continue;
      }
      const t = get(inp.name);
      if (!t) throw new Error(`run: missing input '${inp.name}' (expected ${inp.dtype} [${inp.shape}])`);
      if (t.dtype !== inp.dtype) throw new Error(`run: input '${inp.name}' has dtype ${t.dtype}, expected ${inp.dtype}`);
      if (t.shape.length !== inp.shape.length) throw new Error(`run: input '${inp.name}' has shape [${t.shape}], expected rank ${inp.shape.length} [${inp.shape}]`);
      inp.shape.forEach((d, i) => {
        if (typeof d === 'number') {
          if (t.shape[i] !== d) throw new Error(`run: input '${inp.name}' has shape [${t.shape}], expected [${inp.shape}]`);
        } else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(d)) {
          const prev = symbols.get(d);
          if (prev !== undefined && prev !== t.shape[i]) throw new Error(`run: input '${inp.name}' dim ${i} is ${t.shape[i]} but '${d}' is ${prev} elsewhere`);
          symbols.set(d, t.shape[i]);
        }
      });
      ortFeeds[inp.name] = toOrt(t);
    }
    const allSymbols = masks.length ? this.graph.resolveSymbols(symbols) : symbols;
    for (const m of masks) {
      const shape = m.shape.map((d) => evalDim(d, allSymbols));
      const site = this.graph.dropoutSites.get(m.name);
      if (!site) throw new Error(`run: unknown dropout site ${m.name}`);
      ortFeeds[m.name] = toOrt({ dtype: 'bool', shape, data: dropoutMask(numel(shape), site.keep, m.name, dropout) });
    }
    const session = await this.session();
    const t1 = performance.now();
    const out = await session.run(ortFeeds);
    const t2 = performance.now();
    const result = new Map<string, HostTensor>();
    for (const name of this.model.outputs) result.set(name, fromOrt(out[name]));
    if (timings) {
      timings.feeds += (t1 - t0) / 1000;
      timings.session += (t2 - t1) / 1000;
      timings.outputs += (performance.now() - t2) / 1000;
    }
    return result;
  }
}

/** Keep-mask of one dropout site: 1 where an element is kept (probability `keep`), 0 elsewhere. */
export function dropoutMask(n: number, keep: number, site: string, seed?: DropoutSeed): Uint8Array {
  if (!seed) throw new Error(`run: graph has dropout site ${site} but no dropout seed was given (pass {seed, step})`);
  const out = new Uint8Array(n);
  new Rng(seed.seed, 'dropout', seed.step, site).fillThreshold(out, keep * 4294967296, 1);
  return out;
}

export function compile(graph: Graph, outputs: Record<string, Tensor>, opts: RuntimeOptions & EmitOptions = {}): Program {
  const model = emitOnnx(graph, outputs, opts);
  return new Program(model, graph, opts.threads ?? defaultThreads);
}

export function toOrt(t: HostTensor): ort.Tensor {
  switch (t.dtype) {
    case 'float32':
      return new ort.Tensor('float32', t.data as Float32Array, t.shape);
    case 'float64':
      return new ort.Tensor('float64', t.data as Float64Array, t.shape);
    case 'int32':
      return new ort.Tensor('int32', t.data as Int32Array, t.shape);
    case 'int64':
      return new ort.Tensor('int64', t.data as BigInt64Array, t.shape);
    case 'bool':
      return new ort.Tensor('bool', t.data as Uint8Array, t.shape);
  }
}

export function fromOrt(t: ort.Tensor): HostTensor {
  const map: Record<string, DType> = { float32: 'float32', float64: 'float64', int32: 'int32', int64: 'int64', bool: 'bool' };
  const dtype = map[t.type];
  if (!dtype) throw new Error(`unsupported output type ${t.type}`);
  let data = t.data as HostTensor['data'];
  if (dtype === 'bool' && !(data instanceof Uint8Array)) data = Uint8Array.from(data as unknown as ArrayLike<number>);
  return { dtype, shape: [...t.dims], data };
}
