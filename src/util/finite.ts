/**
 * Finite checks: NaN and infinities are errors, not results. Weights are checked when loaded or
 * converted (naming the tensor), inputs when collated (naming the example and field), outputs
 * when a model is evaluated (naming the task and output).
 */

/** Thrown when a value that must be finite is NaN or infinite. */
export class NonFiniteError extends Error {
  override name = 'NonFiniteError';
}

/** Index of the first NaN or infinite value, or -1. */
export function firstNonFinite(data: ArrayLike<number>): number {
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    // v - v is 0 for finite numbers and NaN for NaN and +-Infinity.
    if (v - v !== 0) return i;
  }
  return -1;
}

/** "[2, 5]" for flat index 17 of shape [4, 6]; the flat index when the shape does not fit. */
export function indexIn(shape: readonly number[] | undefined, flat: number): string {
  if (!shape || shape.length === 0) return `flat index ${flat}`;
  const idx: number[] = [];
  let rest = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    const n = shape[d] || 1;
    idx.unshift(rest % n);
    rest = Math.floor(rest / n);
  }
  return `[${idx.join(', ')}]`;
}

/** Throw NonFiniteError `${where}: tensor '${name}' holds NaN at [i, j] (shape [...]); ${why}` when `data` is not all finite. */
export function checkFiniteTensor(where: string, name: string, data: ArrayLike<number>, shape?: readonly number[], why = 'weights must be finite'): void {
  const i = firstNonFinite(data);
  if (i >= 0) {
    throw new NonFiniteError(`${where}: tensor '${name}' holds ${data[i]} at ${indexIn(shape, i)}${shape ? ` (shape [${shape.join(', ')}])` : ''}; ${why}`);
  }
}

/** checkFiniteTensor over every floating-point tensor of a map (integer tensors are skipped). */
export function checkFiniteTensors(where: string, tensors: Iterable<[string, { data: ArrayLike<number | bigint> | Float32Array; shape?: readonly number[] } | Float32Array]>, why?: string): void {
  for (const [name, t] of tensors) {
    const data = t instanceof Float32Array ? t : t.data;
    if (data instanceof Float32Array || data instanceof Float64Array) checkFiniteTensor(where, name, data, t instanceof Float32Array ? undefined : t.shape, why);
  }
}
