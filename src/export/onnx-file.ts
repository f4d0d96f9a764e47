/**
 * Writing a standalone ONNX file from an emitted graph whose weights are still graph inputs:
 * the weights become initializers (inside the file, or in an external `.onnx.data` file), the
 * opset and output shapes are set, and metadata is attached. The file is streamed tensor by
 * tensor, so a large model never needs a second in-memory copy, and written atomically.
 *
 * Only the few protobuf fields this needs are read and written: ModelProto (ir_version 1,
 * producer_name 2, producer_version 3, doc_string 6, graph 7, opset_import 8, metadata_props 14),
 * GraphProto (initializer 5, input 11, output 12) and TensorProto / ValueInfoProto.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Dim } from '../engine/dims.js';
import type { EmittedModel } from '../engine/onnx.js';
import { OPSET } from '../engine/onnx.js';
import { DType, HostTensor, numel } from '../engine/host.js';
import { onnxType } from '../engine/ops.js';
import { PbWriter } from '../engine/protobuf.js';
import { withAtomicStream } from '../util/atomic.js';
import type { PhaseProgress } from '../util/progress.js';

/** Opsets a model may be stamped with: the graph uses opset-18 forms (ReduceMean with axes as an
 * input, LayerNormalization), and nothing it uses changed meaning up to 21. */
export const MIN_OPSET = OPSET;
export const MAX_OPSET = 21;

/** Above this a file is not loadable: protobuf messages are limited to 2 GiB. */
export const PROTOBUF_LIMIT = 2 ** 31 - 1;

/** External data offsets are aligned to this (what ONNX tools use, so the file can be mmapped). */
const EXTERNAL_ALIGN = 4096;

export interface OutputInfo {
  name: string;
  dtype: DType;
  shape: readonly Dim[];
}

export interface WriteOnnxOptions {
  /** Opset to stamp (MIN_OPSET..MAX_OPSET); default the engine's. */
  opset?: number;
  /** true: weights in `<file>.data`; false: inside the file (error above the limit); 'auto' (default): inside unless too big. */
  externalData?: boolean | 'auto';
  /** Largest model file with the weights inside (default: the 2 GiB protobuf limit). */
  inlineLimitBytes?: number;
  /** Output declarations replacing the emitted ones (names must match), e.g. with named dims. */
  outputs?: readonly OutputInfo[];
  docString?: string;
  metadata?: Record<string, string>;
  producerVersion?: string;
  /** Bytes written of each file (phases `writing <name>`), after every chunk. */
  onProgress?: PhaseProgress;
}

export interface WrittenOnnx {
  file: string;
  /** The external data file, or null when the weights are inside the model file. */
  dataFile: string | null;
  fileBytes: number;
  weightBytes: number;
  weightCount: number;
  opset: number;
  irVersion: number;
}

// ---------------------------------------------------------------------------------------------
// Protobuf reading (top-level fields of one message)

interface PbField {
  field: number;
  wire: number;
  /** The field's full encoding (key + payload), to copy it unchanged. */
  raw: Uint8Array;
  /** Payload of a length-delimited field. */
  payload?: Uint8Array;
  varint?: bigint;
}

function readVarint(buf: Uint8Array, pos: number, what: string): { value: bigint; next: number } {
  let value = 0n;
  let shift = 0n;
  for (let i = pos; i < buf.length && i < pos + 10; i++) {
    const b = buf[i];
    value |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return { value, next: i + 1 };
    shift += 7n;
  }
  throw new Error(`${what}: malformed protobuf varint at byte ${pos}`);
}

function readFields(buf: Uint8Array, what: string): PbField[] {
  const out: PbField[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const start = pos;
    const key = readVarint(buf, pos, what);
    pos = key.next;
    const field = Number(key.value >> 3n);
    const wire = Number(key.value & 7n);
    const f: PbField = { field, wire, raw: buf };
    if (wire === 0) {
      const v = readVarint(buf, pos, what);
      f.varint = v.value;
      pos = v.next;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const len = readVarint(buf, pos, what);
      const end = len.next + Number(len.value);
      if (end > buf.length) throw new Error(`${what}: protobuf field ${field} runs past the end of the message`);
      f.payload = buf.subarray(len.next, end);
      pos = end;
    } else throw new Error(`${what}: unsupported protobuf wire type ${wire} (field ${field})`);
    if (pos > buf.length) throw new Error(`${what}: truncated protobuf message`);
    f.raw = buf.subarray(start, pos);
    out.push(f);
  }
  return out;
}

function stringField(msg: Uint8Array, field: number, what: string): string | undefined {
  const f = readFields(msg, what).find((x) => x.field === field && x.payload);
  return f ? new TextDecoder().decode(f.payload) : undefined;
}

// ---------------------------------------------------------------------------------------------
// Protobuf writing helpers

function varintBytes(v: number | bigint): Uint8Array {
  let x = BigInt.asUintN(64, BigInt(v));
  const out: number[] = [];
  while (x >= 0x80n) {
    out.push(Number(x & 0x7fn) | 0x80);
    x >>= 7n;
  }
  out.push(Number(x));
  return Uint8Array.from(out);
}

/** Key and length prefix of a length-delimited field of `len` bytes. */
function lenPrefix(field: number, len: number): Uint8Array {
  const k = varintBytes((field << 3) | 2);
  const l = varintBytes(len);
  const out = new Uint8Array(k.length + l.length);
  out.set(k);
  out.set(l, k.length);
  return out;
}

function valueInfoProto(o: OutputInfo): PbWriter {
  const shape = new PbWriter();
  for (const d of o.shape) {
    const dim = new PbWriter();
    if (typeof d === 'number') dim.int(1, d);
    else dim.string(2, d);
    shape.message(1, dim);
  }
  const tensorType = new PbWriter().int(1, onnxType(o.dtype)).message(2, shape);
  return new PbWriter().string(1, o.name).message(2, new PbWriter().message(1, tensorType));
}

/** IR version that goes with an opset (ONNX release table). */
function irVersionFor(opset: number): number {
  if (opset <= 18) return 8;
  if (opset <= 20) return 9;
  return 10;
}

function tensorBytes(t: HostTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/**
 * Write `emitted` to `file` with `weights` (by graph input name) baked in as initializers.
 * Every weight must be a graph input of the emitted model; the remaining inputs stay inputs.
 */
export function writeOnnxModel(file: string, emitted: EmittedModel, weights: ReadonlyMap<string, HostTensor>, opts: WriteOnnxOptions = {}): WrittenOnnx {
  const what = `ONNX model for ${file}`;
  const opset = opts.opset ?? OPSET;
  if (!Number.isInteger(opset) || opset < MIN_OPSET || opset > MAX_OPSET) {
    throw new Error(`opset ${opset} is not supported: the graph needs opset >= ${MIN_OPSET} (ReduceMean with axes as an input, LayerNormalization) and is checked up to ${MAX_OPSET}`);
  }
  const inputNames = new Set(emitted.inputs.map((i) => i.name));
  for (const name of weights.keys()) if (!inputNames.has(name)) throw new Error(`${what}: weight '${name}' is not an input of the emitted graph`);
  const declared = new Map(emitted.inputs.map((i) => [i.name, i]));
  for (const [name, t] of weights) {
    const d = declared.get(name)!;
    if (t.dtype !== d.dtype || t.shape.join() !== d.shape.join() || t.data.length !== numel(t.shape)) {
      throw new Error(`${what}: weight '${name}' is ${t.dtype} [${t.shape}], the graph declares ${d.dtype} [${d.shape}]`);
    }
  }

  const top = readFields(emitted.bytes, what);
  const graphField = top.find((f) => f.field === 7 && f.payload);
  if (!graphField) throw new Error(`${what}: the emitted model has no graph`);
  const graphParts: Uint8Array[] = [];
  const outputNames = new Set(emitted.outputs);
  if (opts.outputs) {
    for (const o of opts.outputs) if (!outputNames.has(o.name)) throw new Error(`${what}: output '${o.name}' is not an output of the graph (${emitted.outputs.join(', ')})`);
  }
  for (const f of readFields(graphField.payload!, what)) {
    if (f.field === 11 && weights.has(stringField(f.payload!, 1, what) ?? '')) continue; // now an initializer
    if (f.field === 12 && opts.outputs) continue; // replaced below
    graphParts.push(f.raw);
  }
  for (const o of opts.outputs ?? []) {
    const vi = valueInfoProto(o).finish();
    graphParts.push(lenPrefix(12, vi.length), vi);
  }

  let weightBytes = 0;
  for (const t of weights.values()) weightBytes += t.data.byteLength;
  const limit = opts.inlineLimitBytes ?? PROTOBUF_LIMIT;
  // The graph, headers and tensor framing stay well under a MiB; weights dominate.
  const inlineTooBig = weightBytes + graphParts.reduce((s, p) => s + p.length, 0) + (1 << 20) > limit;
  const mode = opts.externalData ?? 'auto';
  if (mode === false && inlineTooBig) {
    throw new Error(`${file}: the weights take ${(weightBytes / 2 ** 30).toFixed(2)} GiB, too much for one ONNX file (limit ${(limit / 2 ** 30).toFixed(2)} GiB, protobuf's 2 GiB by default); export with external data (.onnx.data) instead`);
  }
  const external = mode === true || (mode === 'auto' && inlineTooBig);
  const dataFile = external ? `${file}.data` : null;

  // Initializer headers: everything but the raw bytes, which are streamed after them (or to the data file, in order).
  interface Init {
    header: Uint8Array;
    tensor: HostTensor;
  }
  const inits: Init[] = [];
  let dataOffset = 0;
  for (const [name, t] of weights) {
    const w = new PbWriter();
    for (const d of t.shape) w.int(1, d);
    w.int(2, onnxType(t.dtype));
    w.string(8, name);
    if (external) {
      const entry = (k: string, v: string) => new PbWriter().string(1, k).string(2, v);
      w.message(13, entry('location', path.basename(dataFile!)));
      w.message(13, entry('offset', String(dataOffset)));
      w.message(13, entry('length', String(t.data.byteLength)));
      w.int(14, 1); // data_location = EXTERNAL
      dataOffset += Math.ceil(t.data.byteLength / EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
    }
    inits.push({ header: w.finish(), tensor: t });
  }
  const rawPrefix = varintBytes((9 << 3) | 2);
  const initSize = (i: Init): number => {
    const body = external ? i.header.length : i.header.length + rawPrefix.length + varintBytes(i.tensor.data.byteLength).length + i.tensor.data.byteLength;
    return lenPrefix(5, body).length + body;
  };
  const graphLen = graphParts.reduce((s, p) => s + p.length, 0) + inits.reduce((s, i) => s + initSize(i), 0);

  const irVersion = irVersionFor(opset);
  const head = new PbWriter().int(1, irVersion).string(2, 'uniter-ts');
  if (opts.producerVersion) head.string(3, opts.producerVersion);
  if (opts.docString) head.string(6, opts.docString);
  const tail = new PbWriter().message(8, new PbWriter().string(1, '').int(2, opset));
  // Imports of other operator domains (com.microsoft for int8 graphs) are kept as emitted.
  for (const f of top) if (f.field === 8 && f.payload && (stringField(f.payload, 1, what) ?? '') !== '') tail.bytes(8, f.payload);
  for (const [k, v] of Object.entries(opts.metadata ?? {})) tail.message(14, new PbWriter().string(1, k).string(2, v));

  const reporter = (f: string, total: number) => {
    const phase = `writing ${path.basename(f)}`;
    opts.onProgress?.(phase, 0, total, 'bytes');
    return opts.onProgress && ((written: number) => opts.onProgress!(phase, written, total, 'bytes'));
  };
  if (external) {
    withAtomicStream(dataFile!, (s) => {
      for (const i of inits) {
        const bytes = tensorBytes(i.tensor);
        s.write(bytes);
        const padded = Math.ceil(bytes.length / EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
        if (padded > bytes.length) s.write(new Uint8Array(padded - bytes.length));
      }
    }, reporter(dataFile!, dataOffset));
  }
  const headBytes = head.finish();
  const tailBytes = tail.finish();
  const graphHead = lenPrefix(7, graphLen);
  const fileBytes = withAtomicStream(file, (s) => {
    s.write(headBytes);
    s.write(graphHead);
    for (const p of graphParts) s.write(p);
    for (const i of inits) {
      if (external) {
        s.write(lenPrefix(5, i.header.length));
        s.write(i.header);
        continue;
      }
      const bytes = tensorBytes(i.tensor);
      const lenBytes = varintBytes(bytes.length);
      s.write(lenPrefix(5, i.header.length + rawPrefix.length + lenBytes.length + bytes.length));
      s.write(i.header);
      s.write(rawPrefix);
      s.write(lenBytes);
      s.write(bytes);
    }
    s.write(tailBytes);
    return s.written;
  }, reporter(file, headBytes.length + graphHead.length + graphLen + tailBytes.length));
  return { file, dataFile, fileBytes, weightBytes, weightCount: weights.size, opset, irVersion };
}
