/** A minimal protobuf writer: just what the ONNX model format needs. */
export class PbWriter {
  private chunks: Uint8Array[] = [];
  private len = 0;

  private push(b: Uint8Array): void {
    this.chunks.push(b);
    this.len += b.length;
  }

  private varint(v: number | bigint): void {
    let x = BigInt.asUintN(64, BigInt(v));
    const out: number[] = [];
    while (x >= 0x80n) {
      out.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    out.push(Number(x));
    this.push(Uint8Array.from(out));
  }

  private key(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  int(field: number, v: number | bigint): this {
    this.key(field, 0);
    this.varint(v);
    return this;
  }

  float(field: number, v: number): this {
    this.key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.push(b);
    return this;
  }

  bytes(field: number, b: Uint8Array): this {
    this.key(field, 2);
    this.varint(b.length);
    this.push(b);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  message(field: number, w: PbWriter): this {
    return this.bytes(field, w.finish());
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.len);
    let o = 0;
    for (const c of this.chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}

export class ProtobufError extends Error {}

/** One field of a message as it sits on the wire. */
export type PbField =
  | { field: number; wire: 0; value: bigint; offset: number }
  | { field: number; wire: 1; value: Uint8Array; offset: number }
  | { field: number; wire: 2; value: Uint8Array; offset: number }
  | { field: number; wire: 5; value: Uint8Array; offset: number };

/**
 * A minimal, strict protobuf reader: walks the fields of one message without a schema. Every
 * read is bounds-checked and every malformed input (truncation, over-long varints, group or
 * unknown wire types, lengths past the end) throws a ProtobufError naming the byte offset, so
 * untrusted files can never crash or hang the caller. Offsets are relative to the whole file
 * when `base` is given for nested messages.
 */
export class PbReader {
  constructor(
    private readonly buf: Uint8Array,
    private readonly base = 0,
  ) {}

  private varint(pos: { p: number }): bigint {
    return readVarint(this.buf, pos, this.base);
  }

  /** Every field of the message, in wire order. */
  *fields(): Generator<PbField> {
    const pos = { p: 0 };
    while (pos.p < this.buf.length) {
      const start = pos.p;
      const key = this.varint(pos);
      const field = Number(key >> 3n);
      const wire = Number(key & 7n);
      if (field === 0 || key >> 3n > 0x1fffffffn) throw new ProtobufError(`invalid field number ${key >> 3n} at byte ${this.base + start}`);
      const offset = this.base + pos.p;
      if (wire === 0) {
        yield { field, wire, value: this.varint(pos), offset };
      } else if (wire === 1 || wire === 5) {
        const n = wire === 1 ? 8 : 4;
        if (pos.p + n > this.buf.length) throw new ProtobufError(`truncated ${n}-byte value of field ${field} at byte ${offset}`);
        yield { field, wire, value: this.buf.subarray(pos.p, pos.p + n), offset };
        pos.p += n;
      } else if (wire === 2) {
        const len = this.varint(pos);
        const at = this.base + pos.p;
        if (len > BigInt(this.buf.length - pos.p)) throw new ProtobufError(`field ${field} at byte ${at} declares ${len} bytes but only ${this.buf.length - pos.p} remain`);
        const end = pos.p + Number(len);
        yield { field, wire, value: this.buf.subarray(pos.p, end), offset: at };
        pos.p = end;
      } else {
        throw new ProtobufError(`unsupported wire type ${wire} (field ${field}) at byte ${this.base + start}`);
      }
    }
  }
}

function readVarint(buf: Uint8Array, pos: { p: number }, base: number): bigint {
  const start = pos.p;
  let result = 0n;
  for (let i = 0; i < 10; i++) {
    if (pos.p >= buf.length) throw new ProtobufError(`truncated varint at byte ${base + start}`);
    const b = buf[pos.p++];
    // The tenth byte may only carry the 64th bit.
    if (i === 9 && b > 1) throw new ProtobufError(`varint longer than 64 bits at byte ${base + start}`);
    result |= BigInt(b & 0x7f) << BigInt(7 * i);
    if ((b & 0x80) === 0) return result;
  }
  throw new ProtobufError(`varint longer than 10 bytes at byte ${base + start}`);
}

/** The varints of a packed repeated field. */
export function readPackedVarints(bytes: Uint8Array, base = 0): bigint[] {
  const out: bigint[] = [];
  const pos = { p: 0 };
  while (pos.p < bytes.length) out.push(readVarint(bytes, pos, base));
  return out;
}
