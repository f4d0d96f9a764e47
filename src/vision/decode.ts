/**
 * Image decoding for the region detector: JPEG, PNG and WebP, from a file or bytes, into 8-bit RGB
 * pixels, with one pinned decoder (`sharp` 0.35.6 = libvips 8.18 with mozjpeg, libpng, libwebp;
 * its native libraries ship inside the `@img/sharp-*` npm packages, no install script).
 *
 * The BUTD reference read images with OpenCV's `imread(path)` (IMREAD_COLOR), so the decoded
 * pixels follow what imread gives:
 *   - EXIF orientation is applied (imread does so by default);
 *   - embedded ICC profiles are ignored (imread ignores them): the stored samples are returned;
 *   - grey images become three equal channels;
 *   - an alpha channel is dropped, not composited (imread strips it: a transparent pixel keeps
 *     the colour stored under it);
 *   - 16-bit samples keep their high byte (v >> 8, what libpng's png_set_strip_16 does for imread;
 *     libvips' 16-bit -> 8-bit colourspace conversion does the same);
 *   - CMYK JPEGs are converted by libvips (lcms with libvips' built-in CMYK profile; an embedded
 *     profile is ignored like every ICC profile). imread uses a naive formula there, so CMYK
 *     pixels differ from the reference's; such files are rare in image-text datasets.
 *   - animated or multi-frame files (animated WebP; APNG is read as its default image by libpng):
 *     the first frame is used, as imread does; `frames` tells how many there were.
 * JPEG decoders differ by a few grey levels between libraries, so parity with the reference is
 * tested on lossless inputs only.
 *
 * Refusals are `ImageDecodeError`s naming the file and the reason: unreadable path, empty or
 * corrupt/truncated data, a format other than JPEG/PNG/WebP (the detected one is named), a shorter
 * side under `minSide` (10 px) or a side over `maxSide` (20000 px) or more than `maxPixels`
 * (100 megapixels). Size limits are checked on the header before any pixel is decoded.
 */
import * as fs from 'node:fs';
import sharp, { type Metadata, type OutputInfo } from 'sharp';
import type { RgbImage } from '../detector/types.js';

export interface DecodeLimits {
  /** Smallest accepted shorter side in pixels (the detector's res4 map needs a few cells). */
  minSide: number;
  /** Largest accepted side in pixels. */
  maxSide: number;
  /** Largest accepted width x height. */
  maxPixels: number;
}

export const DEFAULT_DECODE_LIMITS: Readonly<DecodeLimits> = Object.freeze({ minSide: 10, maxSide: 20000, maxPixels: 100_000_000 });

/** The decoder and its libraries' versions (JPEG pixels depend on them; extraction caches record it). */
export const DECODER_VERSION = `sharp ${sharp.versions.sharp} (libvips ${sharp.versions.vips}, mozjpeg ${sharp.versions.mozjpeg ?? '?'}, libpng ${sharp.versions.png ?? '?'}, libwebp ${sharp.versions.webp ?? '?'})`;

export const ACCEPTED_FORMATS = ['jpeg', 'png', 'webp'] as const;
export type ImageFormat = (typeof ACCEPTED_FORMATS)[number];

/** A file path, the bytes of a JPEG/PNG/WebP file, or pixels already decoded. */
export type ImageInput = string | Uint8Array | RgbImage;

export type DecodeFailure = 'unreadable' | 'corrupt' | 'unsupported' | 'too-small' | 'too-large';

export class ImageDecodeError extends Error {
  constructor(
    /** The file path, or the name given for bytes. */
    readonly source: string,
    readonly kind: DecodeFailure,
    readonly reason: string,
  ) {
    super(`${source}: ${reason}`);
  }
}

export interface DecodedImage extends RgbImage {
  format: ImageFormat;
  /** Frames or pages in the file (the first one is decoded). */
  frames: number;
  /** EXIF orientation that was applied (1 = none). */
  orientation: number;
}

/** Names sharp gives formats, as a user knows them. */
const FORMAT_NAMES: Record<string, string> = { heif: 'HEIF/AVIF', jpeg: 'JPEG', png: 'PNG', webp: 'WebP', gif: 'GIF', tiff: 'TIFF', svg: 'SVG', jp2: 'JPEG 2000', jxl: 'JPEG XL', pdf: 'PDF', magick: 'ImageMagick-only format' };

/** Formats told by their first bytes, for files whose header libvips cannot parse. */
function sniffFormat(b: Uint8Array): string | null {
  const ascii = (from: number, to: number) => String.fromCharCode(...b.subarray(from, to));
  if (ascii(0, 4) === 'GIF8') return 'gif';
  if (ascii(0, 4) === 'II*\0' || ascii(0, 4) === 'MM\0*') return 'tiff';
  if (ascii(0, 2) === 'BM') return 'BMP';
  if (ascii(4, 8) === 'ftyp') return 'heif';
  if (b[0] === 0xff && b[1] === 0xd8) return 'jpeg';
  if (b[0] === 0x89 && ascii(1, 4) === 'PNG') return 'png';
  if (ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'webp';
  return null;
}

function firstLine(e: unknown): string {
  return String((e as Error)?.message ?? e).split('\n')[0].trim();
}

/**
 * Decode a JPEG, PNG or WebP file (path) or its bytes into RGB pixels. `name` labels errors for
 * bytes (default `<buffer>`); `limits` overrides the size limits.
 */
export async function decodeImage(input: string | Uint8Array, opts: { name?: string; limits?: Partial<DecodeLimits> } = {}): Promise<DecodedImage> {
  const source = typeof input === 'string' ? input : (opts.name ?? '<buffer>');
  const limits = { ...DEFAULT_DECODE_LIMITS, ...opts.limits };
  let bytes: Uint8Array;
  if (typeof input === 'string') {
    try {
      bytes = await fs.promises.readFile(input);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const why = err.code === 'ENOENT' ? 'no such file' : err.code === 'EISDIR' ? 'is a directory, not an image file' : firstLine(e);
      throw new ImageDecodeError(source, 'unreadable', `cannot read image (${why})`);
    }
  } else bytes = input;
  if (bytes.length === 0) throw new ImageDecodeError(source, 'corrupt', 'empty file (0 bytes)');

  // Header only: no pixel is decoded here, so a huge image costs nothing before it is refused.
  let meta: Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (e) {
    const msg = firstLine(e);
    const sniffed = sniffFormat(bytes);
    if (sniffed !== null && !(ACCEPTED_FORMATS as readonly string[]).includes(sniffed)) {
      throw new ImageDecodeError(source, 'unsupported', `unsupported image format ${FORMAT_NAMES[sniffed] ?? sniffed} (accepted: JPEG, PNG, WebP)`);
    }
    if (/unsupported image format/i.test(msg)) throw new ImageDecodeError(source, 'unsupported', 'not a JPEG, PNG or WebP image (format not recognised)');
    throw new ImageDecodeError(source, 'corrupt', `corrupt or truncated image header (${msg.replace(/^Input (buffer|file) has corrupt header: /, '')})`);
  }
  const format = meta.format as string;
  if (!(ACCEPTED_FORMATS as readonly string[]).includes(format)) {
    throw new ImageDecodeError(source, 'unsupported', `unsupported image format ${FORMAT_NAMES[format] ?? format} (accepted: JPEG, PNG, WebP)`);
  }
  const w = meta.width;
  const h = meta.pageHeight ?? meta.height;
  if (!(Number.isInteger(w) && Number.isInteger(h) && w > 0 && h > 0)) throw new ImageDecodeError(source, 'corrupt', `image header gives no valid size (${w} x ${h})`);
  if (Math.min(w, h) < limits.minSide) throw new ImageDecodeError(source, 'too-small', `image is ${w} x ${h} px; the shorter side must be at least ${limits.minSide} px`);
  if (Math.max(w, h) > limits.maxSide) throw new ImageDecodeError(source, 'too-large', `image is ${w} x ${h} px; sides over ${limits.maxSide} px are refused`);
  if (w * h > limits.maxPixels) throw new ImageDecodeError(source, 'too-large', `image is ${w} x ${h} px = ${(w * h / 1e6).toFixed(1)} megapixels; more than ${limits.maxPixels / 1e6} megapixels are refused`);

  let data: Buffer;
  let info: OutputInfo;
  try {
    // failOn 'error': truncated or corrupt pixel data is refused; libjpeg's recoverable warnings
    // (e.g. extraneous bytes before a marker), which imread also tolerates, are not.
    ({ data, info } = await sharp(bytes, { autoOrient: true, ignoreIcc: true, failOn: 'error', limitInputPixels: limits.maxPixels })
      .removeAlpha()
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true }));
  } catch (e) {
    throw new ImageDecodeError(source, 'corrupt', `corrupt or truncated ${FORMAT_NAMES[format]} data (${firstLine(e)})`);
  }
  if (info.channels !== 3 || data.length !== info.width * info.height * 3) {
    throw new ImageDecodeError(source, 'corrupt', `decoder returned ${info.width} x ${info.height} x ${info.channels} (${data.length} bytes), expected 3 channels`);
  }
  // A private, exactly-sized copy: sharp's buffer may sit in a shared pool.
  return { width: info.width, height: info.height, data: new Uint8Array(data), format: format as ImageFormat, frames: meta.pages ?? 1, orientation: meta.orientation ?? 1 };
}

/** Check pixels given as an `RgbImage`; `source` labels errors. */
export function checkRgbImage(img: RgbImage, source = '<pixels>', limits: Partial<DecodeLimits> = {}): RgbImage {
  const l = { ...DEFAULT_DECODE_LIMITS, ...limits };
  const { width: w, height: h } = img;
  if (!(Number.isInteger(w) && Number.isInteger(h) && w > 0 && h > 0)) throw new ImageDecodeError(source, 'corrupt', `width and height must be positive integers, got ${w} x ${h}`);
  if (!(img.data instanceof Uint8Array) || img.data.length !== w * h * 3) throw new ImageDecodeError(source, 'corrupt', `data must be a Uint8Array of ${w} x ${h} x 3 = ${w * h * 3} bytes (RGB), got ${img.data?.length}`);
  if (Math.min(w, h) < l.minSide) throw new ImageDecodeError(source, 'too-small', `image is ${w} x ${h} px; the shorter side must be at least ${l.minSide} px`);
  if (Math.max(w, h) > l.maxSide || w * h > l.maxPixels) throw new ImageDecodeError(source, 'too-large', `image is ${w} x ${h} px; the limits are ${l.maxSide} px a side and ${l.maxPixels / 1e6} megapixels`);
  return img;
}

/** Any `ImageInput` as RGB pixels: decoded from a file or bytes, or checked when already pixels. */
export async function toRgbImage(input: ImageInput, opts: { name?: string; limits?: Partial<DecodeLimits> } = {}): Promise<RgbImage> {
  if (typeof input === 'string' || input instanceof Uint8Array) return decodeImage(input, opts);
  return checkRgbImage(input, opts.name, opts.limits);
}
