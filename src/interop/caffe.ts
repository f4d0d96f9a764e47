/**
 * Caffe model files, read without Caffe: the binary `.caffemodel` (a protobuf `NetParameter`
 * holding each layer's learned blobs) and the text-format `.prototxt` that describes the network
 * (layer order, types and parameters). Only what weight conversion needs is decoded; everything
 * else in the files is skipped. Both readers are strict: malformed input gives a CaffeError that
 * names the file and what is wrong, never a crash or a hang.
 */
import { PbField, PbReader, ProtobufError, readPackedVarints } from '../engine/protobuf.js';
import type { PhaseProgress } from '../util/progress.js';

export class CaffeError extends Error {}

export interface CaffeBlob {
  /** The blob's shape: BlobShape dims, or the legacy (num, channels, height, width). */
  shape: number[];
  data: Float32Array;
  /** True when the file stored double_data (rounded to float32 here). */
  fromDouble: boolean;
}

export interface CaffeLayer {
  name: string;
  /** Layer type ("Convolution", "BatchNorm", ...); V1 enum types are given their modern name. */
  type: string;
  blobs: CaffeBlob[];
}

export interface CaffeModel {
  file: string;
  name: string;
  /** 'layer' = NetParameter.layer (field 100); 'v1' = the legacy NetParameter.layers (field 2). */
  format: 'layer' | 'v1';
  layers: CaffeLayer[];
}

/** V1LayerParameter.LayerType values (caffe.proto) with the names the modern format uses. */
const V1_TYPES: Record<number, string> = {
  0: 'None', 1: 'Accuracy', 2: 'BNLL', 3: 'Concat', 4: 'Convolution', 5: 'Data', 6: 'Dropout', 7: 'EuclideanLoss',
  8: 'Flatten', 9: 'HDF5Data', 10: 'HDF5Output', 11: 'Im2col', 12: 'ImageData', 13: 'InfogainLoss', 14: 'InnerProduct',
  15: 'LRN', 16: 'MultinomialLogisticLoss', 17: 'Pooling', 18: 'ReLU', 19: 'Sigmoid', 20: 'Softmax', 21: 'SoftmaxWithLoss',
  22: 'Split', 23: 'TanH', 24: 'WindowData', 25: 'Eltwise', 26: 'Power', 27: 'SigmoidCrossEntropyLoss', 28: 'HingeLoss',
  29: 'MemoryData', 30: 'ArgMax', 31: 'Threshold', 32: 'DummyData', 33: 'Slice', 34: 'MVN', 35: 'AbsVal', 36: 'Silence',
  37: 'ContrastiveLoss', 38: 'Exp', 39: 'Deconvolution',
};

/** The modern name of a V1 prototxt type identifier (CONVOLUTION -> Convolution). */
export function v1TypeName(ident: string): string | undefined {
  const key = ident.toLowerCase().replace(/_/g, '');
  return Object.values(V1_TYPES).find((t) => t.toLowerCase() === key);
}

const WIRE_NAMES = ['varint', '64-bit', 'length-delimited', 'group start', 'group end', '32-bit'];

function expectWire(f: PbField, wires: number[], what: string, where: string): void {
  if (!wires.includes(f.wire)) {
    throw new CaffeError(`${where}: ${what} (field ${f.field}) has wire type ${WIRE_NAMES[f.wire] ?? f.wire} at byte ${f.offset}, expected ${wires.map((w) => WIRE_NAMES[w]).join(' or ')}`);
  }
}

const decoder = new TextDecoder('utf-8', { fatal: true });

function utf8(f: PbField, what: string, where: string): string {
  expectWire(f, [2], what, where);
  try {
    return decoder.decode(f.value as Uint8Array);
  } catch {
    throw new CaffeError(`${where}: ${what} at byte ${f.offset} is not valid UTF-8`);
  }
}

function dimValue(v: bigint, what: string, where: string): number {
  // int32/int64 dims arrive as unsigned 64-bit: anything past 2^31 is negative or absurd.
  if (v > 0x7fffffffn) throw new CaffeError(`${where}: ${what} ${BigInt.asIntN(64, v)} is not a valid dimension`);
  return Number(v);
}

/** Float32 values of a packed (little-endian) byte run; copied so the result is aligned. */
function floatsOf(bytes: Uint8Array, width: 4 | 8, what: string, at: number, where: string): Float32Array {
  if (bytes.length % width !== 0) throw new CaffeError(`${where}: packed ${what} at byte ${at} has ${bytes.length} bytes, not a multiple of ${width}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.length / width;
  const out = new Float32Array(n);
  if (width === 4) for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
  else for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
  return out;
}

function concatFloats(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function parseBlob(bytes: Uint8Array, base: number, where: string): CaffeBlob {
  const legacy: Array<number | undefined> = [undefined, undefined, undefined, undefined];
  let shape: number[] | undefined;
  const floats: Float32Array[] = [];
  const doubles: Float32Array[] = [];
  for (const f of new PbReader(bytes, base).fields()) {
    if (f.field >= 1 && f.field <= 4) {
      expectWire(f, [0], 'legacy dimension', where);
      legacy[f.field - 1] = dimValue(f.value as bigint, ['num', 'channels', 'height', 'width'][f.field - 1], where);
    } else if (f.field === 5) {
      expectWire(f, [2, 5], 'data', where);
      floats.push(floatsOf(f.value as Uint8Array, 4, 'data', f.offset, where));
    } else if (f.field === 8) {
      expectWire(f, [1, 2], 'double_data', where);
      doubles.push(floatsOf(f.value as Uint8Array, 8, 'double_data', f.offset, where));
    } else if (f.field === 7) {
      expectWire(f, [2], 'shape', where);
      shape = shape ?? [];
      for (const d of new PbReader(f.value as Uint8Array, f.offset).fields()) {
        if (d.field !== 1) continue;
        expectWire(d, [0, 2], 'shape.dim', where);
        const dims = d.wire === 0 ? [d.value] : readPackedVarints(d.value, d.offset);
        for (const v of dims) shape.push(dimValue(v, 'shape.dim', where));
      }
    }
    // diff (6), double_diff (9) and unknown fields hold nothing inference needs.
  }
  if (floats.length && doubles.length) throw new CaffeError(`${where}: holds both data and double_data`);
  const data = concatFloats(doubles.length ? doubles : floats.length ? floats : [new Float32Array(0)]);
  if (shape === undefined) {
    shape = legacy.some((d) => d !== undefined) ? legacy.map((d) => d ?? 0) : [data.length];
  }
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== data.length) throw new CaffeError(`${where}: shape [${shape.join(', ')}] holds ${n} values but the blob has ${data.length}`);
  return { shape, data, fromDouble: doubles.length > 0 };
}

function parseLayer(bytes: Uint8Array, base: number, v1: boolean, index: number, file: string): CaffeLayer {
  const [nameField, typeField, blobField] = v1 ? [4, 5, 6] : [1, 2, 7];
  let where = `${file}: layer #${index}`;
  let name: string | undefined;
  let type = '';
  const blobBytes: PbField[] = [];
  for (const f of new PbReader(bytes, base).fields()) {
    if (f.field === nameField) {
      name = utf8(f, 'layer name', where);
      where = `${file}: layer '${name}'`;
    } else if (f.field === typeField) {
      if (v1) {
        expectWire(f, [0], 'layer type', where);
        const t = Number(f.value as bigint);
        type = V1_TYPES[t] ?? `V1 type ${t}`;
      } else type = utf8(f, 'layer type', where);
    } else if (f.field === blobField) {
      expectWire(f, [2], 'blob', where);
      blobBytes.push(f);
    }
  }
  if (name === undefined) throw new CaffeError(`${where} has no name`);
  const blobs = blobBytes.map((f, k) => parseBlob(f.value as Uint8Array, f.offset, `${where}, blob ${k}`));
  return { name, type, blobs };
}

/** Parse a binary `.caffemodel` (NetParameter); `onProgress` gets the bytes parsed, layer by layer (phase `parsing layers`). */
export function parseCaffemodel(bytes: Uint8Array, file: string, onProgress?: PhaseProgress): CaffeModel {
  if (bytes.length === 0) throw new CaffeError(`${file}: empty file (expected a binary Caffe NetParameter)`);
  let name = '';
  const layers: CaffeLayer[] = [];
  const v1Layers: CaffeLayer[] = [];
  try {
    for (const f of new PbReader(bytes).fields()) {
      if (f.field === 1) name = utf8(f, 'net name', file);
      else if (f.field === 100) {
        expectWire(f, [2], 'layer', file);
        layers.push(parseLayer(f.value as Uint8Array, f.offset, false, layers.length, file));
      } else if (f.field === 2) {
        expectWire(f, [2], 'layers (V1)', file);
        v1Layers.push(parseLayer(f.value as Uint8Array, f.offset, true, v1Layers.length, file));
      }
      if (f.field === 100 || f.field === 2) onProgress?.('parsing layers', f.offset + (f.value as Uint8Array).length, bytes.length, 'bytes');
    }
  } catch (e) {
    if (e instanceof ProtobufError) throw new CaffeError(`${file}: not a valid Caffe NetParameter: ${e.message}`);
    throw e;
  }
  if (layers.length && v1Layers.length) throw new CaffeError(`${file}: mixes the 'layer' and the legacy V1 'layers' fields`);
  if (!layers.length && !v1Layers.length) throw new CaffeError(`${file}: no layers found (is this a .caffemodel? a text prototxt is not a weights file)`);
  return { file, name, format: layers.length ? 'layer' : 'v1', layers: layers.length ? layers : v1Layers };
}

// ---------------------------------------------------------------------------------------------
// Text format (.prototxt)

export interface TextScalar {
  kind: 'string' | 'ident' | 'number';
  text: string;
  line: number;
}

export type TextValue = TextScalar | TextMessage;

/** A parsed text-format protobuf message: fields in file order, repeated keys allowed. */
export class TextMessage {
  readonly entries: Array<{ key: string; value: TextValue; line: number }> = [];

  constructor(
    readonly file: string,
    readonly line: number,
  ) {}

  all(key: string): TextValue[] {
    return this.entries.filter((e) => e.key === key).map((e) => e.value);
  }

  messages(key: string): TextMessage[] {
    return this.all(key).map((v) => {
      if (!(v instanceof TextMessage)) throw new CaffeError(`${this.file}:${v.line}: '${key}' must be a message { ... }`);
      return v;
    });
  }

  message(key: string): TextMessage | undefined {
    const m = this.messages(key);
    return m.length ? m[m.length - 1] : undefined;
  }

  private scalar(key: string): TextScalar | undefined {
    const v = this.all(key);
    if (!v.length) return undefined;
    const last = v[v.length - 1];
    if (last instanceof TextMessage) throw new CaffeError(`${this.file}:${last.line}: '${key}' must be a value, not a message`);
    return last;
  }

  strings(key: string): string[] {
    return this.all(key).map((v) => {
      if (v instanceof TextMessage || v.kind !== 'string') throw new CaffeError(`${this.file}:${v.line}: '${key}' must be a quoted string`);
      return v.text;
    });
  }

  str(key: string): string | undefined {
    const s = this.strings(key);
    return s.length ? s[s.length - 1] : undefined;
  }

  /** An enum or identifier value (pool: MAX), or a string. */
  word(key: string): string | undefined {
    const s = this.scalar(key);
    if (s && s.kind === 'number') throw new CaffeError(`${this.file}:${s.line}: '${key}' must be a name, got ${s.text}`);
    return s?.text;
  }

  nums(key: string): number[] {
    return this.all(key).map((v) => {
      const n = v instanceof TextMessage || v.kind !== 'number' ? NaN : Number(v.text);
      if (!Number.isFinite(n)) throw new CaffeError(`${this.file}:${v.line}: '${key}' must be a number`);
      return n;
    });
  }

  num(key: string): number | undefined {
    const n = this.nums(key);
    return n.length ? n[n.length - 1] : undefined;
  }

  bool(key: string): boolean | undefined {
    const s = this.scalar(key);
    if (!s) return undefined;
    if (s.kind === 'ident' && (s.text === 'true' || s.text === 'True' || s.text === 't')) return true;
    if (s.kind === 'ident' && (s.text === 'false' || s.text === 'False' || s.text === 'f')) return false;
    if (s.kind === 'number' && (s.text === '0' || s.text === '1')) return s.text === '1';
    throw new CaffeError(`${this.file}:${s.line}: '${key}' must be true or false, got ${s.text}`);
  }
}

interface Token {
  kind: 'string' | 'ident' | 'number' | 'punct';
  text: string;
  line: number;
}

function tokenize(text: string, file: string): Token[] {
  const out: Token[] = [];
  let line = 1;
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '\n') {
      line++;
      i++;
    } else if (c === ' ' || c === '\t' || c === '\r' || c === '\f' || c === '\v') i++;
    else if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++;
    } else if ('{}[]:,;<>'.includes(c)) {
      out.push({ kind: 'punct', text: c, line });
      i++;
    } else if (c === '"' || c === "'") {
      const startLine = line;
      let s = '';
      i++;
      for (;;) {
        if (i >= text.length || text[i] === '\n') throw new CaffeError(`${file}:${startLine}: unterminated string`);
        const d = text[i];
        if (d === c) {
          i++;
          break;
        }
        if (d === '\\') {
          const e = text[i + 1];
          if (e === undefined) throw new CaffeError(`${file}:${line}: unterminated string`);
          const simple: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', '"': '"', "'": "'", '0': '\0' };
          if (simple[e] === undefined) throw new CaffeError(`${file}:${line}: unsupported escape \\${e} in a string`);
          s += simple[e];
          i += 2;
        } else {
          s += d;
          i++;
        }
      }
      out.push({ kind: 'string', text: s, line: startLine });
    } else if (/[A-Za-z0-9_.+-]/.test(c)) {
      let j = i;
      while (j < text.length && /[A-Za-z0-9_.+-]/.test(text[j])) j++;
      const word = text.slice(i, j);
      const isNum = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[fF]?$/.test(word) || /^[+-]?(inf|infinity|nan)$/i.test(word);
      out.push({ kind: isNum ? 'number' : 'ident', text: isNum ? word.replace(/[fF]$/, '') : word, line });
      i = j;
    } else {
      throw new CaffeError(`${file}:${line}: unexpected character ${JSON.stringify(c)}`);
    }
  }
  return out;
}

/** Parse a text-format protobuf (`.prototxt`) into a generic message tree. */
export function parsePrototxt(text: string, file: string): TextMessage {
  const toks = tokenize(text, file);
  let p = 0;
  const peek = () => toks[p];
  const parseMessage = (msg: TextMessage, close: string | null): TextMessage => {
    for (;;) {
      const t = peek();
      if (t === undefined) {
        if (close !== null) throw new CaffeError(`${file}:${msg.line}: message opened here is never closed with '${close}'`);
        return msg;
      }
      if (t.kind === 'punct' && t.text === close) {
        p++;
        return msg;
      }
      if (t.kind !== 'ident') throw new CaffeError(`${file}:${t.line}: expected a field name, got '${t.text}'`);
      p++;
      let n = peek();
      let colon = false;
      if (n && n.kind === 'punct' && n.text === ':') {
        colon = true;
        p++;
        n = peek();
      }
      if (n === undefined) throw new CaffeError(`${file}:${t.line}: field '${t.text}' has no value`);
      if (n.kind === 'punct' && (n.text === '{' || n.text === '<')) {
        p++;
        const sub = parseMessage(new TextMessage(file, n.line), n.text === '{' ? '}' : '>');
        msg.entries.push({ key: t.text, value: sub, line: t.line });
      } else if (!colon) {
        throw new CaffeError(`${file}:${n.line}: expected ':' or '{' after '${t.text}'`);
      } else if (n.kind === 'punct' && n.text === '[') {
        p++;
        for (;;) {
          const v = peek();
          if (v === undefined) throw new CaffeError(`${file}:${n.line}: list opened here is never closed with ']'`);
          if (v.kind === 'punct' && v.text === ']') {
            p++;
            break;
          }
          if (v.kind === 'punct' && v.text === ',') {
            p++;
            continue;
          }
          if (v.kind === 'punct') throw new CaffeError(`${file}:${v.line}: unexpected '${v.text}' in the list of '${t.text}'`);
          p++;
          msg.entries.push({ key: t.text, value: { kind: v.kind, text: v.text, line: v.line }, line: v.line });
        }
      } else if (n.kind === 'punct') {
        throw new CaffeError(`${file}:${n.line}: expected a value for '${t.text}', got '${n.text}'`);
      } else {
        p++;
        let text = n.text;
        // Adjacent string literals concatenate, as in the protobuf text format.
        while (n.kind === 'string' && peek()?.kind === 'string') text += toks[p++].text;
        msg.entries.push({ key: t.text, value: { kind: n.kind, text, line: n.line }, line: t.line });
      }
      const sep = peek();
      if (sep && sep.kind === 'punct' && (sep.text === ',' || sep.text === ';')) p++;
    }
  };
  return parseMessage(new TextMessage(file, 1), null);
}

export interface PrototxtLayer {
  name: string;
  /** Modern type name ("Convolution"); V1 enum identifiers are translated. */
  type: string;
  bottoms: string[];
  tops: string[];
  /** The whole layer message, for its *_param sub-messages. */
  msg: TextMessage;
  line: number;
}

/** The layers of a network prototxt in file order (`layer { }` or the legacy `layers { }`). */
export function prototxtLayers(net: TextMessage): PrototxtLayer[] {
  const modern = net.messages('layer');
  const legacy = net.messages('layers');
  if (modern.length && legacy.length) throw new CaffeError(`${net.file}: mixes 'layer' and the legacy 'layers' blocks`);
  const list = modern.length ? modern : legacy;
  if (!list.length) throw new CaffeError(`${net.file}: no 'layer { ... }' blocks found (is this a network prototxt?)`);
  const seen = new Map<string, number>();
  return list.map((m) => {
    const name = m.str('name');
    if (name === undefined) throw new CaffeError(`${net.file}:${m.line}: layer has no name`);
    const rawType = m.word('type');
    if (rawType === undefined) throw new CaffeError(`${net.file}:${m.line}: layer '${name}' has no type`);
    const type = legacy.length ? (v1TypeName(rawType) ?? rawType) : rawType;
    const dup = seen.get(name);
    if (dup !== undefined) throw new CaffeError(`${net.file}:${m.line}: layer name '${name}' is used twice (first at line ${dup})`);
    seen.set(name, m.line);
    return { name, type, bottoms: m.strings('bottom'), tops: m.strings('top'), msg: m, line: m.line };
  });
}
