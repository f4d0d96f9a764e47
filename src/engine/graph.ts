/**
 * The traced graph: every tensor is a node produced by one op from its inputs. Building a
 * model runs ordinary TypeScript that calls the ops in `ops.ts`; nothing is computed until the
 * graph is emitted as ONNX and run (see `onnx.ts`, `runtime.ts`).
 */
import { Dim, dimSymbols, evalDim, fmtShape, freshDim } from './dims.js';
import type { DType } from './host.js';

export type Attrs = Record<string, unknown>;

export type InputRole = 'data' | 'param' | 'dropout';

export class Tensor {
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly op: string,
    readonly inputs: readonly Tensor[],
    readonly attrs: Attrs,
    readonly shape: readonly Dim[],
    readonly dtype: DType,
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  /** Graph-input name (only for op 'input'). */
  get inputName(): string | undefined {
    return this.op === 'input' ? (this.attrs.name as string) : undefined;
  }

  toString(): string {
    return `${this.op}#${this.id}${fmtShape(this.shape)}:${this.dtype}`;
  }
}

export class ShapeError extends Error {}

/**
 * A segment of the trace (an encoder layer): the nodes from `start` to `output`, a function of
 * `input`, parameters and other earlier values, only `output` used after it. Its backward pass
 * finishes the segment's parameter gradients before the gradient moves on to `input`; with
 * `recompute`, its intermediates are not kept from the forward pass but recomputed there from
 * `input` (activation checkpointing). See `segment` and `grad` in autodiff.ts.
 */
export interface Segment {
  input: Tensor;
  start: number;
  output: Tensor;
  recompute: boolean;
}

export class Graph {
  readonly nodes: Tensor[] = [];
  readonly inputs = new Map<string, Tensor>();
  /** symbol -> where its value can be read at run time (graph input name, axis). */
  readonly dimSources = new Map<string, { input: string; axis: number }>();
  /** Dropout sites: mask input name -> keep probability (the runtime fills the masks). */
  readonly dropoutSites = new Map<string, { keep: number }>();
  /** Symbols defined as an exact quotient of other dims (from reshape's -1). */
  readonly derivedDims = new Map<string, { num: Dim; den: Dim }>();
  /** Segments (see Segment), in trace order. */
  readonly segments: Segment[] = [];
  private dropoutCount = 0;

  constructor(readonly name = 'graph') {}

  add(op: string, inputs: readonly Tensor[], attrs: Attrs, shape: readonly Dim[], dtype: DType): Tensor {
    for (const t of inputs) if (t.graph !== this) throw new Error(`op ${op}: input ${t} belongs to another graph`);
    const t = new Tensor(this, this.nodes.length, op, inputs, attrs, shape, dtype);
    this.nodes.push(t);
    return t;
  }

  /** Declare a graph input. String dims become symbols bound to this input's axes. */
  input(name: string, dtype: DType, shape: readonly Dim[], role: InputRole = 'data'): Tensor {
    if (this.inputs.has(name)) throw new Error(`graph '${this.name}': input '${name}' declared twice`);
    const t = this.add('input', [], { name, role }, shape, dtype);
    this.inputs.set(name, t);
    shape.forEach((d, axis) => {
      if (typeof d === 'string' && dimSymbols(d).length === 1 && dimSymbols(d)[0] === d && !this.dimSources.has(d)) {
        this.dimSources.set(d, { input: name, axis });
      }
    });
    return t;
  }

  param(name: string, shape: readonly number[]): Tensor {
    return this.inputs.get(name) ?? this.input(name, 'float32', shape, 'param');
  }

  /**
   * A fresh keep-mask input for dropout, shaped like `like`: bool (one byte per element, a
   * quarter of a float mask's memory, in the graph and on the host); the runtime fills it.
   */
  dropoutMask(like: Tensor, keep: number): Tensor {
    const name = `dropout_mask_${this.dropoutCount++}`;
    this.dropoutSites.set(name, { keep });
    return this.input(name, 'bool', like.shape, 'dropout');
  }

  /** A new symbol equal to num / den at run time. */
  derivedDim(num: Dim, den: Dim): string {
    const sym = freshDim('q');
    this.derivedDims.set(sym, { num, den });
    return sym;
  }

  /** Values of every symbol given the bound ones (derived symbols resolved in order). */
  resolveSymbols(bound: Map<string, number>): Map<string, number> {
    const out = new Map(bound);
    for (const [sym, { num, den }] of this.derivedDims) {
      try {
        out.set(sym, evalDim(num, out) / evalDim(den, out));
      } catch {
        // depends on symbols not bound in this run
      }
    }
    return out;
  }

  inputsByRole(role: InputRole): Tensor[] {
    return [...this.inputs.values()].filter((t) => t.attrs.role === role);
  }
}

export function shapeError(op: string, msg: string, ...shapes: Array<readonly Dim[]>): never {
  throw new ShapeError(`${op}: ${msg} (shapes ${shapes.map(fmtShape).join(' and ')})`);
}
