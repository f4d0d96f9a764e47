/**
 * The storage/tensor model of PyTorch checkpoints, independent of the container format.
 *
 * A torch tensor is a strided view (offset, sizes, strides, all in elements) of a flat storage
 * of raw bytes. Several tensors may view one storage (tied weights, slices). Storages of the
 * legacy format may themselves be views of a root storage. `materializeTensor` copies a view out
 * into a contiguous `HostTensor`, widening the dtypes that HostTensor lacks (float16 and
 * bfloat16 become float32 exactly; int8/int16/uint8 become int32).
 */
import { HostTensor, floatToHalf, halfToFloat, numel } from '../engine/host.js';

export type TorchDType = 'float16' | 'bfloat16' | 'float32' | 'float64' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

export const ELEMENT_SIZE: Record<TorchDType, number> = {
  float16: 2,
  bfloat16: 2,
  float32: 4,
  float64: 8,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

/** Legacy storage class names (`torch.HalfStorage`, ...) as torch pickles them. */
export const STORAGE_CLASS_DTYPE: Record<string, TorchDType> = {
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  FloatStorage: 'float32',
  DoubleStorage: 'float64',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ShortStorage: 'int16',
  CharStorage: 'int8',
  ByteStorage: 'uint8',
  BoolStorage: 'bool',
};

/** `torch.<name>` dtype objects (a dtype pickles as the global `torch.<canonical name>`). */
export const DTYPE_GLOBAL: Record<string, TorchDType> = {
  float16: 'float16',
  half: 'float16',
  bfloat16: 'bfloat16',
  float32: 'float32',
  float: 'float32',
  float64: 'float64',
  double: 'float64',
  int64: 'int64',
  long: 'int64',
  int32: 'int32',
  int: 'int32',
  int16: 'int16',
  short: 'int16',
  int8: 'int8',
  uint8: 'uint8',
  bool: 'bool',
};

export function storageClassName(dtype: TorchDType): string {
  for (const [name, d] of Object.entries(STORAGE_CLASS_DTYPE)) if (d === dtype) return name;
  throw new Error(`no storage class for dtype ${dtype}`);
}

export class TorchCheckpointError extends Error {
  override name = 'TorchCheckpointError';
}

/**
 * A flat storage. `bytes` is filled by the container reader (the legacy format appends storage
 * data after the pickle, so it can still be null while the pickle is being read). A legacy view
 * storage has no bytes of its own: it points into `viewOf.root` starting at element `viewOf.offset`.
 */
export class TorchStorage {
  bytes: Uint8Array | null = null;
  /** True when the bytes are big-endian (zip `byteorder` record or legacy sys_info). */
  bigEndian = false;
  constructor(
    readonly key: string,
    readonly dtype: TorchDType,
    readonly numel: number,
    readonly location: string,
    readonly viewOf: { root: TorchStorage; offset: number } | null = null,
  ) {}

  get nbytes(): number {
    return this.numel * ELEMENT_SIZE[this.dtype];
  }

  /** The storage that owns the bytes, and this storage's byte offset inside it. */
  root(): { root: TorchStorage; byteOffset: number } {
    if (!this.viewOf) return { root: this, byteOffset: 0 };
    const inner = this.viewOf.root.root();
    return { root: inner.root, byteOffset: inner.byteOffset + this.viewOf.offset * ELEMENT_SIZE[this.dtype] };
  }

  /** This storage's bytes (a view for legacy view storages); `where` names the file for errors. */
  resolveBytes(where: string): Uint8Array {
    const { root, byteOffset } = this.root();
    if (!root.bytes) throw new TorchCheckpointError(`${where}: storage '${root.key}' has no data (the checkpoint lists it in the pickle but never stores its bytes)`);
    const end = byteOffset + this.nbytes;
    if (end > root.bytes.length) {
      throw new TorchCheckpointError(`${where}: storage view '${this.key}' needs bytes ${byteOffset}..${end} of storage '${root.key}', which holds ${root.bytes.length}`);
    }
    return root.bytes.subarray(byteOffset, end);
  }
}

/** What `torch._utils._rebuild_tensor_v2` would build: a strided view of a storage. */
export class TorchTensor {
  constructor(
    readonly storage: TorchStorage,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
    readonly dtype: TorchDType,
    readonly requiresGrad = false,
  ) {}

  isContiguous(): boolean {
    let expected = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.stride[i] !== expected) return false;
      expected *= this.shape[i];
    }
    return true;
  }

  /** Identity of the exact view: equal keys mean the same memory seen the same way (a tie). */
  viewKey(storageId: number): string {
    const { byteOffset } = this.storage.root();
    return `${storageId}:${byteOffset + this.offset * ELEMENT_SIZE[this.dtype]}:${this.dtype}:[${this.shape}]:[${this.stride}]`;
  }
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const stride = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i];
  }
  return stride;
}

/** Copy the tensor's elements out, in row-major order, as raw little-endian bytes. */
export function gatherTensorBytes(t: TorchTensor, where: string): Uint8Array {
  const item = ELEMENT_SIZE[t.dtype];
  const n = numel(t.shape);
  const src = t.storage.resolveBytes(where);
  if (n === 0) return new Uint8Array(0);
  let last = t.offset;
  for (let i = 0; i < t.shape.length; i++) {
    if (t.stride[i] < 0) throw new TorchCheckpointError(`${where}: negative stride ${t.stride[i]} in dimension ${i}`);
    last += (t.shape[i] - 1) * t.stride[i];
  }
  if (t.offset < 0 || (last + 1) * item > src.length) {
    throw new TorchCheckpointError(
      `${where}: the view (offset ${t.offset}, shape [${t.shape}], stride [${t.stride}]) reaches element ${last} but storage '${t.storage.key}' holds ${Math.floor(src.length / item)} ${t.dtype} elements`,
    );
  }
  let out: Uint8Array;
  if (t.isContiguous()) {
    // A copy: Buffer.slice would alias the file's memory.
    out = new Uint8Array(src.subarray(t.offset * item, (t.offset + n) * item));
  } else {
    out = new Uint8Array(n * item);
    const rank = t.shape.length;
    const index = new Array<number>(rank).fill(0);
    let srcElem = t.offset;
    for (let k = 0; k < n; k++) {
      out.set(src.subarray(srcElem * item, srcElem * item + item), k * item);
      // Odometer increment over the dimensions, last fastest.
      for (let d = rank - 1; d >= 0; d--) {
        index[d]++;
        srcElem += t.stride[d];
        if (index[d] < t.shape[d]) break;
        srcElem -= t.stride[d] * t.shape[d];
        index[d] = 0;
      }
    }
  }
  if (t.storage.root().root.bigEndian && item > 1) byteswapInPlace(out, item);
  return out;
}

export function byteswapInPlace(bytes: Uint8Array, item: number): void {
  for (let i = 0; i + item <= bytes.length; i += item) {
    for (let a = i, b = i + item - 1; a < b; a++, b--) {
      const tmp = bytes[a];
      bytes[a] = bytes[b];
      bytes[b] = tmp;
    }
  }
}

let halfTable: Float32Array | null = null;

/** All 65536 half-precision values as float32 (each one is exactly representable). */
function halfLookup(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfToFloat(h);
  }
  return halfTable;
}

/**
 * Decode contiguous little-endian bytes of a torch dtype into a HostTensor. Takes ownership of
 * `bytes`: the result may be a view of the same memory.
 */
export function decodeTensorBytes(dtype: TorchDType, shape: number[], bytes: Uint8Array): HostTensor {
  const n = numel(shape);
  const item = ELEMENT_SIZE[dtype];
  if (bytes.length !== n * item) throw new TorchCheckpointError(`decode ${dtype} [${shape}]: ${bytes.length} bytes, expected ${n * item}`);
  const own = bytes.byteOffset % item === 0 ? bytes : new Uint8Array(bytes);
  const buf = own.buffer;
  const at = own.byteOffset;
  switch (dtype) {
    case 'float32':
      return { dtype: 'float32', shape, data: new Float32Array(buf, at, n) };
    case 'float64':
      return { dtype: 'float64', shape, data: new Float64Array(buf, at, n) };
    case 'int64':
      return { dtype: 'int64', shape, data: new BigInt64Array(buf, at, n) };
    case 'int32':
      return { dtype: 'int32', shape, data: new Int32Array(buf, at, n) };
    case 'float16': {
      const table = halfLookup();
      const u16 = new Uint16Array(buf, at, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = table[u16[i]];
      return { dtype: 'float32', shape, data: out };
    }
    case 'bfloat16': {
      const u16 = new Uint16Array(buf, at, n);
      const u32 = new Uint32Array(n);
      for (let i = 0; i < n; i++) u32[i] = u16[i] << 16;
      return { dtype: 'float32', shape, data: new Float32Array(u32.buffer) };
    }
    case 'int16':
      return { dtype: 'int32', shape, data: Int32Array.from(new Int16Array(buf, at, n)) };
    case 'int8':
      return { dtype: 'int32', shape, data: Int32Array.from(new Int8Array(buf, at, n)) };
    case 'uint8':
      return { dtype: 'int32', shape, data: Int32Array.from(new Uint8Array(buf, at, n)) };
    case 'bool': {
      const out = new Uint8Array(n);
      for (let i = 0; i < n; i++) out[i] = own[i] ? 1 : 0;
      return { dtype: 'bool', shape, data: out };
    }
  }
}

/** The tensor as a contiguous HostTensor (float16/bfloat16 widened to float32). */
export function materializeTensor(t: TorchTensor, where: string): HostTensor {
  return decodeTensorBytes(t.dtype, t.shape.slice(), gatherTensorBytes(t, where));
}

/** Encode numbers into the little-endian bytes of a torch dtype (float16 rounds to nearest even). */
export function encodeTensorBytes(dtype: TorchDType, values: ArrayLike<number | bigint>): Uint8Array {
  const n = values.length;
  const out = new Uint8Array(n * ELEMENT_SIZE[dtype]);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < n; i++) {
    const v = values[i];
    switch (dtype) {
      case 'float16':
        dv.setUint16(i * 2, floatToHalf(Number(v)), true);
        break;
      case 'bfloat16':
        dv.setUint16(i * 2, floatToBfloat16Bits(Number(v)), true);
        break;
      case 'float32':
        dv.setFloat32(i * 4, Number(v), true);
        break;
      case 'float64':
        dv.setFloat64(i * 8, Number(v), true);
        break;
      case 'int64':
        dv.setBigInt64(i * 8, typeof v === 'bigint' ? v : BigInt(v), true);
        break;
      case 'int32':
        dv.setInt32(i * 4, Number(v), true);
        break;
      case 'int16':
        dv.setInt16(i * 2, Number(v), true);
        break;
      case 'int8':
        dv.setInt8(i, Number(v));
        break;
      case 'uint8':
        dv.setUint8(i, Number(v));
        break;
      case 'bool':
        dv.setUint8(i, Number(v) ? 1 : 0);
        break;
    }
  }
  return out;
}

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

function floatToBfloat16Bits(v: number): number {
  scratchF32[0] = v;
  const x = scratchU32[0];
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return (x >>> 16) | 0x40;
  // Round to nearest even on the dropped 16 bits.
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}
