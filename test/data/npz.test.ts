import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { unzipSync } from 'fflate';
import {
  float32ToHalfArray,
  halfArrayToFloat32,
  readBUTDNpz,
  readNpy,
  readNpz,
  writeNpy,
  writeNpz,
  type NpyArray,
} from '../../src/data/npz.js';
import { LmdbReader } from '../../src/data/lmdb.js';

const OFFICIAL = fileURLToPath(new URL('../../../test/fixtures/data/official/', import.meta.url));
const expectedImg = JSON.parse(fs.readFileSync(path.join(OFFICIAL, 'expected_img.json'), 'utf8')) as Record<
  string,
  { num_boxes: number; nbb: number; features_row0: number[]; norm_bb_row0: number[]; soft_labels_row0: number[] }
>;

// ---- hand-made archive: nothing below comes from our own writer ----

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A .npy file built byte by byte: magic, version, header length, padded dict, data. */
function handNpy(major: 1 | 2, dict: string, data: Uint8Array): Uint8Array {
  const pre = major === 1 ? 10 : 12;
  let header = dict;
  while ((pre + header.length + 1) % 16 !== 0) header += ' ';
  header += '\n';
  const out = new Uint8Array(pre + header.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  const dv = new DataView(out.buffer);
  if (major === 1) dv.setUint16(8, header.length, true);
  else dv.setUint32(8, header.length, true);
  out.set(Buffer.from(header, 'latin1'), pre);
  out.set(data, pre + header.length);
  return out;
}

/** A stored (uncompressed) zip archive built byte by byte. */
function handZip(members: Array<[string, Uint8Array]>): Uint8Array {
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let offset = 0;
  for (const [name, data] of members) {
    const n = Buffer.from(name, 'utf8');
    const crc = crc32(data);
    const local = new Uint8Array(30 + n.length + data.length);
    const l = new DataView(local.buffer);
    l.setUint32(0, 0x04034b50, true);
    l.setUint16(4, 20, true);
    l.setUint16(8, 0, true); // stored
    l.setUint32(14, crc, true);
    l.setUint32(18, data.length, true);
    l.setUint32(22, data.length, true);
    l.setUint16(26, n.length, true);
    local.set(n, 30);
    local.set(data, 30 + n.length);
    const central = new Uint8Array(46 + n.length);
    const c = new DataView(central.buffer);
    c.setUint32(0, 0x02014b50, true);
    c.setUint16(4, 20, true);
    c.setUint16(6, 20, true);
    c.setUint32(16, crc, true);
    c.setUint32(20, data.length, true);
    c.setUint32(24, data.length, true);
    c.setUint16(28, n.length, true);
    c.setUint32(42, offset, true);
    central.set(n, 46);
    locals.push(local);
    centrals.push(central);
    offset += local.length;
  }
  const cdSize = centrals.reduce((s, c) => s + c.length, 0);
  const end = new Uint8Array(22);
  const e = new DataView(end.buffer);
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, members.length, true);
  e.setUint16(10, members.length, true);
  e.setUint32(12, cdSize, true);
  e.setUint32(16, offset, true);
  return Buffer.concat([...locals, ...centrals, end]);
}

test('reads a hand-built npz: v1 and v2 headers, 0-d, 1-d, 2-d, non-npy members ignored', () => {
  const f32 = new Float32Array([1.5, -2.25]);
  const i64 = new BigInt64Array([-3n, 2n ** 40n, 7n, 0n, 1n, 2n]);
  const half = new Uint16Array([0x3c00, 0x0001, 0xc000]); // 1, smallest subnormal, -2
  const zip = handZip([
    ['vec.npy', handNpy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", new Uint8Array(f32.buffer))],
    ['mat.npy', handNpy(2, "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), }", new Uint8Array(i64.buffer))],
    ['h.npy', handNpy(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }", new Uint8Array(half.buffer))],
    ['flag.npy', handNpy(1, "{'descr': '|b1', 'fortran_order': False, 'shape': (), }", new Uint8Array([1]))],
    ['py2.npy', handNpy(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (2L, 1L), }", new Uint8Array([7, 9]))],
    ['notes.txt', Buffer.from('not an array')],
  ]);
  const m = readNpz(zip, 'hand.npz');
  assert.deepEqual([...m.keys()].sort(), ['flag', 'h', 'mat', 'py2', 'vec']);
  assert.deepEqual(m.get('vec'), { dtype: '<f4', shape: [2], data: f32 });
  assert.deepEqual(m.get('mat'), { dtype: '<i8', shape: [2, 3], data: i64 });
  assert.deepEqual(m.get('flag'), { dtype: '|b1', shape: [], data: new Uint8Array([1]) });
  assert.deepEqual(m.get('py2'), { dtype: '|u1', shape: [2, 1], data: new Uint8Array([7, 9]) });
  const h = m.get('h') as NpyArray;
  assert.deepEqual([...halfArrayToFloat32(h.data as Uint16Array)], [1, 2 ** -24, -2]);
  assert.deepEqual([...readNpz(zip, 'hand.npz', { members: ['vec'] }).keys()], ['vec']);
});

test('numpy header layout: our .npy bytes equal what numpy wrote', () => {
  const files = unzipSync(fs.readFileSync(path.join(OFFICIAL, 'npz/coco_tiny/coco_tiny_a.npz')));
  for (const member of ['features.npy', 'conf.npy', 'soft_labels.npy']) {
    const numpyBytes = files[member];
    assert.deepEqual(writeNpy(readNpy(numpyBytes, member)), numpyBytes, member);
  }
});

test('npy round trip for every dtype, and npz stored/deflate round trip', () => {
  const arrays = new Map<string, NpyArray>([
    ['f2', { dtype: '<f2', shape: [2, 2], data: float32ToHalfArray([0.1, -65504, 6e-8, 0]) }],
    ['f4', { dtype: '<f4', shape: [3], data: new Float32Array([1, NaN, -Infinity]) }],
    ['f8', { dtype: '<f8', shape: [1, 1, 2], data: new Float64Array([Math.PI, -0]) }],
    ['i4', { dtype: '<i4', shape: [2], data: new Int32Array([-(2 ** 31), 2 ** 31 - 1]) }],
    ['i8', { dtype: '<i8', shape: [], data: new BigInt64Array([-(2n ** 63n)]) }],
    ['b1', { dtype: '|b1', shape: [0], data: new Uint8Array(0) }],
    ['u1', { dtype: '|u1', shape: [2], data: new Uint8Array([0, 255]) }],
  ]);
  for (const [k, a] of arrays) assert.deepEqual(readNpy(writeNpy(a)), a, k);
  for (const compress of [false, true]) {
    const bytes = writeNpz(arrays, compress);
    assert.deepEqual(readNpz(bytes), arrays);
    assert.deepEqual(writeNpz(arrays, compress), bytes, 'deterministic bytes');
  }
  const big = new Map<string, NpyArray>([['z', { dtype: '<f4', shape: [10000], data: new Float32Array(10000) }]]);
  assert.ok(writeNpz(big, true).length < writeNpz(big, false).length / 10, 'deflate compresses');
});

test('float16 conversion rounds to nearest even and keeps subnormals', () => {
  const h = float32ToHalfArray([0.2, 3e-6, 65520, 1 + 2 ** -11, 1 + 3 * 2 ** -11]);
  assert.deepEqual([...h], [0x3266, 0x0032, 0x7c00, 0x3c00, 0x3c02]);
  assert.equal(halfArrayToFloat32(new Uint16Array([0x3266]))[0], 0.199951171875);
});

test('bad .npy input gives errors naming the member', () => {
  const d = new Uint8Array(8);
  const fortran = handZip([['m.npy', handNpy(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", new Uint8Array(16))]]);
  assert.throws(() => readNpz(fortran, 'x.npz'), /x\.npz:m\.npy: fortran_order arrays are not supported/);
  const big = handZip([['m.npy', handNpy(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", d)]]);
  assert.throws(() => readNpz(big, 'x.npz'), /x\.npz:m\.npy: big-endian dtype '>f4'/);
  const obj = handZip([['m.npy', handNpy(1, "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", d)]]);
  assert.throws(() => readNpz(obj, 'x.npz'), /unsupported dtype '\|O'/);
  const short = handZip([['m.npy', handNpy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", d)]]);
  assert.throws(() => readNpz(short, 'x.npz'), /x\.npz:m\.npy: truncated \.npy data: shape \[2\] <f8 needs 16 bytes, file has 8/);
  assert.throws(() => readNpz(Buffer.from('definitely not a zip'), 'y.npz'), /y\.npz: not a readable \.npz/);
  assert.throws(() => readNpy(Buffer.from('plain text file'), 'z.npy'), /z\.npy: not a \.npy file/);
});

test('readBUTDNpz reads a numpy savez_compressed feature file', () => {
  const file = path.join(OFFICIAL, 'npz/coco_tiny/coco_tiny_a.npz');
  const f = readBUTDNpz(file);
  const exp = expectedImg['coco_tiny_a.npz'];
  assert.equal(f.numBoxes, exp.num_boxes);
  assert.equal(f.imgDim, 64);
  assert.equal(f.labelDim, 17);
  assert.equal(f.conf.length, exp.num_boxes, 'conf [n, 1] flattened');
  assert.deepEqual([...f.features.subarray(0, 64)], exp.features_row0);
  assert.deepEqual([...f.normBb.subarray(0, 6)], exp.norm_bb_row0);
  assert.deepEqual([...(f.softLabels as Float32Array).subarray(0, 17)], exp.soft_labels_row0);
  assert.ok((f.softLabels as Float32Array)[3] > 0 && (f.softLabels as Float32Array)[3] < 6.1e-5, 'subnormal soft label kept');
});

test('readBUTDNpz ignores extra members (allow_pickle) and reports missing ones by name', () => {
  // A compressed img_db value written by the official converter carries an extra 0-d allow_pickle member.
  const env = LmdbReader.open(path.join(OFFICIAL, 'img_db/coco_tiny/feat_th0.2_max100_min10_compressed'));
  const value = env.get('coco_tiny_b.npz') as Uint8Array;
  env.close();
  const all = readNpz(value, 'value');
  assert.deepEqual(all.get('allow_pickle')?.shape, []);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-npz-'));
  try {
    const withExtra = path.join(dir, 'extra.npz');
    fs.writeFileSync(withExtra, value);
    assert.equal(readBUTDNpz(withExtra).numBoxes, 10);
    const noBoxes = path.join(dir, 'nobb.npz');
    const m = new Map(all);
    m.delete('norm_bb');
    fs.writeFileSync(noBoxes, writeNpz(m, false));
    assert.throws(() => readBUTDNpz(noBoxes), (e: Error) => e.message.includes(noBoxes) && e.message.includes("missing array 'norm_bb'"));
    const wrong = path.join(dir, 'wrong.npz');
    m.set('norm_bb', { dtype: '<f4', shape: [10, 4], data: new Float32Array(40) });
    fs.writeFileSync(wrong, writeNpz(m, false));
    assert.throws(() => readBUTDNpz(wrong), /'norm_bb' has shape \[10,4\], expected \[10, 6\]/);
    assert.throws(() => readBUTDNpz(path.join(dir, 'absent.npz')), /absent\.npz: cannot read feature file/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
