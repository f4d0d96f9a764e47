/**
 * safetensors reading and writing: round trips of every written dtype, half-precision inputs
 * read as float32 (bytes made by hand, independent of the reader's decoders), the byte layout
 * (8-byte aligned header, aligned tensors), errors that name the file and the tensor, and the
 * golden fixture weights written by PyTorch's safetensors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { HostTensor, SafetensorsError, bool, f32, i64, parseSafetensors, readSafetensors, serializeSafetensors, writeSafetensors } from '../../src/engine/index.js';

const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-safetensors-'));
process.on('exit', () => fs.rmSync(tmpDir, { recursive: true, force: true }));

/** test/fixtures relative to this compiled file (dist/test/engine -> test/fixtures). */
const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures');

/** A file from a raw JSON header (padded to 8 bytes) and a data section. */
function handMade(header: Record<string, unknown>, data: Uint8Array): Uint8Array {
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(Buffer.from(json, 'latin1'), 8);
  out.set(data, 8 + json.length);
  return out;
}

function u16le(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 2);
  const dv = new DataView(out.buffer);
  values.forEach((v, i) => dv.setUint16(i * 2, v, true));
  return out;
}

function headerOf(bytes: Uint8Array): { length: number; json: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> } {
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return { length, json: JSON.parse(Buffer.from(bytes.subarray(8, 8 + length)).toString('utf8')) };
}

function writeBytes(name: string, bytes: Uint8Array): string {
  const file = path.join(tmpDir, name);
  fs.writeFileSync(file, bytes);
  return file;
}

const sample: Record<string, HostTensor> = {
  'layer.weight': f32([2, 3], [0.5, -1.25, 3e-8, 1e30, -0, 7]),
  'layer.double': { dtype: 'float64', shape: [3], data: Float64Array.from([Math.PI, -1e-300, 1e300]) },
  ids: i64([2, 2], [0, -1, 9007199254740991, 42]),
  count: { dtype: 'int32', shape: [4], data: Int32Array.from([1, -2, 2147483647, -2147483648]) },
  mask: bool([5], [1, 0, 0, 1, 1]),
  scalar: f32([], [2.5]),
  empty: f32([0, 4]),
};

test('round trip F32, F64, I64, I32 and BOOL (with metadata) through a file', () => {
  const file = path.join(tmpDir, 'roundtrip.safetensors');
  writeSafetensors(file, sample, { format: 'pt', note: 'ünïcode' });
  assert.deepEqual(
    fs.readdirSync(tmpDir).filter((f) => f.includes('roundtrip') && f !== 'roundtrip.safetensors'),
    [],
    'no temporary file is left next to the output',
  );
  const { tensors, metadata } = readSafetensors(file);
  assert.deepEqual(metadata, { format: 'pt', note: 'ünïcode' });
  assert.deepEqual([...tensors.keys()].sort(), Object.keys(sample).sort());
  for (const [name, t] of Object.entries(sample)) {
    const r = tensors.get(name)!;
    assert.equal(r.dtype, t.dtype, name);
    assert.deepEqual(r.shape, t.shape, name);
    assert.deepEqual(Array.from(r.data as ArrayLike<number | bigint>), Array.from(t.data as ArrayLike<number | bigint>), name);
  }
  // The dtype codes on disk are the standard ones.
  const { json } = headerOf(fs.readFileSync(file));
  assert.deepEqual(
    Object.fromEntries(Object.keys(sample).map((n) => [n, json[n].dtype])),
    { 'layer.weight': 'F32', 'layer.double': 'F64', ids: 'I64', count: 'I32', mask: 'BOOL', scalar: 'F32', empty: 'F32' },
  );
});

test('header is padded to 8 bytes and every tensor is aligned to its item size', () => {
  for (const extra of ['', 'x', 'xy', 'xyz', 'long-metadata-value']) {
    const bytes = serializeSafetensors(sample, { k: extra });
    const { length, json } = headerOf(bytes);
    assert.equal(length % 8, 0, `header length ${length} for metadata '${extra}'`);
    const dataStart = 8 + length;
    let end = 0;
    for (const [name, info] of Object.entries(json)) {
      if (name === '__metadata__') continue;
      const item = { F32: 4, F64: 8, I64: 8, I32: 4, BOOL: 1 }[info.dtype]!;
      assert.equal((dataStart + info.data_offsets[0]) % item, 0, `${name} (${info.dtype}) starts aligned`);
      end = Math.max(end, info.data_offsets[1]);
    }
    assert.equal(bytes.length, dataStart + end, 'no bytes after the last tensor');
  }
});

test('F16 and BF16 are read as float32 (hand-made bytes)', () => {
  // IEEE half: 1, -2, 0.5, smallest subnormal 2^-24, 65504 (max), +inf, -0.
  const half = [0x3c00, 0xc000, 0x3800, 0x0001, 0x7bff, 0x7c00, 0x8000];
  const halfExpected = [1, -2, 0.5, 2 ** -24, 65504, Infinity, -0];
  // bfloat16 = the top 16 bits of a float32: 1, -2, 3.140625, 1e-38-ish subnormal-free, -inf.
  const bf = [0x3f80, 0xc000, 0x4049, 0x0080, 0xff80];
  const bfExpected = [1, -2, 3.140625, 2 ** -126, -Infinity];
  const data = new Uint8Array(half.length * 2 + bf.length * 2);
  data.set(u16le(half), 0);
  data.set(u16le(bf), half.length * 2);
  const file = writeBytes(
    'half.safetensors',
    handMade(
      {
        h: { dtype: 'F16', shape: [half.length], data_offsets: [0, half.length * 2] },
        b: { dtype: 'BF16', shape: [1, bf.length], data_offsets: [half.length * 2, half.length * 2 + bf.length * 2] },
      },
      data,
    ),
  );
  const { tensors } = readSafetensors(file);
  const h = tensors.get('h')!;
  const b = tensors.get('b')!;
  assert.equal(h.dtype, 'float32');
  assert.equal(b.dtype, 'float32');
  assert.deepEqual(b.shape, [1, bf.length]);
  assert.deepEqual(Array.from(h.data as Float32Array), halfExpected);
  assert.ok(Object.is((h.data as Float32Array)[6], -0), 'negative zero keeps its sign');
  assert.deepEqual(Array.from(b.data as Float32Array), bfExpected);
});

function assertFails(bytes: Uint8Array, name: string, patterns: RegExp[]): void {
  const file = writeBytes(name, bytes);
  assert.throws(
    () => readSafetensors(file),
    (e: unknown) => {
      assert.ok(e instanceof SafetensorsError, `expected SafetensorsError, got ${String(e)}`);
      assert.ok(e.message.includes(file), `message names the file: ${e.message}`);
      for (const p of patterns) assert.match(e.message, p);
      return true;
    },
  );
}

test('truncated files are rejected with the file and tensor named', () => {
  const good = serializeSafetensors({ 'enc.weight': f32([4, 4], new Float32Array(16).fill(1)), 'enc.bias': f32([4]) });
  assertFails(good.subarray(0, good.length - 3), 'cut-data.safetensors', [/truncated/, /'enc\.(weight|bias)'/]);
  assertFails(good.subarray(0, 5), 'cut-length.safetensors', [/truncated/]);
  assertFails(good.subarray(0, 20), 'cut-header.safetensors', [/truncated/, /header/]);
  assert.throws(() => readSafetensors(path.join(tmpDir, 'missing.safetensors')), /missing\.safetensors/);
});

test('bad headers and unknown dtypes are rejected with the file and tensor named', () => {
  const raw = (json: string, data = new Uint8Array(0)) => {
    const out = new Uint8Array(8 + json.length + data.length);
    new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
    out.set(Buffer.from(json, 'latin1'), 8);
    out.set(data, 8 + json.length);
    return out;
  };
  assertFails(raw('{"a": {"dtype": "F32"'), 'not-json.safetensors', [/header/]);
  assertFails(raw('[1, 2]'), 'array-header.safetensors', [/header/, /object/]);
  assertFails(handMade({ w: { dtype: 'C64', shape: [1], data_offsets: [0, 8] } }, new Uint8Array(8)), 'c64.safetensors', [/'w'/, /C64/]);
  assertFails(handMade({ w: null }, new Uint8Array(0)), 'null-entry.safetensors', [/'w'/]);
  assertFails(handMade({ w: { dtype: 'F32', data_offsets: [0, 4] } }, new Uint8Array(4)), 'no-shape.safetensors', [/'w'/, /shape/]);
  assertFails(handMade({ w: { dtype: 'F32', shape: [2, -1], data_offsets: [0, 4] } }, new Uint8Array(4)), 'neg-shape.safetensors', [/'w'/, /shape/]);
  assertFails(handMade({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)), 'short-bytes.safetensors', [/'w'/, /12 bytes/]);
  assertFails(handMade({ w: { dtype: 'F32', shape: [1], data_offsets: [8, 4] } }, new Uint8Array(8)), 'reversed.safetensors', [/'w'/, /offsets/]);
});

test('parseSafetensors names the buffer when no file is given', () => {
  assert.throws(() => parseSafetensors(new Uint8Array(3)), /<buffer>/);
  assert.throws(() => parseSafetensors(new Uint8Array(3), 'ckpt.bin'), /ckpt\.bin/);
});

test('reads the golden fixture weights written by PyTorch', () => {
  const file = path.join(FIXTURES, 'golden/tiny/weights.safetensors');
  const config = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'golden/tiny/config.json'), 'utf8')) as {
    vocab_size: number;
    hidden_size: number;
    num_hidden_layers: number;
    intermediate_size: number;
    img_dim: number;
  };
  const bytes = fs.readFileSync(file);
  const { json } = headerOf(bytes);
  const { tensors, metadata } = readSafetensors(file);
  const names = Object.keys(json).filter((n) => n !== '__metadata__');
  assert.deepEqual([...tensors.keys()].sort(), names.sort());
  assert.ok(metadata.format, 'metadata is read');

  const H = config.hidden_size;
  const expectShape = (name: string, shape: number[]) => assert.deepEqual(tensors.get(name)?.shape, shape, name);
  expectShape('uniter.embeddings.word_embeddings.weight', [config.vocab_size, H]);
  expectShape('uniter.img_embeddings.img_linear.weight', [H, config.img_dim]);
  for (let l = 0; l < config.num_hidden_layers; l++) {
    expectShape(`uniter.encoder.layer.${l}.attention.self.query.weight`, [H, H]);
    expectShape(`uniter.encoder.layer.${l}.intermediate.dense.weight`, [config.intermediate_size, H]);
    expectShape(`uniter.encoder.layer.${l}.output.LayerNorm.bias`, [H]);
  }
  // Values agree with a direct little-endian decode of the bytes.
  const dataStart = 8 + headerOf(bytes).length;
  for (const name of names) {
    const t = tensors.get(name)!;
    assert.equal(t.dtype, 'float32', name);
    const [b] = json[name].data_offsets;
    const data = t.data as Float32Array;
    for (const i of [0, data.length >> 1, data.length - 1]) {
      assert.equal(data[i], bytes.readFloatLE(dataStart + b + 4 * i), `${name}[${i}]`);
    }
    assert.ok(data.every(Number.isFinite), `${name} is finite`);
  }
});

// Issue 15, case 4: the data section must be exactly the tensors, back to back, under unique names.
test('strict reader: overlapping tensors are refused, naming both (case 4)', () => {
  const data = new Uint8Array(8);
  const bytes = handMade({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, data);
  assert.throws(() => parseSafetensors(bytes, 'x.safetensors'), (e: Error) => e instanceof SafetensorsError && /x\.safetensors: tensor 'b' .*overlaps tensor 'a'/.test(e.message));
});

test('strict reader: gaps and trailing bytes are refused (case 4)', () => {
  const gap = handMade({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8));
  assert.throws(() => parseSafetensors(gap, 'g.safetensors'), /g\.safetensors: gap of 4 bytes before tensor 'a'/);
  const trailing = handMade({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(5));
  assert.throws(() => parseSafetensors(trailing, 't.safetensors'), /t\.safetensors: 1 trailing bytes after the last tensor/);
  // Zero-sized tensors share an offset without overlapping anything.
  const empties = handMade({ e1: { dtype: 'F32', shape: [0], data_offsets: [0, 0] }, e2: { dtype: 'F32', shape: [0, 3], data_offsets: [0, 0] }, a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4));
  assert.deepEqual([...parseSafetensors(empties).tensors.keys()].sort(), ['a', 'e1', 'e2']);
});

test('strict reader: duplicate header keys are refused, not resolved by JSON.parse (case 4)', () => {
  const json = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}';
  const padded = json + ' '.repeat((8 - (json.length % 8)) % 8);
  const out = new Uint8Array(8 + padded.length + 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded.length), true);
  out.set(Buffer.from(padded, 'latin1'), 8);
  assert.throws(() => parseSafetensors(out, 'd.safetensors'), /d\.safetensors: bad safetensors header: duplicate key "a"/);
  // An escaped spelling of the same name is the same key.
  const esc = padded.replace('"a":{"dtype":"F32","shape":[1],"data_offsets":[4', '"\\u0061":{"dtype":"F32","shape":[1],"data_offsets":[4');
  const out2 = new Uint8Array(out);
  out2.set(Buffer.from(esc.slice(0, padded.length), 'latin1'), 8);
  assert.throws(() => parseSafetensors(out2), /duplicate key "a"/);
});

test('strict reader: metadata must be strings', () => {
  const bytes = handMade({ __metadata__: { n: 3 }, a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4));
  assert.throws(() => parseSafetensors(bytes, 'm.safetensors'), /m\.safetensors: __metadata__ must be an object of strings/);
});
