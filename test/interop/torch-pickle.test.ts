import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readTorchCheckpoint } from '../../src/interop/torch-checkpoint.js';
import { PickleError, PickleSecurityError, PyDict, PySet, PyTuple, PyValue, unpickle } from '../../src/interop/torch-pickle.js';
import { TorchStorage, TorchTensor } from '../../src/interop/torch-tensor.js';
import { PickleWriter, makeStorage, orderedDict, serializeTorchLegacy, storedZip } from '../../src/interop/torch-writer.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/interop/', import.meta.url));
const pickles = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'pickles.json'), 'utf8')) as {
  plain: Record<string, string>;
  malicious: Record<string, string>;
  expected: Tagged;
};

type Tagged =
  | null
  | { bool: boolean }
  | { int: string }
  | { float: number }
  | { str: string }
  | { bytes: string }
  | { list: Tagged[] }
  | { tuple: Tagged[] }
  | { set: Tagged[] }
  | { dict: Array<[Tagged, Tagged]> }
  | { odict: Array<[Tagged, Tagged]> };

/** Assert that an unpickled value is the Python value CPython described (see make_fixtures.py). */
function assertMatches(actual: PyValue, expected: Tagged, at: string): void {
  if (expected === null) return assert.equal(actual, null, at);
  if ('bool' in expected) return assert.equal(actual, expected.bool, at);
  if ('int' in expected) {
    assert.ok(typeof actual === 'number' || typeof actual === 'bigint', `${at}: expected an int, got ${typeof actual}`);
    return assert.equal(BigInt(actual), BigInt(expected.int), at);
  }
  if ('float' in expected) {
    assert.equal(typeof actual, 'number', at);
    return assert.ok(Object.is(actual, expected.float), `${at}: ${String(actual)} !== ${expected.float}`);
  }
  if ('str' in expected) return assert.equal(actual, expected.str, at);
  if ('bytes' in expected) {
    assert.ok(actual instanceof Uint8Array, at);
    return assert.equal(Buffer.from(actual).toString('hex'), expected.bytes, at);
  }
  if ('list' in expected) {
    assert.ok(Array.isArray(actual), `${at}: expected a list`);
    assert.equal(actual.length, expected.list.length, at);
    return expected.list.forEach((e, i) => assertMatches(actual[i], e, `${at}[${i}]`));
  }
  if ('tuple' in expected) {
    assert.ok(actual instanceof PyTuple, `${at}: expected a tuple`);
    assert.equal(actual.items.length, expected.tuple.length, at);
    return expected.tuple.forEach((e, i) => assertMatches(actual.items[i], e, `${at}(${i})`));
  }
  if ('set' in expected) {
    assert.ok(actual instanceof PySet, `${at}: expected a set`);
    return expected.set.forEach((e, i) => assertMatches(actual.items[i], e, `${at}{${i}}`));
  }
  const pairs = 'dict' in expected ? expected.dict : expected.odict;
  assert.ok(actual instanceof PyDict, `${at}: expected a dict`);
  assert.equal(actual.ordered, 'odict' in expected, `${at}: OrderedDict-ness`);
  assert.equal(actual.entries.size, pairs.length, at);
  const keys = [...actual.entries.keys()];
  pairs.forEach(([k, v], i) => {
    assertMatches(keys[i] as PyValue, k, `${at} key ${i}`);
    assertMatches(actual.entries.get(keys[i]) as PyValue, v, `${at}.${String(keys[i])}`);
  });
}

/** Bytes from latin1 strings and byte lists. */
function pk(...parts: Array<string | number[] | Uint8Array>): Uint8Array {
  return Uint8Array.from(parts.flatMap((p) => (typeof p === 'string' ? [...p].map((c) => c.charCodeAt(0)) : [...p])));
}

const u32 = (n: number) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24];
const binunicode = (s: string) => pk('X', u32(s.length), s);

describe('unpickle: CPython pickles of every protocol', () => {
  for (const [protocol, b64] of Object.entries(pickles.plain)) {
    it(`protocol ${protocol}`, () => {
      const buf = Buffer.from(b64, 'base64');
      const { value, end } = unpickle(buf, { source: `protocol-${protocol}` });
      assert.equal(end, buf.length);
      const p = Number(protocol);
      const expected = pickles.expected as { dict: Array<[Tagged, Tagged]> };
      const dropped = new Set([...(p < 4 ? ['frozen', 'set'] : []), ...(p < 5 ? ['bytearray'] : [])]);
      const pairs = expected.dict.filter(([k]) => !(k && 'str' in k && dropped.has(k.str)));
      assertMatches(value, { dict: pairs }, `protocol ${protocol}`);
      // The memo keeps identity: both entries of 'shared' are the same list object.
      const shared = (value as PyDict).entries.get('shared') as PyValue[][];
      assert.equal(shared[0], shared[1]);
    });
  }

  it('reads consecutive pickles from an offset and reports where each ends', () => {
    const a = new PickleWriter().dump('first');
    const b = new PickleWriter().dump([1, 2]);
    const both = new Uint8Array([...a, ...b]);
    const r1 = unpickle(both, { source: 'two' });
    assert.equal(r1.value, 'first');
    assert.equal(r1.end, a.length);
    const r2 = unpickle(both, { source: 'two', offset: r1.end });
    assert.deepEqual(r2.value, [1, 2]);
  });

  it('round-trips the writer through the reader (ints of every width, floats, nesting, memo)', () => {
    const shared = ['x'];
    const od = orderedDict([
      ['small', 7],
      ['neg', -70000],
      ['big', 2n ** 70n],
      ['negbig', -(2n ** 64n) - 5n],
      ['float', 0.1],
      ['list', [shared, shared, new PyTuple([1, 'two', null, true, false])]],
      ['bytes', Uint8Array.from([0, 200, 255])],
    ]);
    const { value } = unpickle(new PickleWriter().dump(od), { source: 'writer' });
    assert.ok(value instanceof PyDict && value.ordered);
    assert.equal(value.entries.get('small'), 7);
    assert.equal(value.entries.get('neg'), -70000);
    assert.equal(value.entries.get('big'), 2n ** 70n);
    assert.equal(value.entries.get('negbig'), -(2n ** 64n) - 5n);
    assert.equal(value.entries.get('float'), 0.1);
    const list = value.entries.get('list') as PyValue[];
    assert.equal(list[0], list[1]);
    assert.deepEqual((list[2] as PyTuple).items, [1, 'two', null, true, false]);
    assert.deepEqual([...(value.entries.get('bytes') as Uint8Array)], [0, 200, 255]);
  });

  it('names the source and reports truncation at every cut point', () => {
    const full = Buffer.from(pickles.plain['2'], 'base64');
    for (let cut = 0; cut < full.length; cut += 97) {
      assert.throws(
        () => unpickle(full.subarray(0, cut), { source: 'cut.pkl' }),
        (e: unknown) => e instanceof PickleError && e.message.startsWith('cut.pkl: ') && /truncated|underflow|MARK/.test(e.message),
        `cut at ${cut}`,
      );
    }
  });

  it('rejects unknown opcodes and unsupported protocols with the offset', () => {
    assert.throws(() => unpickle(pk([0x80, 2, 0xff]), { source: 'x' }), /unknown opcode 0xff .*at byte 2/);
    assert.throws(() => unpickle(pk([0x80, 9, 0x4e, 0x2e]), { source: 'x' }), /unsupported pickle protocol 9/);
  });
});

describe('unpickle: refusing code execution', () => {
  const isRefusal = (name: string) => (e: unknown) => e instanceof PickleSecurityError && e.message.includes(`'${name}'`);

  for (const [label, b64] of Object.entries(pickles.malicious)) {
    it(`CPython-written ${label}`, () => {
      // CPython writes Python 2 module names (__builtin__) below protocol 3.
      const protocol = Number(/protocol (\d)/.exec(label)?.[1]);
      const name = label.startsWith('eval') ? (protocol < 3 ? '__builtin__.eval' : 'builtins.eval') : 'posix.system';
      assert.throws(() => unpickle(Buffer.from(b64, 'base64'), { source: 'evil.pkl' }), isRefusal(name));
    });
  }

  it('refuses the global before anything after it is evaluated', () => {
    let persistentCalls = 0;
    // GLOBAL os.system, then an argument built from a persistent id, then REDUCE.
    const evil = pk([0x80, 2], 'cos\nsystem\n', binunicode('storage'), [0x85, 0x51, 0x85, 0x52, 0x2e]);
    assert.throws(
      () =>
        unpickle(evil, {
          source: 'evil.pkl',
          persistentLoad: () => {
            persistentCalls++;
            return null;
          },
        }),
      (e: unknown) => isRefusal('os.system')(e) && /GLOBAL at byte 2\)/.test((e as Error).message),
    );
    assert.equal(persistentCalls, 0);
  });

  const cases: Array<[string, Uint8Array, string]> = [
    ['GLOBAL builtins.eval', pk([0x80, 2], 'cbuiltins\neval\n', binunicode('1+1'), [0x85, 0x52, 0x2e]), 'builtins.eval'],
    ['GLOBAL __builtin__.getattr (Python 2 name)', pk('c__builtin__\ngetattr\n(tR.'), '__builtin__.getattr'],
    ['GLOBAL subprocess.Popen', pk([0x80, 2], 'csubprocess\nPopen\n)R.'), 'subprocess.Popen'],
    ['STACK_GLOBAL os.system', pk([0x80, 4, 0x8c, 2], 'os', [0x8c, 6], 'system', [0x93, 0x29, 0x52, 0x2e]), 'os.system'],
    // The names come from the memo, as CPython's pickler writes repeated strings.
    ['STACK_GLOBAL through memoized strings', pk([0x80, 4, 0x8c, 8], 'builtins', [0x94, 0x8c, 4], 'exec', [0x94, 0x68, 0, 0x68, 1, 0x93, 0x29, 0x52, 0x2e]), 'builtins.exec'],
    ['INST os.system', pk('(S\'ls\'\nios\nsystem\n.'), 'os.system'],
    ['OBJ of a refused class', pk('(cposix\nsystem\nS\'ls\'\no.'), 'posix.system'],
    ['NEWOBJ of a refused class', pk([0x80, 2], 'cbuiltins\nobject\n)', [0x81, 0x2e]), 'builtins.object'],
    ['torch name outside the allow-list', pk([0x80, 2], 'ctorch\nload\n', binunicode('x.pt'), [0x85, 0x52, 0x2e]), 'torch.load'],
  ];
  for (const [label, bytes, name] of cases) {
    it(`refuses ${label}`, () => {
      assert.throws(() => unpickle(bytes, { source: 'evil.pkl' }), isRefusal(name));
    });
  }

  it('refuses REDUCE on an allowed global that is not a callable (a storage class)', () => {
    const bytes = pk([0x80, 2], 'ctorch\nFloatStorage\n', [0x29, 0x52, 0x2e]);
    assert.throws(() => unpickle(bytes, { source: 'x' }), (e: unknown) => e instanceof PickleSecurityError && /calling torch\.FloatStorage is not allowed/.test((e as Error).message));
  });

  it('refuses REDUCE on a value that is not a global', () => {
    const bytes = pk([0x80, 2], binunicode('os.system'), [0x29, 0x52, 0x2e]);
    assert.throws(() => unpickle(bytes, { source: 'x' }), (e: unknown) => e instanceof PickleSecurityError && /call of str 'os\.system' is not allowed/.test((e as Error).message));
  });

  it('refuses NEWOBJ on torch.Tensor, BUILD on a list, the extension registry and out-of-band buffers', () => {
    assert.throws(() => unpickle(pk([0x80, 2], 'ctorch\nTensor\n)', [0x81, 0x2e]), { source: 'x' }), /NEWOBJ of torch\.Tensor is not allowed/);
    assert.throws(() => unpickle(pk([0x80, 2, 0x5d, 0x7d, 0x62, 0x2e]), { source: 'x' }), /BUILD on a list .* is not allowed/);
    assert.throws(() => unpickle(pk([0x80, 2, 0x82, 1, 0x2e]), { source: 'x' }), PickleSecurityError);
    assert.throws(() => unpickle(pk([0x80, 5, 0x97, 0x2e]), { source: 'x' }), PickleSecurityError);
  });

  it('refuses a malicious data.pkl inside a torch zip checkpoint, naming the file and entry', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-evil-'));
    try {
      const file = path.join(dir, 'evil.pt');
      fs.writeFileSync(file, storedZip([['archive/data.pkl', Buffer.from(pickles.malicious['inside state dict protocol 2'], 'base64')]], 64));
      assert.throws(
        () => readTorchCheckpoint(file),
        (e: unknown) => e instanceof PickleSecurityError && e.message.startsWith(`${file}:archive/data.pkl: refused global 'posix.system'`),
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a malicious object pickle inside a legacy checkpoint', () => {
    const legit = serializeTorchLegacy(orderedDict([['w', makeStorage('1', 'float32', [1])]]));
    // Replace the legacy file's object pickle by the malicious one: magic, version and sys_info stay.
    let pos = 0;
    for (let i = 0; i < 3; i++) pos = unpickle(legit, { source: 'x', offset: pos }).end;
    const evil = Buffer.concat([legit.subarray(0, pos), Buffer.from(pickles.malicious['os.system protocol 2'], 'base64')]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-evil-'));
    try {
      const file = path.join(dir, 'evil-legacy.pt');
      fs.writeFileSync(file, evil);
      assert.throws(() => readTorchCheckpoint(file), isRefusal('posix.system'));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('unpickle: the allowed torch callables', () => {
  const storage = new TorchStorage('0', 'float32', 6, 'cpu');
  const persistentLoad = () => storage;
  const pid = pk(binunicode('storage'), [0x85, 0x51]); // ('storage',) BINPERSID

  it('_rebuild_tensor_v2 with a torch.Size argument and an OrderedDict of hooks', () => {
    const bytes = pk(
      [0x80, 2],
      'ctorch._utils\n_rebuild_tensor_v2\n(',
      pid,
      [0x4b, 1],
      'ctorch\nSize\n',
      [0x4b, 2, 0x4b, 2, 0x86, 0x85, 0x52], // torch.Size((2, 2))
      [0x4b, 1, 0x4b, 2, 0x86], // stride (1, 2)
      [0x89],
      'ccollections\nOrderedDict\n)R',
      't',
      [0x52, 0x2e],
    );
    const t = unpickle(bytes, { source: 'x', persistentLoad }).value;
    assert.ok(t instanceof TorchTensor);
    assert.deepEqual([t.offset, t.shape, t.stride, t.dtype], [1, [2, 2], [1, 2], 'float32']);
  });

  it('_rebuild_tensor_v3 reinterprets the storage as the given dtype', () => {
    const bytes = pk([0x80, 2], 'ctorch._utils\n_rebuild_tensor_v3\n(', pid, [0x4b, 0, 0x4b, 3, 0x85, 0x4b, 1, 0x85, 0x89, 0x7d], 'ctorch\nint32\n', 't', [0x52, 0x2e]);
    const t = unpickle(bytes, { source: 'x', persistentLoad }).value as TorchTensor;
    assert.equal(t.dtype, 'int32');
    assert.deepEqual(t.shape, [3]);
  });

  it('_rebuild_parameter and _rebuild_from_type_v2 unwrap to the tensor; a foreign tensor type is refused', () => {
    const inner = pk('ctorch._utils\n_rebuild_tensor_v2\n(', pid, [0x4b, 0, 0x4b, 6, 0x85, 0x4b, 1, 0x85, 0x88, 0x7d], 't', [0x52]);
    const param = pk([0x80, 2], 'ctorch._utils\n_rebuild_parameter\n', inner, [0x88, 0x7d, 0x87, 0x52, 0x2e]);
    assert.ok(unpickle(param, { source: 'x', persistentLoad }).value instanceof TorchTensor);
    const fromType = (cls: string) =>
      pk([0x80, 2], 'ctorch._tensor\n_rebuild_from_type_v2\n(', 'ctorch._utils\n_rebuild_tensor_v2\n', cls, '(', pid, [0x4b, 0, 0x4b, 6, 0x85, 0x4b, 1, 0x85, 0x89, 0x7d], 't', [0x7d], 't', [0x52, 0x2e]);
    assert.ok(unpickle(fromType('ctorch.nn.parameter\nParameter\n'), { source: 'x', persistentLoad }).value instanceof TorchTensor);
    assert.throws(() => unpickle(fromType('cmymodule\nMyTensor\n'), { source: 'x', persistentLoad }), /refused global 'mymodule\.MyTensor'/);
  });

  it('a pickle without a storage resolver may not use persistent ids', () => {
    assert.throws(() => unpickle(pk([0x80, 2], pid, [0x2e]), { source: 'x' }), PickleSecurityError);
  });

  it('keeps the state dict _metadata attribute set by BUILD', () => {
    const meta = new PyDict();
    meta.entries.set('version', 1);
    const od = orderedDict([['a', 1]]);
    od.attributes = meta;
    const back = unpickle(new PickleWriter().dump(od), { source: 'x' }).value as PyDict;
    assert.equal((back.attributes as PyDict).entries.get('version'), 1);
  });
});
