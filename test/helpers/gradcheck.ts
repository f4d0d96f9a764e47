/**
 * Numerical gradient checking for the engine: central finite differences of a scalar loss
 * against the analytic gradient that `grad` builds.
 *
 * The op under test produces an output of any shape; the checked loss is
 * sum(output * R) with a fixed random projection R, so every element of the output's
 * Jacobian takes part. Graphs are built in float64 where ONNX Runtime's CPU kernels allow it
 * (tight tolerances); when a float64 session cannot be created or run (no kernel for some
 * op), the same case is rebuilt in float32 with a larger step and looser tolerances, and the
 * result says so.
 */
import {
  Dim,
  Graph,
  HostTensor,
  Program,
  Tensor,
  cast,
  compile,
  grad,
  mul,
  sumAll,
} from '../../src/engine/index.js';
import { Rng } from '../../src/util/rng.js';

export type FloatDType = 'float32' | 'float64';

/** A differentiable (float) input of a case. */
export interface FloatInput {
  /** Concrete shape fed at run time. */
  shape: number[];
  /** Shape declared in the graph (symbols allowed); defaults to `shape`. */
  declared?: Dim[];
  /** Explicit values; otherwise uniform in `range`. */
  values?: number[];
  /** Range of random values; default [-1, 1]. */
  range?: [number, number];
  /** Keep random values at least this far from each of these points (kinks of relu/abs/max). */
  awayFrom?: { points: number[]; margin: number };
  /** Not differentiated (e.g. targets): fed, but excluded from the check. */
  constant?: boolean;
}

/** A non-float input (indices, conditions) fed as given. */
export interface FixedInput {
  value: HostTensor;
  declared?: Dim[];
}

export interface GradCase {
  name: string;
  floats: Record<string, FloatInput>;
  fixed?: Record<string, FixedInput>;
  /** Build the op under test from the declared inputs; `dtype` is the float dtype in use. */
  build(inputs: Record<string, Tensor>, dtype: FloatDType, graph: Graph): Tensor;
  /** Seed for values and the projection; default derived from the name. */
  seed?: number;
}

export interface GradCheckOptions {
  /** Force a dtype instead of trying float64 first. */
  dtype?: FloatDType;
}

export interface Mismatch {
  input: string;
  index: number;
  analytic: number;
  numeric: number;
}

export interface GradCheckResult {
  dtype: FloatDType;
  /** Why float64 was not used (the ORT error), when it was not. */
  fallbackReason?: string;
  /** Inputs for which `grad` returned null (checked against a numeric gradient of zero). */
  nullGrads: string[];
  /** Elements compared. */
  checked: number;
  maxAbsErr: number;
  mismatches: Mismatch[];
  /** Analytic gradients by input name (null when `grad` returned null). */
  analytic: Map<string, Float64Array | null>;
}

/** Step and tolerances per dtype: |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|). */
export const TOLERANCES: Record<FloatDType, { step: number; atol: number; rtol: number }> = {
  float64: { step: 1e-6, atol: 1e-6, rtol: 1e-5 },
  float32: { step: 1e-2, atol: 2e-3, rtol: 2e-2 },
};

/** True for the ORT error raised when a kernel for some op/type combination is missing. */
export function isMissingKernelError(e: unknown): boolean {
  const msg = e instanceof Error ? e.message : String(e);
  return /Could not find an implementation|NOT_IMPLEMENTED|not implemented|Type Error: Type \(tensor\(double\)\)/i.test(msg);
}

function seedOf(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

function floatArray(dtype: FloatDType, values: ArrayLike<number>): Float32Array | Float64Array {
  return dtype === 'float64' ? Float64Array.from(values) : Float32Array.from(values);
}

function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function drawValues(spec: FloatInput, rng: Rng, name: string): number[] {
  const n = numelOf(spec.shape);
  if (spec.values) {
    if (spec.values.length !== n) throw new Error(`gradcheck input '${name}': ${spec.values.length} values for shape [${spec.shape}] (${n} needed)`);
    return spec.values;
  }
  const [lo, hi] = spec.range ?? [-1, 1];
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    let v = lo + (hi - lo) * rng.uniform();
    for (let tries = 0; spec.awayFrom && spec.awayFrom.points.some((p) => Math.abs(v - p) < spec.awayFrom!.margin); tries++) {
      if (tries > 1000) throw new Error(`gradcheck input '${name}': cannot draw values away from ${spec.awayFrom.points}`);
      v = lo + (hi - lo) * rng.uniform();
    }
    out.push(v);
  }
  return out;
}

interface Built {
  graph: Graph;
  output: Tensor;
  loss: Tensor;
  wrt: string[];
  grads: Array<Tensor | null>;
}

function buildCase(c: GradCase, dtype: FloatDType): Built {
  const graph = new Graph(`gradcheck_${c.name}`);
  const inputs: Record<string, Tensor> = {};
  for (const [name, spec] of Object.entries(c.floats)) inputs[name] = graph.input(name, dtype, spec.declared ?? spec.shape);
  for (const [name, spec] of Object.entries(c.fixed ?? {})) inputs[name] = graph.input(name, spec.value.dtype, spec.declared ?? spec.value.shape);
  const output = c.build(inputs, dtype, graph);
  if (output.dtype !== 'float32' && output.dtype !== 'float64') throw new Error(`gradcheck '${c.name}': output must be float, got ${output.dtype}`);
  // The projection is float64 in both modes, so the loss sum adds no float32 rounding of its own.
  const projection = graph.input('gradcheck_projection', 'float64', output.shape);
  const loss = sumAll(mul(cast(output, 'float64'), projection));
  const wrt = Object.entries(c.floats)
    .filter(([, s]) => !s.constant)
    .map(([n]) => n);
  const grads = grad(
    loss,
    wrt.map((n) => inputs[n]),
  );
  return { graph, output, loss, wrt, grads };
}

/** Run one case in one dtype; throws ORT errors unchanged (the caller decides about fallback). */
async function checkIn(c: GradCase, dtype: FloatDType): Promise<GradCheckResult> {
  const built = buildCase(c, dtype);
  const rng = new Rng(c.seed ?? seedOf(c.name), 'gradcheck');
  const feeds = new Map<string, HostTensor>();
  for (const [name, spec] of Object.entries(c.floats)) {
    feeds.set(name, { dtype, shape: spec.shape, data: floatArray(dtype, drawValues(spec, rng, name)) });
  }
  for (const [name, spec] of Object.entries(c.fixed ?? {})) feeds.set(name, spec.value);

  // The output's concrete shape is only known after a run (symbolic dims).
  const forward = compile(built.graph, { output: built.output }, { threads: 1 });
  const outShape = (await forward.run(feeds)).get('output')!.shape;
  const proj = new Float64Array(numelOf(outShape));
  for (let i = 0; i < proj.length; i++) proj[i] = rng.uniform() * 2 - 1;
  feeds.set('gradcheck_projection', { dtype: 'float64', shape: outShape, data: proj });

  const gradOutputs: Record<string, Tensor> = { loss: built.loss };
  built.wrt.forEach((n, k) => {
    const g = built.grads[k];
    if (g) gradOutputs[`grad_${n}`] = g;
  });
  const analyticProgram = compile(built.graph, gradOutputs, { threads: 1 });
  const lossProgram = compile(built.graph, { loss: built.loss }, { threads: 1 });
  const analyticOut = await analyticProgram.run(feeds);

  const { step, atol, rtol } = TOLERANCES[dtype];
  const result: GradCheckResult = { dtype, nullGrads: [], checked: 0, maxAbsErr: 0, mismatches: [], analytic: new Map() };
  for (const name of built.wrt) {
    const t = analyticOut.get(`grad_${name}`);
    const fed = feeds.get(name)!;
    if (t && t.shape.join() !== fed.shape.join()) {
      throw new Error(`gradcheck '${c.name}': gradient of '${name}' has shape [${t.shape}], input has [${fed.shape}]`);
    }
    const analytic = t ? Float64Array.from(t.data as Float32Array | Float64Array) : null;
    if (!analytic) result.nullGrads.push(name);
    result.analytic.set(name, analytic);
    const numeric = await numericGradient(lossProgram, feeds, name, step);
    for (let i = 0; i < numeric.length; i++) {
      const a = analytic ? analytic[i] : 0;
      const err = Math.abs(a - numeric[i]);
      result.checked++;
      result.maxAbsErr = Math.max(result.maxAbsErr, err);
      if (!(err <= atol + rtol * Math.max(Math.abs(a), Math.abs(numeric[i])))) {
        result.mismatches.push({ input: name, index: i, analytic: a, numeric: numeric[i] });
      }
    }
  }
  return result;
}

async function numericGradient(lossProgram: Program, feeds: Map<string, HostTensor>, name: string, step: number): Promise<Float64Array> {
  const base = feeds.get(name)!;
  const data = (base.data as Float32Array | Float64Array).slice();
  const perturbed: HostTensor = { ...base, data };
  const local = new Map(feeds);
  local.set(name, perturbed);
  const out = new Float64Array(data.length);
  const lossAt = async (): Promise<number> => Number((await lossProgram.run(local)).get('loss')!.data[0]);
  for (let i = 0; i < data.length; i++) {
    const x = data[i];
    data[i] = x + step;
    const up = data[i] - x; // the step actually taken after rounding to the dtype
    const lp = await lossAt();
    data[i] = x - step;
    const down = x - data[i];
    const lm = await lossAt();
    data[i] = x;
    out[i] = (lp - lm) / (up + down);
  }
  return out;
}

/**
 * Check a case: float64 first (unless forced), float32 when float64 has no kernel. Returns the
 * result; use `assertGradOk` to fail a test with a readable report.
 */
export async function gradCheck(c: GradCase, opts: GradCheckOptions = {}): Promise<GradCheckResult> {
  if (opts.dtype) return checkIn(c, opts.dtype);
  try {
    return await checkIn(c, 'float64');
  } catch (e) {
    if (!isMissingKernelError(e)) throw e;
    const reason = (e instanceof Error ? e.message : String(e)).split('\n')[0].slice(0, 300);
    const r = await checkIn(c, 'float32');
    r.fallbackReason = reason;
    return r;
  }
}

export function formatResult(c: GradCase, r: GradCheckResult): string {
  const head = `gradcheck '${c.name}' in ${r.dtype}${r.fallbackReason ? ` (float64 unavailable: ${r.fallbackReason})` : ''}: ${r.checked} elements, max |err| ${r.maxAbsErr.toExponential(2)}`;
  if (!r.mismatches.length) return head;
  const rows = r.mismatches
    .slice(0, 10)
    .map((m) => `  ${m.input}[${m.index}]: analytic ${m.analytic.toPrecision(8)} vs numeric ${m.numeric.toPrecision(8)}`);
  return [head, `${r.mismatches.length} mismatches:`, ...rows].join('\n');
}

/** Run the check and throw (with the worst elements listed) if any element disagrees. */
export async function assertGradOk(c: GradCase, opts: GradCheckOptions = {}): Promise<GradCheckResult> {
  const r = await gradCheck(c, opts);
  if (r.mismatches.length) throw new Error(formatResult(c, r));
  return r;
}
