/**
 * Issue 15: fuzzing every parser we own. Each parser gets valid seed inputs and a few thousand
 * seeded mutations (bit flips, interesting bytes, truncation, insertion, duplicated and deleted
 * chunks) within a time budget of about a second or two. Every input must either parse or be
 * refused with the parser's own error (a domain error, with a message); a TypeError, RangeError,
 * stack overflow, failed allocation or any other non-domain error is a failure, and so is a
 * single input that takes longer than HANG_MS. The seed is printed with each failure so that it
 * reproduces.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SafetensorsError, parseSafetensors, serializeSafetensors } from '../../src/engine/safetensors.js';
import { f32, i64 } from '../../src/engine/host.js';
import { checkpointFromTorchFile, parseTorchFile } from '../../src/interop/torch-checkpoint.js';
import { PickleError, unpickle } from '../../src/interop/torch-pickle.js';
import { TorchCheckpointError } from '../../src/interop/torch-tensor.js';
import { MsgpackError, packMsgpack, unpackMsgpack } from '../../src/data/msgpack.js';
import { Lz4Error, lz4FrameCompress, lz4FrameDecompress } from '../../src/data/lz4frame.js';
import { LmdbError, LmdbReader, writeLmdb } from '../../src/data/lmdb.js';
import { NpyError, readNpz, writeNpz } from '../../src/data/npz.js';
import { ConfigError, loadPretrainConfig } from '../../src/pretrain/config.js';
import { Rng } from '../../src/util/rng.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/', import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-fuzz-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

/** Time budget per parser and the most mutations tried within it. */
const BUDGET_MS = Number(process.env.UNITER_FUZZ_MS ?? 1500);
const MAX_CASES = Number(process.env.UNITER_FUZZ_CASES ?? 3000);
const HANG_MS = 2000;
const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x20, 0x22, 0x5b, 0x7b, 0x2c, 0x3a];

function mutate(rng: Rng, seed: Uint8Array): Uint8Array {
  let b = Uint8Array.from(seed);
  const edits = 1 + rng.int(4);
  for (let k = 0; k < edits; k++) {
    const at = b.length ? rng.int(b.length) : 0;
    switch (rng.int(7)) {
      case 0: // bit flip
        if (b.length) b[at] ^= 1 << rng.int(8);
        break;
      case 1: // interesting byte
        if (b.length) b[at] = INTERESTING[rng.int(INTERESTING.length)];
        break;
      case 2: // random byte
        if (b.length) b[at] = rng.int(256);
        break;
      case 3: // truncate
        b = b.subarray(0, at);
        break;
      case 4: {
        // insert random bytes
        const ins = Uint8Array.from({ length: 1 + rng.int(8) }, () => rng.int(256));
        b = Uint8Array.from([...b.subarray(0, at), ...ins, ...b.subarray(at)]);
        break;
      }
      case 5: {
        // delete a chunk
        const len = 1 + rng.int(16);
        b = Uint8Array.from([...b.subarray(0, at), ...b.subarray(at + len)]);
        break;
      }
      case 6: {
        // duplicate a chunk
        const len = 1 + rng.int(32);
        b = Uint8Array.from([...b.subarray(0, at + len), ...b.subarray(at, at + len), ...b.subarray(at + len)]);
        break;
      }
    }
  }
  return b;
}

type ErrorClass = abstract new (...args: never[]) => Error;

/** Run `parse` on mutations of `seeds`; fail on a non-domain error or a hang. */
function fuzz(name: string, seeds: Uint8Array[], parse: (b: Uint8Array) => unknown, domain: ErrorClass[], opts: { budgetMs?: number; maxCases?: number; seed?: number } = {}): void {
  const seed = opts.seed ?? 15;
  const rng = new Rng(seed, `fuzz-${name}`);
  for (const s of seeds) parse(s); // the seeds themselves are valid
  const start = Date.now();
  let cases = 0;
  let refused = 0;
  while (cases < (opts.maxCases ?? MAX_CASES) && Date.now() - start < (opts.budgetMs ?? BUDGET_MS)) {
    const input = mutate(rng, seeds[rng.int(seeds.length)]);
    cases++;
    const t = Date.now();
    try {
      parse(input);
    } catch (e) {
      const ok = domain.some((c) => e instanceof c) && (e as Error).message.length > 0;
      if (!ok) {
        const file = path.join(tmp, `${name}-case-${cases}.bin`);
        fs.writeFileSync(file, input);
        assert.fail(`${name}: mutation ${cases} (seed ${seed}) raised a non-domain ${(e as Error)?.constructor?.name}: ${(e as Error)?.message ?? e} (input kept in ${file})`);
      }
      refused++;
    }
    const took = Date.now() - t;
    assert.ok(took < HANG_MS, `${name}: mutation ${cases} (seed ${seed}) took ${took} ms`);
  }
  assert.ok(cases >= 50, `${name}: only ${cases} cases ran in the budget`);
  assert.ok(refused > 0, `${name}: no mutation was refused (is the parser checking anything?)`);
}

test('fuzz: safetensors', () => {
  const seeds = [
    serializeSafetensors({ a: f32([2, 3], [1, 2, 3, 4, 5, 6]), b: i64([2], [7, 8]), e: f32([0]) }, { note: 'x' }),
    new Uint8Array(fs.readFileSync(path.join(FIXTURES, 'golden/tiny/inputs.safetensors'))),
  ];
  fuzz('safetensors', seeds, (b) => parseSafetensors(b, 'fuzz.safetensors'), [SafetensorsError]);
});

const torchDomain = [TorchCheckpointError, PickleError];
const torchSeeds = ['uniter-like.zip.pt', 'wrapped-module.zip.pt', 'uniter-like.legacy.pt', 'bert-style.legacy.pt'].map((f) => new Uint8Array(fs.readFileSync(path.join(FIXTURES, 'interop', f))));

test('fuzz: torch zip checkpoints', () => {
  fuzz('torch-zip', torchSeeds.slice(0, 2), (b) => checkpointFromTorchFile(parseTorchFile(b, 'fuzz.pt')), torchDomain);
});

test('fuzz: torch legacy checkpoints', () => {
  fuzz('torch-legacy', torchSeeds.slice(2), (b) => checkpointFromTorchFile(parseTorchFile(b, 'fuzz.pt')), torchDomain);
});

test('fuzz: pickle', () => {
  // Plain pickles of every protocol from Python (no persistent ids).
  const plain = (JSON.parse(fs.readFileSync(path.join(FIXTURES, 'interop/pickles.json'), 'utf8')) as { plain: Record<string, string> }).plain;
  const seeds = Object.values(plain).map((b64) => new Uint8Array(Buffer.from(b64, 'base64')));
  fuzz('pickle', seeds, (b) => unpickle(b, { source: 'fuzz.pkl' }), [PickleError]);
  // (A state dict's data.pkl, with storages, is fuzzed inside the torch zip archives above.)
});

test('fuzz: msgpack', () => {
  const seeds = [
    packMsgpack({ id: 'a1', input_ids: [101, 7, 102], nested: { f: 1.5, neg: -3, big: 2 ** 40, t: true, n: null }, s: 'h\u00e9llo' }),
    packMsgpack([1, 'two', [3, [4, [5]]], { k: new Uint8Array([1, 2, 3]) }]),
  ];
  fuzz('msgpack', seeds, (b) => unpackMsgpack(b), [MsgpackError]);
});

test('fuzz: lz4 frames', () => {
  const text = new TextEncoder().encode('uniter '.repeat(200) + 'regions and words, words and regions. '.repeat(20));
  fuzz('lz4', [lz4FrameCompress(text), lz4FrameCompress(new Uint8Array(0)), lz4FrameCompress(Uint8Array.from({ length: 300 }, (_, i) => (i * 7919) & 255))], (b) => lz4FrameDecompress(b), [Lz4Error]);
});

test('fuzz: npz', () => {
  const arrays = new Map([
    ['features', { dtype: '<f2' as const, shape: [3, 4], data: new Uint16Array(12).fill(0x3c00) }],
    ['conf', { dtype: '<f4' as const, shape: [3], data: Float32Array.from([0.5, 0.25, 1]) }],
  ]);
  fuzz('npz', [writeNpz(arrays, false), writeNpz(arrays, true)], (b) => readNpz(b, 'fuzz.npz'), [NpyError]);
});

test('fuzz: LMDB environments', () => {
  const env = path.join(tmp, 'seed-env');
  writeLmdb(env, Array.from({ length: 40 }, (_, i): [string, Uint8Array] => [`key${String(i).padStart(3, '0')}`, new Uint8Array(i * 37).fill(i)]));
  const seed = new Uint8Array(fs.readFileSync(path.join(env, 'data.mdb')));
  const file = path.join(tmp, 'fuzz.mdb');
  fuzz(
    'lmdb',
    [seed],
    (b) => {
      fs.writeFileSync(file, b);
      const r = LmdbReader.open(file);
      try {
        for (const [, v] of r.entries()) void v.length;
      } finally {
        r.close();
      }
    },
    [LmdbError],
    { maxCases: 600 },
  );
});

test('fuzz: JSON pre-training configs', () => {
  const cfg = {
    model: { preset: 'tiny' },
    output_dir: 'runs/tiny',
    train_datasets: [{ name: 'coco', db: ['txt/coco_train.db'], img: ['img/coco'], tasks: ['itm', 'mlm', 'mrfr', 'mrckl'], mix_ratio: [2, 2, 1, 1] }],
    val_datasets: [{ name: 'coco', db: ['txt/coco_val.db'], img: ['img/coco'], tasks: ['itm', 'mlm'] }],
    num_train_steps: 100,
    warmup_steps: 10,
    learning_rate: 5e-5,
  };
  const text = new TextEncoder().encode(JSON.stringify(cfg, null, 1));
  const file = path.join(tmp, 'fuzz-config.json');
  fuzz(
    'json-config',
    [text],
    (b) => {
      fs.writeFileSync(file, b);
      return loadPretrainConfig(file, { checkPaths: false });
    },
    [ConfigError],
    { maxCases: 1500 },
  );
});

test('a 100k-deep JSON config is refused, not a stack overflow (case 10)', () => {
  const file = path.join(tmp, 'deep.json');
  fs.writeFileSync(file, '['.repeat(100_000) + ']'.repeat(100_000));
  assert.throws(() => loadPretrainConfig(file), (e: Error) => e instanceof ConfigError && /nesting deeper than 512 levels/.test(e.message));
});

test('num_train_steps 1e308 is refused (case 10)', () => {
  const file = path.join(tmp, 'huge-steps.json');
  fs.writeFileSync(file, JSON.stringify({ model: { preset: 'tiny' }, output_dir: 'runs/x', train_datasets: [{ name: 'c', db: ['t.db'], img: ['i'], tasks: ['mlm'] }], val_datasets: [{ name: 'c', db: ['t.db'], img: ['i'], tasks: ['mlm'] }], num_train_steps: 1e308, warmup_steps: 10 }));
  assert.throws(() => loadPretrainConfig(file, { checkPaths: false }), (e: Error) => e instanceof ConfigError && /num_train_steps.*expected an integer >= 1 and <= 2\^53 - 1, got 1e\+308/.test(e.message));
});
