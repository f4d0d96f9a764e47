/** Tensors that live in JavaScript memory: the currency between data, engine and checkpoints. */

export type DType = 'float32' | 'float64' | 'int32' | 'int64' | 'bool';

export type HostData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

export interface HostTensor {
  dtype: DType;
  shape: number[];
  data: HostData;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function f32(shape: number[], data?: Float32Array | ArrayLike<number>): HostTensor {
  const n = numel(shape);
  const arr = data instanceof Float32Array ? data : data ? Float32Array.from(data) : new Float32Array(n);
  if (arr.length !== n) throw new Error(`f32: data has ${arr.length} elements, shape [${shape}] needs ${n}`);
  return { dtype: 'float32', shape, data: arr };
}

export function i64(shape: number[], data?: ArrayLike<number> | BigInt64Array): HostTensor {
  const n = numel(shape);
  let arr: BigInt64Array;
  if (data instanceof BigInt64Array) arr = data;
  else {
    arr = new BigInt64Array(n);
    if (data) {
      if (data.length !== n) throw new Error(`i64: data has ${data.length} elements, shape [${shape}] needs ${n}`);
      for (let i = 0; i < n; i++) arr[i] = BigInt(data[i]);
    }
  }
  if (arr.length !== n) throw new Error(`i64: data has ${arr.length} elements, shape [${shape}] needs ${n}`);
  return { dtype: 'int64', shape, data: arr };
}

export function bool(shape: number[], data?: ArrayLike<number | boolean>): HostTensor {
  const n = numel(shape);
  const arr = new Uint8Array(n);
  if (data) {
    if (data.length !== n) throw new Error(`bool: data has ${data.length} elements, shape [${shape}] needs ${n}`);
    for (let i = 0; i < n; i++) arr[i] = data[i] ? 1 : 0;
  }
  return { dtype: 'bool', shape, data: arr };
}

/** Any numeric host tensor as plain numbers (int64 converted with Number). */
export function toNumbers(t: HostTensor): number[] {
  const out = new Array<number>(t.data.length);
  for (let i = 0; i < t.data.length; i++) out[i] = Number(t.data[i]);
  return out;
}

/** Largest absolute value of a numeric tensor (0 for an empty one): the scale tolerances refer to. */
export function maxMagnitude(t: HostTensor): number {
  let m = 0;
  for (let i = 0; i < t.data.length; i++) m = Math.max(m, Math.abs(Number(t.data[i])));
  return m;
}

/** Float32 view of a tensor (copy when the dtype differs). */
export function asFloat32(t: HostTensor): Float32Array {
  if (t.data instanceof Float32Array) return t.data;
  const out = new Float32Array(t.data.length);
  for (let i = 0; i < out.length; i++) out[i] = Number(t.data[i]);
  return out;
}

/** IEEE half to float, subnormals included. */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Float to IEEE half with round-to-nearest-even, subnormals included. */
export function floatToHalf(v: number): number {
  f32Scratch[0] = v;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}
