/**
 * Test images of the extraction benchmark: synthetic RGB pictures (smooth gradients + filled
 * rectangles and ellipses, from a seed) and a minimal safetensors container of U8 `<name>/rgb`
 * [H, W, 3] tensors that both sides (our detector and reference.py) read.
 */
import * as fs from 'node:fs';

export interface RgbImageData {
  width: number;
  height: number;
  data: Uint8Array;
}

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function synthImage(height: number, width: number, seed: number): RgbImageData {
  const r = rng(seed);
  const u = (lo: number, hi: number): number => lo + (hi - lo) * r();
  const img = new Float32Array(height * width * 3);
  for (let c = 0; c < 3; c++) {
    const [a, b, d, e, fx, fy, ph] = [u(40, 200), u(-80, 80), u(-80, 80), u(5, 30), u(1, 4), u(1, 4), u(0, 6.3)];
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const uu = x / width, vv = y / height;
        img[(y * width + x) * 3 + c] = a + b * uu + d * vv + e * Math.sin(2 * Math.PI * (fx * uu + fy * vv) + ph);
      }
    }
  }
  const shapes = 10 + Math.floor(r() * 8);
  for (let s = 0; s < shapes; s++) {
    const col = [u(0, 255), u(0, 255), u(0, 255)];
    const cy = u(0, height), cx = u(0, width), hh = u(0.05, 0.3) * height, ww = u(0.05, 0.3) * width;
    const rect = r() < 0.5;
    for (let y = Math.max(0, Math.floor(cy - hh / 2)); y < Math.min(height, Math.ceil(cy + hh / 2)); y++) {
      for (let x = Math.max(0, Math.floor(cx - ww / 2)); x < Math.min(width, Math.ceil(cx + ww / 2)); x++) {
        const inside = rect ? Math.abs(y - cy) < hh / 2 && Math.abs(x - cx) < ww / 2 : ((y - cy) / (hh / 2)) ** 2 + ((x - cx) / (ww / 2)) ** 2 < 1;
        if (!inside) continue;
        const shade = 1 + 0.25 * (x / width - cx / width);
        for (let c = 0; c < 3; c++) img[(y * width + x) * 3 + c] = col[c] * shade;
      }
    }
  }
  const data = new Uint8Array(img.length);
  for (let i = 0; i < img.length; i++) data[i] = Math.min(255, Math.max(0, Math.round(img[i])));
  return { width, height, data };
}

/** Writes U8 `<name>/rgb` [H, W, 3] tensors. */
export function writeImages(file: string, images: Map<string, RgbImageData>): void {
  const header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> = {};
  let off = 0;
  const names = [...images.keys()].sort();
  for (const n of names) {
    const im = images.get(n)!;
    header[`${n}/rgb`] = { dtype: 'U8', shape: [im.height, im.width, 3], data_offsets: [off, off + im.data.length] };
    off += im.data.length;
  }
  let h = Buffer.from(JSON.stringify(header));
  if (h.length % 8) h = Buffer.concat([h, Buffer.alloc(8 - (h.length % 8), 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  fs.writeFileSync(file, Buffer.concat([len, h, ...names.map((n) => Buffer.from(images.get(n)!.data))]));
}

/** Reads every U8 `<name>/rgb` tensor of a safetensors file (e.g. a fixture's inputs.safetensors). */
export function readImages(file: string): Map<string, RgbImageData> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, RgbImageData>();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__' || !name.endsWith('/rgb') || t.dtype !== 'U8') continue;
    const [a, b] = t.data_offsets;
    out.set(name.slice(0, -4), { height: t.shape[0], width: t.shape[1], data: new Uint8Array(buf.subarray(8 + n + a, 8 + n + b)) });
  }
  return out;
}
