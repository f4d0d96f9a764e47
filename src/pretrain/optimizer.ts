/**
 * AdamW as in the official `optim/adamw.py` (the Hugging Face "weight decay fix" version) and
 * the parameter grouping of `optim/misc.py` / `train_vqa.py`:
 *
 *   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
 *   p -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)
 *   p -= lr * wd * p                      (decoupled decay, after the Adam update)
 *
 * with t counted per parameter. Parameters whose name contains `bias`, `LayerNorm.weight` or
 * `LayerNorm.bias` get no decay. Groups multiply the scheduled rate by a factor chosen by
 * name (e.g. the VQA head at 10x); the factor applies to the decay term too, since the
 * official code sets the group's `lr`.
 *
 * Parameters and gradients are `Map<string, Float32Array>` keyed by official parameter name;
 * updates are in place and moments are allocated on a parameter's first update.
 */
import { HostTensor, f32, numel } from '../engine/host.js';

/** Name substrings that exclude a parameter from weight decay (official `no_decay`). */
export const NO_DECAY_SUBSTRINGS: readonly string[] = ['bias', 'LayerNorm.bias', 'LayerNorm.weight'];

export function usesWeightDecay(paramName: string): boolean {
  return !NO_DECAY_SUBSTRINGS.some((s) => paramName.includes(s));
}

/** A learning-rate group: parameters for which `match` is true train at `lrMultiplier` x the scheduled rate. */
export interface ParamGroupSpec {
  name: string;
  match: (paramName: string) => boolean;
  lrMultiplier: number;
}

/** Group for every parameter whose name contains `substring` (e.g. 'vqa_output', x10 as the official VQA trainer). */
export function groupByNameSubstring(name: string, substring: string, lrMultiplier: number): ParamGroupSpec {
  return { name, match: (n) => n.includes(substring), lrMultiplier };
}

export interface AdamWOptions {
  betas?: [number, number];
  eps?: number;
  /** Decay for the parameters that take it (see usesWeightDecay). */
  weightDecay?: number;
  correctBias?: boolean;
  /** Checked in order; the first match wins; unmatched parameters are in group 'default' at x1. */
  groups?: ParamGroupSpec[];
}

/** Everything of the optimizer that is not a tensor (goes to trainer.json in a checkpoint). */
export interface AdamWStateJson {
  kind: 'adamw';
  betas: [number, number];
  eps: number;
  weightDecay: number;
  correctBias: boolean;
  /** Number of step() calls. */
  stepCount: number;
  /** Per-parameter update count t (parameters never updated are absent). */
  paramSteps: Record<string, number>;
  /** Group name and multiplier of each parameter, to catch a resume with different groups. */
  paramGroups: Record<string, { group: string; lrMultiplier: number }>;
}

export interface OptimizerState {
  tensors: Map<string, HostTensor>;
  json: AdamWStateJson;
}

interface ParamInfo {
  name: string;
  value: Float32Array;
  shape: number[];
  group: string;
  lrMultiplier: number;
  weightDecay: number;
  steps: number;
  expAvg: Float32Array | null;
  expAvgSq: Float32Array | null;
}

const EXP_AVG = 'exp_avg.';
const EXP_AVG_SQ = 'exp_avg_sq.';

export class AdamW {
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  readonly correctBias: boolean;
  private readonly params = new Map<string, ParamInfo>();
  private steps = 0;

  constructor(params: Map<string, Float32Array>, shapes: Map<string, number[]>, options: AdamWOptions = {}) {
    this.betas = options.betas ?? [0.9, 0.98];
    this.eps = options.eps ?? 1e-6;
    this.weightDecay = options.weightDecay ?? 0.01;
    this.correctBias = options.correctBias ?? true;
    const [b1, b2] = this.betas;
    if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1)) throw new RangeError(`AdamW: betas must be in [0, 1), got [${this.betas}]`);
    if (!(this.eps >= 0)) throw new RangeError(`AdamW: eps must be >= 0, got ${this.eps}`);
    if (!(this.weightDecay >= 0)) throw new RangeError(`AdamW: weightDecay must be >= 0, got ${this.weightDecay}`);
    const groups = options.groups ?? [];
    for (const g of groups) {
      if (!(Number.isFinite(g.lrMultiplier) && g.lrMultiplier >= 0)) throw new RangeError(`AdamW: group '${g.name}' lrMultiplier must be a finite number >= 0, got ${g.lrMultiplier}`);
    }
    for (const [name, value] of params) {
      const shape = shapes.get(name);
      if (!shape) throw new Error(`AdamW: parameter '${name}' has no entry in the shapes map`);
      if (numel(shape) !== value.length) throw new Error(`AdamW: parameter '${name}' has ${value.length} values, shape [${shape}] needs ${numel(shape)}`);
      const group = groups.find((g) => g.match(name));
      this.params.set(name, {
        name,
        value,
        shape: [...shape],
        group: group?.name ?? 'default',
        lrMultiplier: group?.lrMultiplier ?? 1,
        weightDecay: usesWeightDecay(name) ? this.weightDecay : 0,
        steps: 0,
        expAvg: null,
        expAvgSq: null,
      });
    }
  }

  /** Number of step() calls so far. */
  get stepCount(): number {
    return this.steps;
  }

  /** Group name, rate multiplier and weight decay a parameter trains with. */
  settingsOf(paramName: string): { group: string; lrMultiplier: number; weightDecay: number } {
    const p = this.params.get(paramName);
    if (!p) throw new Error(`AdamW: unknown parameter '${paramName}'`);
    return { group: p.group, lrMultiplier: p.lrMultiplier, weightDecay: p.weightDecay };
  }

  /**
   * One update with scheduled rate `lr`. A parameter absent from `grads` is skipped, like a
   * PyTorch parameter whose `.grad` is None (its t does not advance); pass zeros to let its
   * moments decay as PyTorch does once `.grad` exists. `gradScale` multiplies every gradient as it
   * is read (the clipping factor of clipScale): the same numbers as scaling the gradients in place
   * first, without that extra pass over them; the gradients themselves are not changed.
   */
  step(grads: Map<string, Float32Array>, lr: number, gradScale = 1): void {
    if (!(Number.isFinite(lr) && lr >= 0)) throw new RangeError(`AdamW.step: learning rate must be a finite number >= 0, got ${lr}`);
    if (!(Number.isFinite(gradScale) && gradScale > 0)) throw new RangeError(`AdamW.step: gradScale must be a finite number > 0, got ${gradScale}`);
    for (const [name, g] of grads) {
      const p = this.params.get(name);
      if (!p) throw new Error(`AdamW.step: gradient for unknown parameter '${name}'`);
      if (g.length !== p.value.length) throw new Error(`AdamW.step: gradient of '${name}' has ${g.length} values, parameter has ${p.value.length}`);
    }
    const [b1, b2] = this.betas;
    this.steps++;
    for (const p of this.params.values()) {
      const g = grads.get(p.name);
      if (!g) continue;
      if (!p.expAvg || !p.expAvgSq) {
        p.expAvg = new Float32Array(p.value.length);
        p.expAvgSq = new Float32Array(p.value.length);
      }
      p.steps++;
      const groupLr = lr * p.lrMultiplier;
      let stepSize = groupLr;
      if (this.correctBias) stepSize = (groupLr * Math.sqrt(1 - b2 ** p.steps)) / (1 - b1 ** p.steps);
      adamwUpdate(p.value, g, p.expAvg, p.expAvgSq, b1, b2, this.eps, stepSize, groupLr * p.weightDecay, gradScale);
    }
  }

  /** Moments as tensors named `exp_avg.<param>` / `exp_avg_sq.<param>` (sharing memory) plus the JSON part. */
  state(): OptimizerState {
    const tensors = new Map<string, HostTensor>();
    const paramSteps: Record<string, number> = {};
    const paramGroups: Record<string, { group: string; lrMultiplier: number }> = {};
    for (const p of this.params.values()) {
      paramGroups[p.name] = { group: p.group, lrMultiplier: p.lrMultiplier };
      if (!p.expAvg || !p.expAvgSq) continue;
      paramSteps[p.name] = p.steps;
      tensors.set(EXP_AVG + p.name, f32(p.shape, p.expAvg));
      tensors.set(EXP_AVG_SQ + p.name, f32(p.shape, p.expAvgSq));
    }
    return {
      tensors,
      json: {
        kind: 'adamw',
        betas: [...this.betas],
        eps: this.eps,
        weightDecay: this.weightDecay,
        correctBias: this.correctBias,
        stepCount: this.steps,
        paramSteps,
        paramGroups,
      },
    };
  }

  /**
   * Restore moments and counters saved by state(). The parameter set, shapes, hyper-parameters
   * and groups must match this optimizer; `source` names the origin in error messages.
   */
  loadState(state: OptimizerState, source = 'optimizer state'): void {
    const { json, tensors } = state;
    if (json.kind !== 'adamw') throw new Error(`${source}: kind is '${String(json.kind)}', expected 'adamw'`);
    const same = (a: number, b: number): boolean => a === b || Math.abs(a - b) <= 1e-12 * Math.max(Math.abs(a), Math.abs(b));
    if (!same(json.betas[0], this.betas[0]) || !same(json.betas[1], this.betas[1])) throw new Error(`${source}: betas [${json.betas}] differ from this optimizer's [${this.betas}]`);
    if (!same(json.eps, this.eps)) throw new Error(`${source}: eps ${json.eps} differs from this optimizer's ${this.eps}`);
    if (!same(json.weightDecay, this.weightDecay)) throw new Error(`${source}: weightDecay ${json.weightDecay} differs from this optimizer's ${this.weightDecay}`);
    if (json.correctBias !== this.correctBias) throw new Error(`${source}: correctBias ${json.correctBias} differs from this optimizer's ${this.correctBias}`);
    for (const name of Object.keys(json.paramSteps)) {
      if (!this.params.has(name)) throw new Error(`${source}: has moments for parameter '${name}', which this model does not have`);
    }
    for (const [name, saved] of Object.entries(json.paramGroups ?? {})) {
      const p = this.params.get(name);
      if (p && (p.group !== saved.group || p.lrMultiplier !== saved.lrMultiplier)) {
        throw new Error(`${source}: parameter '${name}' was in group '${saved.group}' (x${saved.lrMultiplier}), now in '${p.group}' (x${p.lrMultiplier})`);
      }
    }
    for (const name of tensors.keys()) {
      const paramName = name.startsWith(EXP_AVG_SQ) ? name.slice(EXP_AVG_SQ.length) : name.startsWith(EXP_AVG) ? name.slice(EXP_AVG.length) : null;
      if (paramName === null || !(paramName in json.paramSteps)) throw new Error(`${source}: unexpected tensor '${name}' (expected exp_avg.<param> / exp_avg_sq.<param> of a parameter listed in paramSteps)`);
    }
    // Validate everything before touching any state, so a bad file leaves the optimizer intact.
    const restored = new Map<string, { steps: number; m: Float32Array; v: Float32Array }>();
    for (const [name, steps] of Object.entries(json.paramSteps)) {
      const p = this.params.get(name)!;
      if (!(Number.isInteger(steps) && steps > 0)) throw new Error(`${source}: paramSteps['${name}'] must be a positive integer, got ${steps}`);
      const m = tensors.get(EXP_AVG + name);
      const v = tensors.get(EXP_AVG_SQ + name);
      for (const [label, t] of [[EXP_AVG + name, m], [EXP_AVG_SQ + name, v]] as const) {
        if (!t) throw new Error(`${source}: missing tensor '${label}'`);
        if (!(t.data instanceof Float32Array)) throw new Error(`${source}: tensor '${label}' is ${t.dtype}, expected float32`);
        if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) throw new Error(`${source}: tensor '${label}' has shape [${t.shape}], parameter has [${p.shape}]`);
      }
      restored.set(name, { steps, m: m!.data as Float32Array, v: v!.data as Float32Array });
    }
    if (!(Number.isInteger(json.stepCount) && json.stepCount >= 0)) throw new Error(`${source}: stepCount must be an integer >= 0, got ${json.stepCount}`);
    for (const p of this.params.values()) {
      const r = restored.get(p.name);
      if (!r) {
        p.steps = 0;
        p.expAvg = null;
        p.expAvgSq = null;
        continue;
      }
      p.steps = r.steps;
      p.expAvg = Float32Array.from(r.m);
      p.expAvgSq = Float32Array.from(r.v);
    }
    this.steps = json.stepCount;
  }
}

/**
 * The element loop of AdamW.step for one parameter: gradient times `gradScale`, moments, the Adam
 * step of `stepSize`, then the decoupled decay `decay` (official optim/adamw.py). Rounded to
 * float32 at the same points as PyTorch's in-place float32 ops; `Math.fround(g * gradScale)` is
 * exactly what scaling the gradient in place stored (and g itself when gradScale is 1).
 */
function adamwUpdate(w: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, b1: number, b2: number, eps: number, stepSize: number, decay: number, gradScale: number): void {
  const c1 = 1 - b1;
  const c2 = 1 - b2;
  for (let i = 0; i < w.length; i++) {
    const gi = Math.fround(g[i] * gradScale);
    const mi = Math.fround(b1 * m[i] + c1 * gi);
    const vi = Math.fround(b2 * v[i] + c2 * gi * gi);
    m[i] = mi;
    v[i] = vi;
    const updated = Math.fround(w[i] - (stepSize * mi) / (Math.sqrt(vi) + eps));
    w[i] = updated - decay * updated;
  }
}

/** Global L2 norm of all gradients (float64 sum of squares), as torch `clip_grad_norm_` measures it. */
export function globalGradNorm(grads: Map<string, Float32Array>): number {
  let sumSq = 0;
  for (const g of grads.values()) {
    for (let i = 0; i < g.length; i++) sumSq += g[i] * g[i];
  }
  return Math.sqrt(sumSq);
}

/**
 * The factor torch `clip_grad_norm_` scales gradients by for a global norm `norm`: maxNorm /
 * (norm + 1e-6) when that is < 1, else 1. `maxNorm <= 0` disables clipping (1); so does a
 * non-finite norm (the caller should skip that update, as a mixed-precision loss scaler would).
 */
export function clipScale(norm: number, maxNorm: number): number {
  if (!(maxNorm > 0) || !Number.isFinite(norm)) return 1;
  const coef = maxNorm / (norm + 1e-6);
  return coef < 1 ? coef : 1;
}

/**
 * Clip gradients in place to a global L2 norm of at most `maxNorm` (torch `clip_grad_norm_`, see
 * clipScale) and return the norm before clipping. The trainers instead pass clipScale to
 * AdamW.step, which saves this pass over the gradients, and skip the norm when clipping is off.
 */
export function clipGradNorm(grads: Map<string, Float32Array>, maxNorm: number): number {
  const norm = globalGradNorm(grads);
  const coef = clipScale(norm, maxNorm);
  if (coef < 1) {
    for (const g of grads.values()) {
      for (let i = 0; i < g.length; i++) g[i] *= coef;
    }
  }
  return norm;
}

/**
 * Gradient accumulation: add `from` into `into` (sum over micro-batches, no averaging, as the
 * official loop). A name not yet in `into` is inserted as a copy, so `from` may be reused.
 */
export function accumulateGrads(into: Map<string, Float32Array>, from: Map<string, Float32Array>): void {
  for (const [name, g] of from) {
    const acc = into.get(name);
    if (!acc) {
      into.set(name, Float32Array.from(g));
      continue;
    }
    if (acc.length !== g.length) throw new Error(`accumulateGrads: gradient of '${name}' has ${g.length} values, the accumulator has ${acc.length}`);
    for (let i = 0; i < g.length; i++) acc[i] += g[i];
  }
}

/** Set every accumulated gradient to zero (keeps the arrays for the next optimizer step). */
export function zeroGrads(grads: Map<string, Float32Array>): void {
  for (const g of grads.values()) g.fill(0);
}
