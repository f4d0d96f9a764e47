/**
 * safetensors: 8-byte little-endian header length, JSON header {name: {dtype, shape,
 * data_offsets}}, raw little-endian data. Reading accepts F32, F16 and BF16 (returned as
 * float32), F64, I64, I32 and BOOL; writing emits F32, F64, I64, I32 and BOOL with the header
 * padded to 8 bytes and tensors ordered by item size (largest first) then name, so every
 * tensor is aligned to its own item size.
 */
import * as path from 'node:path';
import { withAtomicStream } from '../util/atomic.js';
import { readFileReporting, type PhaseProgress } from '../util/progress.js';
import { parseJsonStrict } from '../util/json.js';
import { DType, HostTensor, halfToFloat, numel } from './host.js';

export interface SafetensorsFile {
  tensors: Map<string, HostTensor>;
  metadata: Record<string, string>;
}

const ITEM: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, BOOL: 1, U8: 1 };

export class SafetensorsError extends Error {}

/** Read a safetensors file; `onProgress` gets the bytes read (phase `reading <name>`). */
export function readSafetensors(file: string, onProgress?: PhaseProgress): SafetensorsFile {
  let buf: Buffer;
  try {
    buf = readFileReporting(file, onProgress);
  } catch (e) {
    throw new SafetensorsError(`${file}: cannot read safetensors file (${(e as Error).message})`);
  }
  return parseSafetensors(buf, file, onProgress);
}

/** Parse a safetensors file's bytes; `onProgress` gets the bytes of the tensors decoded so far (phase `decoding tensors`). */
export function parseSafetensors(buf: Uint8Array, file = '<buffer>', onProgress?: PhaseProgress): SafetensorsFile {
  if (buf.length < 8) throw new SafetensorsError(`${file}: truncated safetensors file (${buf.length} bytes, no header length)`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const hlen = Number(dv.getBigUint64(0, true));
  if (hlen > buf.length - 8) throw new SafetensorsError(`${file}: truncated safetensors file (header says ${hlen} bytes, file has ${buf.length - 8})`);
  let header: Record<string, unknown>;
  try {
    header = parseJsonStrict(Buffer.from(buf.buffer, buf.byteOffset + 8, hlen).toString('utf8'), 64) as Record<string, unknown>;
  } catch (e) {
    throw new SafetensorsError(`${file}: bad safetensors header: ${(e as Error).message}`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new SafetensorsError(`${file}: bad safetensors header: not a JSON object`);
  const dataStart = 8 + hlen;
  const dataLen = buf.length - dataStart;
  const tensors = new Map<string, HostTensor>();
  const spans: { name: string; b: number; e: number }[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (typeof info !== 'object' || info === null || Array.isArray(info) || !Object.values(info).every((v) => typeof v === 'string')) {
        throw new SafetensorsError(`${file}: __metadata__ must be an object of strings, got ${JSON.stringify(info)?.slice(0, 80)}`);
      }
      metadata = info as Record<string, string>;
      continue;
    }
    if (typeof info !== 'object' || info === null || Array.isArray(info)) throw new SafetensorsError(`${file}: tensor '${name}': header entry is not an object`);
    const { dtype, shape, data_offsets } = info as { dtype: string; shape: unknown; data_offsets: unknown };
    if (!(dtype in ITEM)) throw new SafetensorsError(`${file}: tensor '${name}' has unsupported dtype '${dtype}' (expected F32, F16, BF16, F64, I64, I32 or BOOL)`);
    const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
    if (!Array.isArray(shape) || !shape.every(isCount)) throw new SafetensorsError(`${file}: tensor '${name}': shape must be a list of non-negative integers, got ${JSON.stringify(shape)}`);
    if (!Array.isArray(data_offsets) || data_offsets.length !== 2 || !data_offsets.every(isCount) || data_offsets[0] > data_offsets[1]) {
      throw new SafetensorsError(`${file}: tensor '${name}': data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(data_offsets)}`);
    }
    const [b, e] = data_offsets as [number, number];
    const n = numel(shape);
    if (e - b !== n * ITEM[dtype]) throw new SafetensorsError(`${file}: tensor '${name}' [${shape}] ${dtype} needs ${n * ITEM[dtype]} bytes, offsets give ${e - b}`);
    if (e > dataLen || b < 0) throw new SafetensorsError(`${file}: truncated safetensors file: tensor '${name}' ends at ${e}, data has ${dataLen} bytes`);
    spans.push({ name, b, e });
  }
  // The data section must be exactly the tensors' bytes, back to back: no overlap (two names
  // sharing bytes would load one tensor's weights as another's), no gaps, no trailing bytes.
  spans.sort((x, y) => x.b - y.b || x.e - y.e);
  let end = 0;
  let prev = '';
  for (const { name, b, e } of spans) {
    if (b < end) throw new SafetensorsError(`${file}: tensor '${name}' (bytes ${b}..${e}) overlaps tensor '${prev}' (ends at ${end})`);
    if (b > end) throw new SafetensorsError(`${file}: gap of ${b - end} bytes before tensor '${name}' (bytes ${end}..${b} belong to no tensor)`);
    end = e;
    prev = name;
  }
  if (end !== dataLen) throw new SafetensorsError(`${file}: ${dataLen - end} trailing bytes after the last tensor (data section ${dataLen} bytes, tensors end at ${end})`);
  let decoded = 0;
  onProgress?.('decoding tensors', 0, dataLen, 'bytes');
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const { dtype, shape, data_offsets } = info as { dtype: string; shape: number[]; data_offsets: [number, number] };
    tensors.set(name, decode(dtype, shape, buf.subarray(dataStart + data_offsets[0], dataStart + data_offsets[1])));
    decoded += data_offsets[1] - data_offsets[0];
    onProgress?.('decoding tensors', decoded, dataLen, 'bytes');
  }
  return { tensors, metadata };
}

function decode(dtype: string, shape: number[], bytes: Uint8Array): HostTensor {
  const copy = new Uint8Array(bytes); // aligned private copy
  const n = numel(shape);
  switch (dtype) {
    case 'F32':
      return { dtype: 'float32', shape, data: new Float32Array(copy.buffer, 0, n) };
    case 'F64':
      return { dtype: 'float64', shape, data: new Float64Array(copy.buffer, 0, n) };
    case 'I64':
      return { dtype: 'int64', shape, data: new BigInt64Array(copy.buffer, 0, n) };
    case 'I32':
      return { dtype: 'int32', shape, data: new Int32Array(copy.buffer, 0, n) };
    case 'BOOL':
    case 'U8':
      return { dtype: 'bool', shape, data: copy };
    case 'F16': {
      const u16 = new Uint16Array(copy.buffer, 0, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = halfToFloat(u16[i]);
      return { dtype: 'float32', shape, data: out };
    }
    case 'BF16': {
      const u16 = new Uint16Array(copy.buffer, 0, n);
      const u32 = new Uint32Array(n);
      for (let i = 0; i < n; i++) u32[i] = u16[i] << 16;
      return { dtype: 'float32', shape, data: new Float32Array(u32.buffer) };
    }
  }
  throw new SafetensorsError(`unsupported dtype ${dtype}`);
}

const CODE: Record<DType, string> = { float32: 'F32', float64: 'F64', int32: 'I32', int64: 'I64', bool: 'BOOL' };

/** A safetensors file as its parts: the 8-byte header length and the header, then each tensor's bytes in file order. */
export interface SafetensorsLayout {
  head: Uint8Array;
  data: Uint8Array[];
  totalBytes: number;
}

/** The layout every writer uses: tensors ordered by item size (largest first) then name, header padded to 8 bytes. */
export function safetensorsLayout(tensors: Map<string, HostTensor> | Record<string, HostTensor>, metadata?: Record<string, string>, where = 'safetensors'): SafetensorsLayout {
  const entries = (tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors)).map(([name, t]) => {
    if (t.data.length !== numel(t.shape)) throw new SafetensorsError(`${where}: tensor '${name}' has ${t.data.length} values, shape [${t.shape}] needs ${numel(t.shape)}`);
    return { name, t, item: ITEM[CODE[t.dtype]] };
  });
  entries.sort((a, b) => b.item - a.item || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  let off = 0;
  for (const { name, t, item } of entries) {
    const len = t.data.length * item;
    header[name] = { dtype: CODE[t.dtype], shape: t.shape, data_offsets: [off, off + len] };
    off += len;
  }
  let hjson = JSON.stringify(header);
  hjson += ' '.repeat((8 - (Buffer.byteLength(hjson) % 8)) % 8);
  const hbytes = Buffer.from(hjson, 'utf8');
  const head = new Uint8Array(8 + hbytes.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(hbytes.length), true);
  head.set(hbytes, 8);
  const data = entries.map(({ t }) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  return { head, data, totalBytes: head.length + off };
}

export function serializeSafetensors(tensors: Map<string, HostTensor> | Record<string, HostTensor>, metadata?: Record<string, string>): Uint8Array {
  const { head, data, totalBytes } = safetensorsLayout(tensors, metadata);
  const out = new Uint8Array(totalBytes);
  out.set(head);
  let pos = head.length;
  for (const d of data) {
    out.set(d, pos);
    pos += d.length;
  }
  return out;
}

/**
 * Write a safetensors file atomically, tensor by tensor from the arrays (no whole-file copy in
 * memory), reporting the bytes written (phase `writing <name>`).
 */
export function writeSafetensors(file: string, tensors: Map<string, HostTensor> | Record<string, HostTensor>, metadata?: Record<string, string>, onProgress?: PhaseProgress): void {
  const { head, data, totalBytes } = safetensorsLayout(tensors, metadata, file);
  const phase = `writing ${path.basename(file)}`;
  onProgress?.(phase, 0, totalBytes, 'bytes');
  withAtomicStream(
    file,
    (s) => {
      s.write(head);
      for (const d of data) s.write(d);
    },
    onProgress && ((written) => onProgress(phase, written, totalBytes, 'bytes')),
  );
}
