/**
 * numpy arrays inside msgpack, as the `msgpack_numpy` package (patched into msgpack by the
 * official converter) encodes them: a map
 *   {b'nd': True, b'type': '<f2', b'kind': b'', b'shape': [rows, cols], b'data': <raw bytes>}
 * whose keys are bytes (msgpack `bin`) and whose `type` is the numpy dtype string (`str`).
 * Older msgpack-numpy versions spelled the keys as text; the decoder reads both.
 */
import { type MsgpackValue } from './msgpack.js';
import { checkNpyArray, npyDataFromBytes, npyDtype, NpyError, itemSize, type NpyArray } from './npz.js';
import { numel } from '../engine/host.js';

const KEY = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'ascii'));

/** The msgpack-numpy map for one array (encode with `packMsgpack`). */
export function numpyToMsgpack(a: NpyArray, where = 'array'): Map<Uint8Array, MsgpackValue> {
  checkNpyArray(a, where);
  return new Map<Uint8Array, MsgpackValue>([
    [KEY('nd'), true],
    [KEY('type'), a.dtype],
    [KEY('kind'), new Uint8Array(0)],
    [KEY('shape'), a.shape.slice()],
    [KEY('data'), new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength)],
  ]);
}

/** True when a decoded msgpack value is a msgpack-numpy array map. */
export function isMsgpackNumpy(v: MsgpackValue | undefined): boolean {
  return typeof v === 'object' && v !== null && !(v instanceof Uint8Array) && !Array.isArray(v) && !(v instanceof Map) && 'nd' in v;
}

/** Decode a msgpack-numpy array map (as returned by `unpackMsgpack`); `where` labels errors. */
export function msgpackToNumpy(v: MsgpackValue | undefined, where: string): NpyArray {
  if (!isMsgpackNumpy(v)) throw new NpyError(`${where}: expected a msgpack-numpy array map with keys nd/type/shape/data`);
  const m = v as Record<string, MsgpackValue>;
  if (m.nd !== true) throw new NpyError(`${where}: msgpack-numpy value is a scalar (nd=${String(m.nd)}), expected an array`);
  const kind = m.kind;
  if (kind instanceof Uint8Array && kind.length > 0) {
    throw new NpyError(`${where}: msgpack-numpy kind '${Buffer.from(kind).toString('latin1')}' (structured or object array) is not supported`);
  }
  const type = m.type instanceof Uint8Array ? Buffer.from(m.type).toString('latin1') : m.type;
  if (typeof type !== 'string') throw new NpyError(`${where}: msgpack-numpy 'type' must be a dtype string such as '<f2'`);
  const dtype = npyDtype(type, where);
  const shape = m.shape;
  if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isInteger(d) && d >= 0)) {
    throw new NpyError(`${where}: msgpack-numpy 'shape' must be a list of non-negative integers`);
  }
  const data = m.data;
  if (!(data instanceof Uint8Array)) throw new NpyError(`${where}: msgpack-numpy 'data' must be bytes`);
  const dims = shape as number[];
  const count = numel(dims);
  if (data.length !== count * itemSize(dtype)) {
    throw new NpyError(`${where}: msgpack-numpy data has ${data.length} bytes, shape [${dims}] ${dtype} needs ${count * itemSize(dtype)}`);
  }
  return { dtype, shape: dims, data: npyDataFromBytes(dtype, data, count) };
}
