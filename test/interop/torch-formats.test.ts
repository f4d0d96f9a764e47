import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { HostTensor } from '../../src/engine/host.js';
import { checkpointFromTorchFile, parseTorchFile, readTorchCheckpoint } from '../../src/interop/torch-checkpoint.js';
import { PyDict, PyGlobal, PyTuple, PyValue, unpickle } from '../../src/interop/torch-pickle.js';
import { TorchCheckpointError, TorchStorage, TorchTensor, byteswapInPlace, encodeTensorBytes } from '../../src/interop/torch-tensor.js';
import {
  PickleWriter,
  TorchSaveFormat,
  contiguousTensor,
  makeStorage,
  orderedDict,
  serializeTorchCheckpoint,
  serializeTorchLegacy,
  serializeTorchZip,
  storedZip,
} from '../../src/interop/torch-writer.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/interop/', import.meta.url));
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-interop-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));

interface Expected {
  tensors: Record<string, { dtype: string; shape: number[]; values: Array<number> }>;
  shared: string[][];
}
const expected = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'expected.json'), 'utf8')) as Record<string, Expected>;

function values(t: HostTensor): Array<number | bigint> {
  return Array.from(t.data as ArrayLike<number | bigint>);
}

function write(name: string, bytes: Uint8Array): string {
  const file = path.join(TMP, name);
  fs.writeFileSync(file, bytes);
  return file;
}

describe('checkpoints written by PyTorch 1.13', () => {
  for (const name of ['uniter-like.zip.pt', 'uniter-like.legacy.pt', 'wrapped-module.zip.pt', 'bert-style.legacy.pt']) {
    it(`${name}: every tensor as torch.load sees it`, () => {
      const exp = expected[name];
      const ckpt = readTorchCheckpoint(path.join(FIXTURES, name));
      assert.equal(ckpt.format, name.includes('.zip.') ? 'zip' : 'legacy');
      assert.deepEqual([...ckpt.tensors.keys()], Object.keys(exp.tensors).sort((a, b) => [...ckpt.tensors.keys()].indexOf(a) - [...ckpt.tensors.keys()].indexOf(b)));
      assert.equal(ckpt.tensors.size, Object.keys(exp.tensors).length);
      for (const [key, e] of Object.entries(exp.tensors)) {
        const t = ckpt.tensors.get(key) as HostTensor;
        assert.deepEqual(t.shape, e.shape, key);
        assert.equal(ckpt.sourceDtypes.get(key), e.dtype, key);
        const got = values(t);
        assert.equal(got.length, e.values.length, key);
        // int64 values above 2^53 are compared as BigInt; floats must be bit-exact (float16 widening is exact).
        got.forEach((v, i) => assert.ok(typeof v === 'bigint' ? v === BigInt(e.values[i]) : Object.is(v, e.values[i]) || v === e.values[i], `${key}[${i}]: ${v} != ${e.values[i]}`));
      }
      const norm = (groups: string[][]) => groups.map((g) => [...g].sort().join(',')).sort();
      assert.deepEqual(norm(ckpt.sharedStorage), norm(exp.shared));
    });
  }

  it('detects the official ties as the same view of one storage, but not other views of a shared storage', () => {
    const ckpt = readTorchCheckpoint(path.join(FIXTURES, 'uniter-like.zip.pt'));
    assert.deepEqual(Object.fromEntries(ckpt.ties), {
      'cls.predictions.decoder.weight': 'uniter.embeddings.word_embeddings.weight',
      'feat_regress.weight': 'uniter.img_embeddings.img_linear.weight',
    });
  });

  it('finds the state dict under model_state and reads a module state_dict (OrderedDict with _metadata)', () => {
    const tf = parseTorchFile(fs.readFileSync(path.join(FIXTURES, 'wrapped-module.zip.pt')), 'wrapped');
    const ckpt = checkpointFromTorchFile(tf);
    assert.equal(ckpt.wrapper, 'model_state');
    assert.deepEqual([...ckpt.tensors.keys()], ['0.weight', '0.bias', '1.weight', '1.bias']);
    const sd = (tf.root as PyDict).entries.get('model_state') as PyDict;
    assert.ok(sd.attributes instanceof PyDict && (sd.attributes as PyDict).entries.has('_metadata'));
  });
});

describe('writer -> reader round trips', () => {
  const base = makeStorage('7', 'float32', Array.from({ length: 12 }, (_, i) => i * 0.5 - 2));
  const half = makeStorage('3', 'float16', [0.1, -2, 65504, 6e-8, 1 / 3, -0]);
  const root = (): PyDict =>
    orderedDict([
      ['enc.weight', contiguousTensor(half, [2, 3])],
      ['dec.weight', contiguousTensor(half, [2, 3])],
      ['transposed', new TorchTensor(base, 0, [4, 3], [1, 4], 'float32')],
      ['window', new TorchTensor(base, 5, [2, 2], [4, 1], 'float32')],
      ['ids', contiguousTensor(makeStorage('11', 'int64', [-1n, 2n ** 62n, 0n]), [3])],
      ['flags', contiguousTensor(makeStorage('12', 'bool', [1, 0, 1, 1]), [2, 2])],
      ['bf', contiguousTensor(makeStorage('13', 'bfloat16', [1, -0.5, 3e38]), [3])],
      ['small', contiguousTensor(makeStorage('14', 'int8', [-128, 127]), [2])],
      ['scalar', contiguousTensor(makeStorage('15', 'float64', [Math.PI]), [])],
    ]);

  for (const format of ['zip', 'legacy', 'tar'] as TorchSaveFormat[]) {
    it(`${format}: values, strided views, dtypes and ties`, () => {
      const file = write(`round.${format}.pt`, serializeTorchCheckpoint(root(), format));
      const ckpt = readTorchCheckpoint(file);
      assert.equal(ckpt.format, format);
      // What PyTorch gives for these values through float16 (torch.tensor(...).half().float()).
      assert.deepEqual(values(ckpt.tensors.get('enc.weight') as HostTensor), [0.0999755859375, -2, 65504, 5.960464477539063e-8, 0.333251953125, -0]);
      assert.deepEqual(values(ckpt.tensors.get('transposed') as HostTensor), [-2, 0, 2, -1.5, 0.5, 2.5, -1, 1, 3, -0.5, 1.5, 3.5]);
      assert.deepEqual(values(ckpt.tensors.get('window') as HostTensor), [0.5, 1, 2.5, 3]);
      assert.deepEqual(values(ckpt.tensors.get('ids') as HostTensor), [-1n, 2n ** 62n, 0n]);
      assert.deepEqual(ckpt.tensors.get('flags'), { dtype: 'bool', shape: [2, 2], data: Uint8Array.from([1, 0, 1, 1]) });
      assert.deepEqual(values(ckpt.tensors.get('bf') as HostTensor), [1, -0.5, 3.00405527047391e38]); // torch's bfloat16 rounding of 3e38
      assert.deepEqual(ckpt.tensors.get('small'), { dtype: 'int32', shape: [2], data: Int32Array.from([-128, 127]) });
      assert.deepEqual(ckpt.tensors.get('scalar'), { dtype: 'float64', shape: [], data: Float64Array.from([Math.PI]) });
      assert.deepEqual(Object.fromEntries(ckpt.ties), { 'dec.weight': 'enc.weight' });
      assert.deepEqual(ckpt.sharedStorage.map((g) => g.join()), ['enc.weight,dec.weight', 'transposed,window']);
      assert.equal(ckpt.sourceDtypes.get('enc.weight'), 'float16');
    });
  }

  it('zip: any top folder name, and big-endian storages are byte-swapped', () => {
    const values32 = [1.5, -2.25, 1e-3];
    const bytes = encodeTensorBytes('float32', values32);
    byteswapInPlace(bytes, 4);
    const storage = new TorchStorage('0', 'float32', 3, 'cuda:0');
    storage.bytes = bytes;
    const file = write('big.pt', serializeTorchZip(orderedDict([['w', contiguousTensor(storage, [3])]]), { archiveName: 'model_step_6500', byteorder: 'big' }));
    assert.deepEqual(values(readTorchCheckpoint(file).tensors.get('w') as HostTensor), values32.map(Math.fround));
  });

  it('zip: an untyped (byte) storage read through _rebuild_tensor_v3 with a dtype', () => {
    const latin = (t: string) => [...t].map((c) => c.charCodeAt(0));
    const str = (t: string) => [0x58, t.length, 0, 0, 0, ...latin(t)];
    // {'w': _rebuild_tensor_v3(<('storage', torch.UntypedStorage, '0', 'cpu', 8)>, 0, (2,), (1,), False, {}, torch.float32)}
    const pickle = Uint8Array.from([
      ...[0x80, 2, 0x7d, ...str('w')],
      ...latin('ctorch._utils\n_rebuild_tensor_v3\n('),
      ...[0x28, ...str('storage'), ...latin('ctorch\nUntypedStorage\n'), ...str('0'), ...str('cpu'), 0x4b, 8, 0x74, 0x51],
      ...[0x4b, 0, 0x4b, 2, 0x85, 0x4b, 1, 0x85, 0x89, 0x7d, ...latin('ctorch\nfloat32\n'), 0x74, 0x52],
      ...[0x73, 0x2e],
    ]);
    const file = write('untyped.pt', storedZip([['archive/data.pkl', pickle], ['archive/data/0', encodeTensorBytes('float32', [1.5, -2])]], 64));
    const ckpt = readTorchCheckpoint(file);
    assert.deepEqual(ckpt.tensors.get('w'), { dtype: 'float32', shape: [2], data: Float32Array.from([1.5, -2]) });
    assert.equal(ckpt.sourceDtypes.get('w'), 'float32');
  });

  it('legacy: storage views (view_metadata) resolve into their root storage', () => {
    const rootStorage = makeStorage('140', 'float32', [0, 1, 2, 3, 4, 5]);
    const view = new TorchStorage('150', 'float32', 3, 'cpu', { root: rootStorage, offset: 2 });
    const file = write('views.pt', serializeTorchLegacy(orderedDict([['whole', contiguousTensor(rootStorage, [6])], ['part', contiguousTensor(view, [3])]])));
    const ckpt = readTorchCheckpoint(file);
    assert.deepEqual(values(ckpt.tensors.get('part') as HostTensor), [2, 3, 4]);
    assert.deepEqual(ckpt.sharedStorage, [['whole', 'part']]);
    assert.equal(ckpt.ties.size, 0);
  });

  it('keeps non-tensor entries out and lists them', () => {
    const file = write('mixed.pt', serializeTorchZip(orderedDict([['w', contiguousTensor(makeStorage('0', 'float32', [1]), [1])], ['step', 12]])));
    assert.deepEqual(readTorchCheckpoint(file).skipped, [{ name: 'step', value: 'int 12' }]);
  });
});

describe('bad checkpoints', () => {
  const good = () => orderedDict([['layer.weight', contiguousTensor(makeStorage('0', 'float32', [1, 2, 3, 4]), [2, 2])]]);

  it('a truncated zip names the file', () => {
    const bytes = serializeTorchZip(good());
    const file = write('cut.zip.pt', bytes.subarray(0, bytes.length - 30));
    assert.throws(() => readTorchCheckpoint(file), (e: unknown) => e instanceof TorchCheckpointError && e.message.startsWith(`${file}: cannot read the zip archive`));
  });

  it('a missing storage entry names the file and the entry', () => {
    const pickle = new PickleWriter((o) => (o instanceof TorchStorage ? new PyTuple(['storage', floatStorageClass(), '0', 'cpu', 4]) : null)).dump(good());
    const file = write('nostorage.pt', storedZip([['archive/data.pkl', pickle], ['archive/version', new TextEncoder().encode('3\n')]], 64));
    assert.throws(() => readTorchCheckpoint(file), messageStarts(`${file}: storage entry 'archive/data/0' is missing from the archive`));
  });

  it('a short storage entry names the entry and both sizes', () => {
    const pickle = new PickleWriter((o) => (o instanceof TorchStorage ? new PyTuple(['storage', floatStorageClass(), '0', 'cpu', 4]) : null)).dump(good());
    const file = write('short.pt', storedZip([['archive/data.pkl', pickle], ['archive/data/0', new Uint8Array(12)]], 64));
    assert.throws(() => readTorchCheckpoint(file), /storage entry 'archive\/data\/0' holds 12 bytes, but 4 float32 elements need 16/);
  });

  it('a truncated legacy file names the storage that is cut', () => {
    const bytes = serializeTorchLegacy(good());
    const file = write('cut.legacy.pt', bytes.subarray(0, bytes.length - 3));
    assert.throws(() => readTorchCheckpoint(file), messageStarts(`${file}: truncated file: storage '0' needs 16 bytes`));
    const noData = write('cut2.legacy.pt', bytes.subarray(0, bytes.length - 16 - 8));
    assert.throws(() => readTorchCheckpoint(noData), /element count of storage '0' is missing/);
  });

  it('a view reaching past its storage names the tensor', () => {
    const s = makeStorage('0', 'float32', [1, 2, 3]);
    const file = write('oob.pt', serializeTorchZip(orderedDict([['too.big', new TorchTensor(s, 1, [2, 2], [2, 1], 'float32')]])));
    assert.throws(() => readTorchCheckpoint(file), new RegExp(`${escape(file)}: tensor 'too\\.big': the view .* reaches element 4 but storage '0' holds 3`));
  });

  it('files that are not checkpoints, TorchScript archives, pickled modules and non-dicts are explained', () => {
    assert.throws(() => readTorchCheckpoint(write('notes.txt', new TextEncoder().encode('{"hello": 1}'))), /notes\.txt: not a PyTorch checkpoint/);
    assert.throws(() => readTorchCheckpoint(path.join(TMP, 'absent.pt')), /absent\.pt: cannot read checkpoint/);
    const script = write('script.pt', storedZip([['m/data.pkl', new PickleWriter().dump(null)], ['m/constants.pkl', new PickleWriter().dump(null)], ['m/code/__torch__.py', new Uint8Array(1)]], 64));
    assert.throws(() => readTorchCheckpoint(script), /TorchScript archive/);
    assert.throws(() => readTorchCheckpoint(write('list.pt', serializeTorchZip([1, 2] as PyValue))), /holds a list \(2 items\), not a state dict/);
    const noTensors = new PyDict();
    noTensors.entries.set('epoch', 3);
    noTensors.entries.set('optimizer', new PyDict());
    assert.throws(() => readTorchCheckpoint(write('nothing.pt', serializeTorchZip(noTensors))), /no state dict found: the top-level dict \(keys: epoch, optimizer\)/);
  });

  it('a legacy file that pickles a whole nn.Module is refused with advice', () => {
    const file = write('module.pt', legacyWithObject(pickleModulePid()));
    assert.throws(() => readTorchCheckpoint(file), /pickles a whole nn\.Module .* save model\.state_dict\(\) instead/);
  });
});

/** A legacy checkpoint whose object pickle (the 4th) is replaced. */
function legacyWithObject(objectPickle: Uint8Array): Uint8Array {
  const legit = serializeTorchLegacy(new PyDict());
  const starts = [0];
  for (let i = 0; i < 4; i++) starts.push(unpickle(legit, { source: 'x', offset: starts[i], persistentLoad: () => null }).end);
  return Buffer.concat([legit.subarray(0, starts[3]), objectPickle, legit.subarray(starts[4])]);
}

/** A pickle of just a ('module', class, source_file, source) persistent id, as torch.save(model) writes. */
function pickleModulePid(): Uint8Array {
  const body = new PickleWriter().dump(new PyTuple(['module', 'MyNet', 'net.py', 'class MyNet: ...']));
  // "PROTO 2, <tuple>, STOP" becomes "PROTO 2, <tuple>, BINPERSID, STOP".
  return Buffer.concat([body.subarray(0, body.length - 1), Uint8Array.from([0x51, 0x2e])]);
}

function floatStorageClass(): PyGlobal {
  return new PyGlobal('torch', 'FloatStorage', { kind: 'storage-class', dtype: 'float32' });
}

/** assert.throws validator: the error message starts with `prefix` (the file name comes first). */
function messageStarts(prefix: string): (e: unknown) => boolean {
  return (e: unknown) => e instanceof Error && e.message.startsWith(prefix);
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
