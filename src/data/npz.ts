/**
 * numpy `.npy` and `.npz` files: the per-image feature files of the BUTD extractor and the values
 * of a compressed img_db.
 *
 * `.npy`: magic `\x93NUMPY`, version byte pair, header length (2 bytes in version 1, 4 in
 * versions 2 and 3), a Python dict literal `{'descr': '<f2', 'fortran_order': False, 'shape':
 * (100, 2048), }` padded with spaces and a newline, then the raw little-endian C-order data.
 * `.npz`: a zip archive (stored for `np.savez`, deflate for `np.savez_compressed`) with one
 * `<name>.npy` member per array. Members that are not `.npy` files are ignored.
 *
 * float16 arrays keep their raw bits in a Uint16Array; `halfArrayToFloat32` / `float32ToHalfArray`
 * convert.
 */
import * as fs from 'node:fs';
import { unzipSync, zipSync, type Zippable } from 'fflate';
import { zipStructureProblem } from '../util/zip-check.js';
import { floatToHalf, halfToFloat, numel } from '../engine/host.js';

export type NpyDtype = '<f2' | '<f4' | '<f8' | '<i4' | '<i8' | '|b1' | '|u1';
export type NpyData = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Uint16Array;

export interface NpyArray {
  dtype: NpyDtype;
  shape: number[];
  data: NpyData;
}

export class NpyError extends Error {}

const ITEM_SIZE: Record<NpyDtype, number> = { '<f2': 2, '<f4': 4, '<f8': 8, '<i4': 4, '<i8': 8, '|b1': 1, '|u1': 1 };
/** Spellings of the same one-byte types that other writers use. */
const DTYPE_ALIASES: Record<string, NpyDtype> = { '<b1': '|b1', '<u1': '|u1' };

export function isNpyDtype(s: string): s is NpyDtype {
  return Object.prototype.hasOwnProperty.call(ITEM_SIZE, s);
}

/** Canonical dtype for a numpy type string, or an error naming `where`. */
export function npyDtype(descr: string, where: string): NpyDtype {
  if (isNpyDtype(descr)) return descr;
  const alias = DTYPE_ALIASES[descr];
  if (alias) return alias;
  if (descr.startsWith('>')) throw new NpyError(`${where}: big-endian dtype '${descr}' is not supported (expected little-endian '<f2', '<f4', '<f8', '<i4', '<i8', '|b1' or '|u1')`);
  throw new NpyError(`${where}: unsupported dtype '${descr}' (expected '<f2', '<f4', '<f8', '<i4', '<i8', '|b1' or '|u1')`);
}

export function itemSize(dtype: NpyDtype): number {
  return ITEM_SIZE[dtype];
}

/** Typed array of `dtype` over a copy of `bytes` (copied so that it is aligned and owned). */
export function npyDataFromBytes(dtype: NpyDtype, bytes: Uint8Array, count: number): NpyData {
  const n = count * ITEM_SIZE[dtype];
  const buf = new ArrayBuffer(n);
  new Uint8Array(buf).set(bytes.subarray(0, n));
  switch (dtype) {
    case '<f2':
      return new Uint16Array(buf);
    case '<f4':
      return new Float32Array(buf);
    case '<f8':
      return new Float64Array(buf);
    case '<i4':
      return new Int32Array(buf);
    case '<i8':
      return new BigInt64Array(buf);
    default:
      return new Uint8Array(buf);
  }
}

function dataMatches(dtype: NpyDtype, data: NpyData): boolean {
  switch (dtype) {
    case '<f2':
      return data instanceof Uint16Array;
    case '<f4':
      return data instanceof Float32Array;
    case '<f8':
      return data instanceof Float64Array;
    case '<i4':
      return data instanceof Int32Array;
    case '<i8':
      return data instanceof BigInt64Array;
    default:
      return data instanceof Uint8Array;
  }
}

/** Check that an array's data has the type and length its dtype and shape promise. */
export function checkNpyArray(a: NpyArray, where: string): void {
  if (!isNpyDtype(a.dtype)) throw new NpyError(`${where}: unsupported dtype '${a.dtype}'`);
  if (!a.shape.every((d) => Number.isInteger(d) && d >= 0)) throw new NpyError(`${where}: bad shape [${a.shape}]`);
  if (!dataMatches(a.dtype, a.data)) throw new NpyError(`${where}: dtype ${a.dtype} does not match data of type ${a.data.constructor.name}`);
  if (a.data.length !== numel(a.shape)) throw new NpyError(`${where}: shape [${a.shape}] needs ${numel(a.shape)} elements, data has ${a.data.length}`);
}

// ---------------------------------------------------------------------------------------------
// float16

let halfTable: Float32Array | undefined;

/** float16 bits to float32 values (table lookup: every half value is exact in float32). */
export function halfArrayToFloat32(h: Uint16Array): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) halfTable[i] = halfToFloat(i);
  }
  const out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) out[i] = halfTable[h[i]];
  return out;
}

/** float32 values to float16 bits, round to nearest even (what numpy's astype(float16) does). */
export function float32ToHalfArray(f: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) out[i] = floatToHalf(f[i]);
  return out;
}

/** Any numeric array as float32 values. */
export function npyToFloat32(a: NpyArray): Float32Array {
  if (a.data instanceof Float32Array) return a.data;
  if (a.dtype === '<f2') return halfArrayToFloat32(a.data as Uint16Array);
  const out = new Float32Array(a.data.length);
  for (let i = 0; i < out.length; i++) out[i] = Number(a.data[i]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// .npy

const NPY_MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

function parseHeader(text: string, where: string): { descr: string; fortran: boolean; shape: number[] } {
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]*)['"]/.exec(text);
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(text);
  const shape = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(text);
  if (!descr || !fortran || !shape) throw new NpyError(`${where}: malformed .npy header ${JSON.stringify(text.trim())} (expected descr, fortran_order and shape)`);
  const dims = shape[1]
    .split(',')
    .map((s) => s.trim().replace(/L$/, ''))
    .filter((s) => s.length > 0)
    .map((s) => {
      if (!/^\d+$/.test(s)) throw new NpyError(`${where}: bad dimension '${s}' in .npy shape (${shape[1]})`);
      return Number(s);
    });
  return { descr: descr[1], fortran: fortran[1] === 'True', shape: dims };
}

/** Parse one `.npy` file. */
export function readNpy(bytes: Uint8Array, where = '<npy>'): NpyArray {
  if (bytes.length < 10 || NPY_MAGIC.some((b, i) => bytes[i] !== b)) throw new NpyError(`${where}: not a .npy file (missing \\x93NUMPY magic)`);
  const major = bytes[6];
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number;
  let start: number;
  if (major === 1) {
    headerLen = dv.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new NpyError(`${where}: truncated .npy header`);
    headerLen = dv.getUint32(8, true);
    start = 12;
  } else throw new NpyError(`${where}: unsupported .npy format version ${major}.${bytes[7]} (expected 1, 2 or 3)`);
  if (start + headerLen > bytes.length) throw new NpyError(`${where}: truncated .npy header (${headerLen} bytes declared)`);
  const text = Buffer.from(bytes.buffer, bytes.byteOffset + start, headerLen).toString(major === 3 ? 'utf8' : 'latin1');
  const h = parseHeader(text, where);
  if (h.fortran && h.shape.filter((d) => d > 1).length > 1) {
    throw new NpyError(`${where}: fortran_order arrays are not supported (save with C order, e.g. np.ascontiguousarray)`);
  }
  const dtype = npyDtype(h.descr, where);
  const count = numel(h.shape);
  const body = bytes.subarray(start + headerLen);
  const need = count * ITEM_SIZE[dtype];
  if (body.length < need) throw new NpyError(`${where}: truncated .npy data: shape [${h.shape}] ${dtype} needs ${need} bytes, file has ${body.length}`);
  return { dtype, shape: h.shape, data: npyDataFromBytes(dtype, body, count) };
}

/** Serialize like `np.save`: version 1.0 header padded to a multiple of 64 bytes. */
export function writeNpy(a: NpyArray, where = '<npy>'): Uint8Array {
  checkNpyArray(a, where);
  const shape = a.shape.length === 1 ? `(${a.shape[0]},)` : `(${a.shape.join(', ')})`;
  let dict = `{'descr': '${a.dtype}', 'fortran_order': False, 'shape': ${shape}, }`;
  const pad = 64 - ((10 + dict.length + 1) % 64);
  dict += ' '.repeat(pad % 64) + '\n';
  if (dict.length > 65535) throw new NpyError(`${where}: .npy header too long`);
  const bodyLen = a.data.byteLength;
  const out = new Uint8Array(10 + dict.length + bodyLen);
  out.set(NPY_MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, dict.length, true);
  out.set(Buffer.from(dict, 'latin1'), 10);
  out.set(new Uint8Array(a.data.buffer, a.data.byteOffset, bodyLen), 10 + dict.length);
  return out;
}

// ---------------------------------------------------------------------------------------------
// .npz

/**
 * Read the `.npy` members of a zip archive into a map keyed by array name (member name without
 * `.npy`). `name` labels errors; `opts.members` restricts decoding to those array names.
 */
export function readNpz(bytes: Uint8Array, name = '<npz>', opts: { members?: readonly string[] } = {}): Map<string, NpyArray> {
  const wanted = opts.members ? new Set(opts.members) : undefined;
  let files: Record<string, Uint8Array>;
  const problem = zipStructureProblem(bytes);
  if (problem) throw new NpyError(`${name}: not a readable .npz (zip) archive: ${problem}`);
  try {
    files = unzipSync(bytes, {
      filter: (f) => f.name.endsWith('.npy') && (!wanted || wanted.has(f.name.slice(0, -4))),
    });
  } catch (e) {
    throw new NpyError(`${name}: not a readable .npz (zip) archive: ${(e as Error).message}`);
  }
  const out = new Map<string, NpyArray>();
  for (const [member, data] of Object.entries(files)) out.set(member.slice(0, -4), readNpy(data, `${name}:${member}`));
  return out;
}

/** Stable timestamp for members, so the same arrays always give the same archive bytes. */
const ZIP_EPOCH = new Date(1980, 0, 1, 0, 0, 0);

/** Build an archive like `np.savez` (compress=false, stored) or `np.savez_compressed` (deflate). */
export function writeNpz(arrays: Map<string, NpyArray>, compress: boolean): Uint8Array {
  const members: Zippable = {};
  for (const [k, a] of arrays) {
    if (!k || k.includes('/')) throw new NpyError(`npz: bad array name ${JSON.stringify(k)}`);
    members[`${k}.npy`] = [writeNpy(a, `npz:${k}`), { level: compress ? 6 : 0, mtime: ZIP_EPOCH }];
  }
  return zipSync(members, { mtime: ZIP_EPOCH });
}

// ---------------------------------------------------------------------------------------------
// BUTD feature files

/** Full arrays of one BUTD feature file, as float32. */
export interface ButdFeatures {
  /** Box count (rows of every array). */
  numBoxes: number;
  imgDim: number;
  /** Width of `softLabels`; 0 when the file has none. */
  labelDim: number;
  /** [numBoxes, imgDim] */
  features: Float32Array;
  /** [numBoxes, 6] */
  normBb: Float32Array;
  /** [numBoxes] detector confidence. */
  conf: Float32Array;
  /** [numBoxes, labelDim], absent when the file has no `soft_labels`. */
  softLabels?: Float32Array;
}

export const BUTD_MEMBERS = ['features', 'norm_bb', 'conf', 'soft_labels'] as const;

/**
 * Turn the arrays of one image (`features` [n, D], `norm_bb` [n, 6], `conf` [n] or [n, 1],
 * optional `soft_labels` [n, L]) into float32 arrays, checking shapes. `where` labels errors.
 */
export function butdFromArrays(arrays: Map<string, NpyArray>, where: string): ButdFeatures {
  const get = (k: string, required: boolean): NpyArray | undefined => {
    const a = arrays.get(k);
    if (!a && required) throw new NpyError(`${where}: missing array '${k}' (a BUTD feature file has ${BUTD_MEMBERS.join(', ')})`);
    return a;
  };
  const features = get('features', true) as NpyArray;
  if (features.shape.length !== 2) throw new NpyError(`${where}: 'features' has shape [${features.shape}], expected [boxes, dim]`);
  const [numBoxes, imgDim] = features.shape;
  const normBb = get('norm_bb', true) as NpyArray;
  if (normBb.shape.length !== 2 || normBb.shape[0] !== numBoxes || normBb.shape[1] !== 6) {
    throw new NpyError(`${where}: 'norm_bb' has shape [${normBb.shape}], expected [${numBoxes}, 6] (x1, y1, x2, y2, w, h normalised)`);
  }
  const conf = get('conf', true) as NpyArray;
  const confOk = (conf.shape.length === 1 && conf.shape[0] === numBoxes) || (conf.shape.length === 2 && conf.shape[0] === numBoxes && conf.shape[1] === 1);
  if (!confOk) throw new NpyError(`${where}: 'conf' has shape [${conf.shape}], expected [${numBoxes}] or [${numBoxes}, 1]`);
  const soft = get('soft_labels', false);
  if (soft && (soft.shape.length !== 2 || soft.shape[0] !== numBoxes)) {
    throw new NpyError(`${where}: 'soft_labels' has shape [${soft.shape}], expected [${numBoxes}, labels]`);
  }
  return {
    numBoxes,
    imgDim,
    labelDim: soft ? soft.shape[1] : 0,
    features: npyToFloat32(features),
    normBb: npyToFloat32(normBb),
    conf: npyToFloat32(conf),
    softLabels: soft ? npyToFloat32(soft) : undefined,
  };
}

/** Read one per-image feature file written by the BUTD extractor (other members are ignored). */
export function readBUTDNpz(file: string): ButdFeatures {
  let bytes: Uint8Array;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new NpyError(`${file}: cannot read feature file (${(e as Error).message})`);
  }
  return butdFromArrays(readNpz(bytes, file, { members: BUTD_MEMBERS }), file);
}
