/**
 * A minimal PNG encoder for tests: exact control over bit depth, colour type and the colour of
 * transparent pixels (an encoder that premultiplies or optimises would hide what a decoder does).
 * Filter 0 on every row, one zlib stream, no ancillary chunks unless given.
 */
import * as zlib from 'node:zlib';
import { crc32 } from '../../src/interop/torch-writer.js';


function chunk(type: string, body: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + body.length);
  out.writeUInt32BE(body.length, 0);
  out.write(type, 4, 'latin1');
  Buffer.from(body).copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + body.length)), 8 + body.length);
  return out;
}

const COLOUR_TYPE: Record<number, number> = { 1: 0, 2: 4, 3: 2, 4: 6 };

export interface PngSpec {
  width: number;
  height: number;
  /** 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA. */
  channels: 1 | 2 | 3 | 4;
  /** Samples, row-major, interleaved; 16-bit samples as numbers 0..65535. */
  data: ArrayLike<number>;
  depth?: 8 | 16;
  /** Extra chunks placed before IDAT (e.g. eXIf). */
  extra?: Array<{ type: string; body: Uint8Array }>;
}

export function encodePng(spec: PngSpec): Buffer {
  const depth = spec.depth ?? 8;
  const bytesPer = depth / 8;
  const { width, height, channels } = spec;
  if (spec.data.length !== width * height * channels) throw new Error(`encodePng: ${spec.data.length} samples for ${width}x${height}x${channels}`);
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = depth;
  ihdr[9] = COLOUR_TYPE[channels];
  const rowBytes = width * channels * bytesPer;
  const raw = Buffer.alloc(height * (1 + rowBytes));
  for (let y = 0; y < height; y++) {
    for (let i = 0; i < width * channels; i++) {
      const v = spec.data[y * width * channels + i];
      const at = y * (1 + rowBytes) + 1 + i * bytesPer;
      if (depth === 16) raw.writeUInt16BE(v, at);
      else raw[at] = v;
    }
  }
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const extra = (spec.extra ?? []).map((c) => chunk(c.type, c.body));
  return Buffer.concat([sig, chunk('IHDR', ihdr), ...extra, chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', new Uint8Array(0))]);
}

/** A PNG whose header claims width x height but whose pixel data is absent (a header-only probe). */
export function pngHeaderOnly(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([sig, chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(Buffer.alloc(64))), chunk('IEND', new Uint8Array(0))]);
}
