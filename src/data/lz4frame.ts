/**
 * LZ4 frame format (the `lz4.frame` module of python-lz4, which compresses every txt_db value).
 *
 * Written frames look like python-lz4's defaults: independent blocks of at most 64 KiB, the
 * content size stored in the header (FLG 0x68, BD 0x40), no checksums but the header one.
 * Reading accepts any single frame python-lz4 can write: linked or independent blocks, block and
 * content checksums (both verified), with or without the content size. Every length and match
 * offset is bounds-checked, so corrupt input gives an error instead of garbage.
 */

const MAGIC = 0x184d2204;
const MIN_MATCH = 4;
/** The last 5 bytes of a block are always literals, and no match starts in the last 12. */
const LAST_LITERALS = 5;
const MF_LIMIT = 12;
const MAX_OFFSET = 65535;
const BLOCK_SIZE = 64 * 1024;
const BLOCK_SIZE_ID = 4;
const BLOCK_SIZES: Record<number, number> = { 4: 64 * 1024, 5: 256 * 1024, 6: 1024 * 1024, 7: 4 * 1024 * 1024 };

const FLG_VERSION = 0x40;
const FLG_BLOCK_INDEPENDENT = 0x20;
const FLG_BLOCK_CHECKSUM = 0x10;
const FLG_CONTENT_SIZE = 0x08;
const FLG_CONTENT_CHECKSUM = 0x04;
const FLG_DICT_ID = 0x01;

export class Lz4Error extends Error {}

// ---------------------------------------------------------------------------------------------
// xxHash32 (frame header and optional checksums)

const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;
const P4 = 0x27d4eb2f;
const P5 = 0x165667b1;

const rotl = (x: number, r: number): number => (x << r) | (x >>> (32 - r));
const u32 = (b: Uint8Array, i: number): number => (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0;

export function xxh32(data: Uint8Array, seed = 0, start = 0, end = data.length): number {
  let i = start;
  let h: number;
  if (end - start >= 16) {
    let v1 = (seed + P1 + P2) | 0;
    let v2 = (seed + P2) | 0;
    let v3 = seed | 0;
    let v4 = (seed - P1) | 0;
    for (; i + 16 <= end; i += 16) {
      v1 = Math.imul(rotl((v1 + Math.imul(u32(data, i), P2)) | 0, 13), P1);
      v2 = Math.imul(rotl((v2 + Math.imul(u32(data, i + 4), P2)) | 0, 13), P1);
      v3 = Math.imul(rotl((v3 + Math.imul(u32(data, i + 8), P2)) | 0, 13), P1);
      v4 = Math.imul(rotl((v4 + Math.imul(u32(data, i + 12), P2)) | 0, 13), P1);
    }
    h = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) | 0;
  } else {
    h = (seed + P5) | 0;
  }
  h = (h + (end - start)) | 0;
  for (; i + 4 <= end; i += 4) h = Math.imul(rotl((h + Math.imul(u32(data, i), P3)) | 0, 17), P4);
  for (; i < end; i++) h = Math.imul(rotl((h + Math.imul(data[i], P5)) | 0, 11), P1);
  h = Math.imul(h ^ (h >>> 15), P2);
  h = Math.imul(h ^ (h >>> 13), P3);
  return (h ^ (h >>> 16)) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// LZ4 block codec

const HASH_BITS = 16;
const hashTable = new Int32Array(1 << HASH_BITS);

/** Compress one block; returns null when the result would not be smaller than the input. */
export function compressBlock(src: Uint8Array, start = 0, end = src.length): Uint8Array | null {
  const n = end - start;
  const out = new Uint8Array(n + Math.ceil(n / 255) + 16);
  let op = 0;
  let anchor = start;
  const emit = (litEnd: number, offset: number, matchLen: number): void => {
    const lit = litEnd - anchor;
    const ml = matchLen - MIN_MATCH;
    out[op++] = (Math.min(lit, 15) << 4) | (matchLen ? Math.min(ml, 15) : 0);
    if (lit >= 15) {
      let r = lit - 15;
      for (; r >= 255; r -= 255) out[op++] = 255;
      out[op++] = r;
    }
    out.set(src.subarray(anchor, litEnd), op);
    op += lit;
    if (!matchLen) return;
    out[op++] = offset & 0xff;
    out[op++] = offset >>> 8;
    if (ml >= 15) {
      let r = ml - 15;
      for (; r >= 255; r -= 255) out[op++] = 255;
      out[op++] = r;
    }
  };
  if (n > MF_LIMIT) {
    hashTable.fill(-1);
    const matchStartLimit = end - MF_LIMIT;
    const matchEndLimit = end - LAST_LITERALS;
    let i = start;
    let misses = 0;
    while (i <= matchStartLimit) {
      const seq = u32(src, i);
      const h = Math.imul(seq, 2654435761) >>> (32 - HASH_BITS);
      const ref = hashTable[h];
      hashTable[h] = i;
      if (ref >= start && i - ref <= MAX_OFFSET && u32(src, ref) === seq) {
        let len = MIN_MATCH;
        while (i + len < matchEndLimit && src[ref + len] === src[i + len]) len++;
        emit(i, i - ref, len);
        i += len;
        anchor = i;
        misses = 0;
      } else {
        // Skip faster through data that does not compress.
        i += 1 + (misses++ >> 6);
      }
    }
  }
  emit(end, 0, 0);
  return op < n ? out.subarray(0, op) : null;
}

/** Decode one block into `dst` at `dstPos` (earlier bytes of `dst` may be referenced); returns the new end. */
export function decompressBlock(src: Uint8Array, start: number, end: number, dst: Uint8Array, dstPos: number, dstFloor = 0): number {
  let ip = start;
  let op = dstPos;
  const bad = (why: string): never => {
    throw new Lz4Error(`corrupt LZ4 block at input byte ${ip}: ${why}`);
  };
  while (ip < end) {
    const token = src[ip++];
    let lit = token >>> 4;
    if (lit === 15) {
      let b: number;
      do {
        if (ip >= end) bad('literal length runs past the block');
        b = src[ip++];
        lit += b;
      } while (b === 255);
    }
    if (ip + lit > end) bad(`${lit} literals run past the block`);
    if (op + lit > dst.length) bad(`output exceeds ${dst.length} bytes`);
    dst.set(src.subarray(ip, ip + lit), op);
    ip += lit;
    op += lit;
    if (ip >= end) break; // the last sequence has literals only
    if (ip + 2 > end) bad('match offset runs past the block');
    const offset = src[ip] | (src[ip + 1] << 8);
    ip += 2;
    if (offset === 0 || op - offset < dstFloor) bad(`match offset ${offset} points before the start of the data`);
    let len = (token & 15) + MIN_MATCH;
    if ((token & 15) === 15) {
      let b: number;
      do {
        if (ip >= end) bad('match length runs past the block');
        b = src[ip++];
        len += b;
      } while (b === 255);
    }
    if (op + len > dst.length) bad(`output exceeds ${dst.length} bytes`);
    let from = op - offset;
    if (offset >= len) {
      dst.copyWithin(op, from, from + len);
      op += len;
    } else {
      // Overlapping copy repeats the last `offset` bytes.
      for (let k = 0; k < len; k++) dst[op++] = dst[from++];
    }
  }
  return op;
}

// ---------------------------------------------------------------------------------------------
// Frames

/** Compress `data` into one LZ4 frame with the content size in its header. */
export function lz4FrameCompress(data: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  const header = new Uint8Array(15);
  const dv = new DataView(header.buffer);
  dv.setUint32(0, MAGIC, true);
  header[4] = FLG_VERSION | FLG_BLOCK_INDEPENDENT | FLG_CONTENT_SIZE;
  header[5] = BLOCK_SIZE_ID << 4;
  dv.setBigUint64(6, BigInt(data.length), true);
  header[14] = (xxh32(header, 0, 4, 14) >>> 8) & 0xff;
  parts.push(header);
  for (let pos = 0; pos < data.length; pos += BLOCK_SIZE) {
    const end = Math.min(pos + BLOCK_SIZE, data.length);
    const packed = compressBlock(data, pos, end);
    const size = new Uint8Array(4);
    const sdv = new DataView(size.buffer);
    if (packed) {
      sdv.setUint32(0, packed.length, true);
      parts.push(size, packed);
    } else {
      sdv.setUint32(0, (0x80000000 | (end - pos)) >>> 0, true);
      parts.push(size, data.subarray(pos, end));
    }
  }
  parts.push(new Uint8Array(4)); // end mark
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Decompress one LZ4 frame. */
export function lz4FrameDecompress(frame: Uint8Array): Uint8Array {
  const fail = (why: string): never => {
    throw new Lz4Error(`not a valid LZ4 frame: ${why}`);
  };
  if (frame.length < 7) fail(`${frame.length} bytes is too short`);
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const magic = dv.getUint32(0, true);
  if (magic !== MAGIC) fail(`magic 0x${magic.toString(16).padStart(8, '0')}, expected 0x184d2204 (bytes 04 22 4d 18)`);
  const flg = frame[4];
  const bd = frame[5];
  if ((flg & 0xc0) !== FLG_VERSION) fail(`frame version ${flg >>> 6}, expected 1`);
  if (flg & 0x02 || bd & 0x8f) fail('reserved header bits are set');
  if (flg & FLG_DICT_ID) fail('frames that need an external dictionary are not supported');
  const maxBlock = BLOCK_SIZES[(bd >>> 4) & 7];
  if (!maxBlock) fail(`block size id ${(bd >>> 4) & 7} is invalid`);
  let p = 6;
  let contentSize = -1;
  if (flg & FLG_CONTENT_SIZE) {
    if (frame.length < p + 9) fail('truncated header');
    const cs = dv.getBigUint64(p, true);
    if (cs > BigInt(2 ** 31)) fail(`content size ${cs} is too large`);
    contentSize = Number(cs);
    p += 8;
  }
  const hc = (xxh32(frame, 0, 4, p) >>> 8) & 0xff;
  if (frame[p] !== hc) fail(`header checksum 0x${frame[p].toString(16)} does not match 0x${hc.toString(16)}`);
  p += 1;
  const blockChecksum = (flg & FLG_BLOCK_CHECKSUM) !== 0;

  // Without a content size, bound the output by scanning the block sizes first.
  let capacity = contentSize;
  if (capacity < 0) {
    capacity = 0;
    for (let q = p; ; ) {
      if (q + 4 > frame.length) fail('truncated block header');
      const raw = dv.getUint32(q, true);
      if (raw === 0) break;
      const size = raw & 0x7fffffff;
      capacity += raw & 0x80000000 ? size : maxBlock;
      q += 4 + size + (blockChecksum ? 4 : 0);
    }
  }
  const out = new Uint8Array(capacity);
  let op = 0;
  for (;;) {
    if (p + 4 > frame.length) fail('truncated block header (no end mark)');
    const raw = dv.getUint32(p, true);
    p += 4;
    if (raw === 0) break;
    const size = raw & 0x7fffffff;
    if (size > maxBlock) fail(`block of ${size} bytes exceeds the declared maximum ${maxBlock}`);
    if (p + size + (blockChecksum ? 4 : 0) > frame.length) fail('truncated block');
    if (blockChecksum && dv.getUint32(p + size, true) !== xxh32(frame, 0, p, p + size)) fail('block checksum mismatch');
    const blockStart = op;
    try {
      if (raw & 0x80000000) {
        if (op + size > out.length) throw new Lz4Error(`output exceeds ${out.length} bytes`);
        out.set(frame.subarray(p, p + size), op);
        op += size;
      } else {
        op = decompressBlock(frame, p, p + size, out, op, flg & FLG_BLOCK_INDEPENDENT ? blockStart : 0);
      }
    } catch (e) {
      fail((e as Error).message);
    }
    if (op - blockStart > maxBlock) fail(`block decodes to ${op - blockStart} bytes, more than the declared maximum ${maxBlock}`);
    p += size + (blockChecksum ? 4 : 0);
  }
  if (flg & FLG_CONTENT_CHECKSUM) {
    if (p + 4 > frame.length) fail('truncated content checksum');
    if (dv.getUint32(p, true) !== xxh32(out, 0, 0, op)) fail('content checksum mismatch');
    p += 4;
  }
  if (contentSize >= 0 && op !== contentSize) fail(`decoded ${op} bytes, header says ${contentSize}`);
  return op === out.length ? out : out.slice(0, op);
}
