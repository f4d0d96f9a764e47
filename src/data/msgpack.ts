/**
 * MessagePack as Python's `msgpack.dumps(value, use_bin_type=True)` writes it and
 * `msgpack.loads(data, raw=False)` reads it: text is `str`, bytes are `bin`, integers take the
 * smallest encoding, other numbers are float64.
 *
 * Decoding turns every map into a plain object. Keys that are `bin` (msgpack-numpy writes its
 * array fields as `b'nd'`, `b'type'`, ...) become their UTF-8 text, integer keys their decimal
 * text, so both spellings of a key read the same.
 */

export type MsgpackValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | MsgpackValue[]
  | { [key: string]: MsgpackValue }
  | Map<string | Uint8Array, MsgpackValue>;

export class MsgpackError extends Error {}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

class Writer {
  buf = new Uint8Array(256);
  dv = new DataView(this.buf.buffer);
  pos = 0;

  reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.dv = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.reserve(1);
    this.buf[this.pos++] = v;
  }
  head(tag: number, bytes: 1 | 2 | 4, v: number): void {
    this.reserve(1 + bytes);
    this.buf[this.pos++] = tag;
    if (bytes === 1) this.dv.setUint8(this.pos, v);
    else if (bytes === 2) this.dv.setUint16(this.pos, v);
    else this.dv.setUint32(this.pos, v);
    this.pos += bytes;
  }
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

function writeInt(w: Writer, v: bigint): void {
  if (v >= 0n) {
    if (v < 128n) w.u8(Number(v));
    else if (v < 256n) w.head(0xcc, 1, Number(v));
    else if (v < 65536n) w.head(0xcd, 2, Number(v));
    else if (v < 4294967296n) w.head(0xce, 4, Number(v));
    else if (v < 18446744073709551616n) {
      w.reserve(9);
      w.buf[w.pos++] = 0xcf;
      w.dv.setBigUint64(w.pos, v);
      w.pos += 8;
    } else throw new MsgpackError(`integer ${v} does not fit in 64 bits`);
  } else if (v >= -32n) w.u8(Number(v) & 0xff);
  else if (v >= -128n) {
    w.reserve(2);
    w.buf[w.pos++] = 0xd0;
    w.dv.setInt8(w.pos++, Number(v));
  } else if (v >= -32768n) {
    w.reserve(3);
    w.buf[w.pos++] = 0xd1;
    w.dv.setInt16(w.pos, Number(v));
    w.pos += 2;
  } else if (v >= -2147483648n) {
    w.reserve(5);
    w.buf[w.pos++] = 0xd2;
    w.dv.setInt32(w.pos, Number(v));
    w.pos += 4;
  } else if (v >= -9223372036854775808n) {
    w.reserve(9);
    w.buf[w.pos++] = 0xd3;
    w.dv.setBigInt64(w.pos, v);
    w.pos += 8;
  } else throw new MsgpackError(`integer ${v} does not fit in 64 bits`);
}

function writeLength(w: Writer, n: number, fix: number, fixMax: number, t8: number, t16: number, t32: number): void {
  if (n < fixMax && fix >= 0) w.u8(fix | n);
  else if (n < 256 && t8 >= 0) w.head(t8, 1, n);
  else if (n < 65536) w.head(t16, 2, n);
  else w.head(t32, 4, n);
}

function writeValue(w: Writer, v: unknown, where: string, depth: number): void {
  if (depth > 512) throw new MsgpackError(`${where}: nesting deeper than 512 levels`);
  if (v === null) w.u8(0xc0);
  else if (v === false) w.u8(0xc2);
  else if (v === true) w.u8(0xc3);
  else if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) writeInt(w, BigInt(v));
    else {
      w.reserve(9);
      w.buf[w.pos++] = 0xcb;
      w.dv.setFloat64(w.pos, v);
      w.pos += 8;
    }
  } else if (typeof v === 'bigint') writeInt(w, v);
  else if (typeof v === 'string') {
    const b = textEncoder.encode(v);
    writeLength(w, b.length, 0xa0, 32, 0xd9, 0xda, 0xdb);
    w.bytes(b);
  } else if (v instanceof Uint8Array) {
    writeLength(w, v.length, -1, 0, 0xc4, 0xc5, 0xc6);
    w.bytes(v);
  } else if (Array.isArray(v)) {
    writeLength(w, v.length, 0x90, 16, -1, 0xdc, 0xdd);
    v.forEach((x, i) => writeValue(w, x, `${where}[${i}]`, depth + 1));
  } else if (v instanceof Map) {
    writeLength(w, v.size, 0x80, 16, -1, 0xde, 0xdf);
    for (const [k, x] of v) {
      if (typeof k !== 'string' && !(k instanceof Uint8Array)) throw new MsgpackError(`${where}: map key ${String(k)} must be a string or bytes`);
      writeValue(w, k, where, depth + 1);
      writeValue(w, x, `${where}.${typeof k === 'string' ? k : Buffer.from(k).toString('utf8')}`, depth + 1);
    }
  } else if (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    const entries = Object.entries(v as Record<string, unknown>);
    writeLength(w, entries.length, 0x80, 16, -1, 0xde, 0xdf);
    for (const [k, x] of entries) {
      writeValue(w, k, where, depth + 1);
      writeValue(w, x, `${where}.${k}`, depth + 1);
    }
  } else {
    const what = v === undefined ? 'undefined' : typeof v === 'object' ? (v as object).constructor?.name ?? 'object' : typeof v;
    throw new MsgpackError(`${where}: cannot encode ${what} (expected null, boolean, number, bigint, string, bytes, array or plain object)`);
  }
}

/** Encode like Python `msgpack.dumps(value, use_bin_type=True)`. `where` names the value in errors. */
export function packMsgpack(value: unknown, where = 'value'): Uint8Array {
  const w = new Writer();
  writeValue(w, value, where, 0);
  return w.buf.slice(0, w.pos);
}

class Reader {
  pos = 0;
  readonly dv: DataView;
  constructor(readonly buf: Uint8Array) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  need(n: number): void {
    if (this.pos + n > this.buf.length) throw new MsgpackError(`truncated msgpack data: need ${n} more bytes at offset ${this.pos} of ${this.buf.length}`);
  }
  u8(): number {
    this.need(1);
    return this.buf[this.pos++];
  }
  u16(): number {
    this.need(2);
    const v = this.dv.getUint16(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.dv.getUint32(this.pos);
    this.pos += 4;
    return v;
  }
  take(n: number): Uint8Array {
    this.need(n);
    const b = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
}

function int64(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function readStr(r: Reader, n: number): string {
  const b = r.take(n);
  try {
    return textDecoder.decode(b);
  } catch {
    throw new MsgpackError(`invalid UTF-8 in a msgpack string at offset ${r.pos - n}`);
  }
}

function readMap(r: Reader, n: number, depth: number): Record<string, MsgpackValue> {
  const out: Record<string, MsgpackValue> = {};
  for (let i = 0; i < n; i++) {
    const k = readValue(r, depth + 1);
    let key: string;
    if (typeof k === 'string') key = k;
    else if (k instanceof Uint8Array) key = Buffer.from(k).toString('utf8');
    else if (typeof k === 'number' || typeof k === 'bigint' || typeof k === 'boolean' || k === null) key = String(k);
    else throw new MsgpackError(`unsupported msgpack map key of type ${Array.isArray(k) ? 'array' : typeof k} at offset ${r.pos}`);
    // defineProperty keeps a key such as "__proto__" an ordinary own property.
    Object.defineProperty(out, key, { value: readValue(r, depth + 1), enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function readValue(r: Reader, depth: number): MsgpackValue {
  if (depth > 512) throw new MsgpackError('msgpack data nested deeper than 512 levels');
  const t = r.u8();
  if (t <= 0x7f) return t;
  if (t >= 0xe0) return t - 256;
  if ((t & 0xf0) === 0x80) return readMap(r, t & 0x0f, depth);
  if ((t & 0xf0) === 0x90) return readArray(r, t & 0x0f, depth);
  if ((t & 0xe0) === 0xa0) return readStr(r, t & 0x1f);
  switch (t) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
      return r.take(r.u8());
    case 0xc5:
      return r.take(r.u16());
    case 0xc6:
      return r.take(r.u32());
    case 0xca: {
      r.need(4);
      const v = r.dv.getFloat32(r.pos);
      r.pos += 4;
      return v;
    }
    case 0xcb: {
      r.need(8);
      const v = r.dv.getFloat64(r.pos);
      r.pos += 8;
      return v;
    }
    case 0xcc:
      return r.u8();
    case 0xcd:
      return r.u16();
    case 0xce:
      return r.u32();
    case 0xcf: {
      r.need(8);
      const v = r.dv.getBigUint64(r.pos);
      r.pos += 8;
      return int64(v);
    }
    case 0xd0: {
      r.need(1);
      return r.dv.getInt8(r.pos++);
    }
    case 0xd1: {
      r.need(2);
      const v = r.dv.getInt16(r.pos);
      r.pos += 2;
      return v;
    }
    case 0xd2: {
      r.need(4);
      const v = r.dv.getInt32(r.pos);
      r.pos += 4;
      return v;
    }
    case 0xd3: {
      r.need(8);
      const v = r.dv.getBigInt64(r.pos);
      r.pos += 8;
      return int64(v);
    }
    case 0xd9:
      return readStr(r, r.u8());
    case 0xda:
      return readStr(r, r.u16());
    case 0xdb:
      return readStr(r, r.u32());
    case 0xdc:
      return readArray(r, r.u16(), depth);
    case 0xdd:
      return readArray(r, r.u32(), depth);
    case 0xde:
      return readMap(r, r.u16(), depth);
    case 0xdf:
      return readMap(r, r.u32(), depth);
    default:
      if (t === 0xc1) throw new MsgpackError(`invalid msgpack type byte 0xc1 at offset ${r.pos - 1}`);
      throw new MsgpackError(`msgpack extension types are not supported (type byte 0x${t.toString(16)} at offset ${r.pos - 1})`);
  }
}

function readArray(r: Reader, n: number, depth: number): MsgpackValue[] {
  // Each element takes at least one byte: reject absurd lengths before allocating.
  r.need(n);
  const out = new Array<MsgpackValue>(n);
  for (let i = 0; i < n; i++) out[i] = readValue(r, depth + 1);
  return out;
}

/** Decode exactly one msgpack value; trailing bytes are an error. */
export function unpackMsgpack(data: Uint8Array): MsgpackValue {
  const r = new Reader(data);
  const v = readValue(r, 0);
  if (r.pos !== data.length) throw new MsgpackError(`${data.length - r.pos} trailing bytes after the msgpack value`);
  return v;
}
