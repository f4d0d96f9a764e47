/**
 * Writing PyTorch checkpoints without Python: a protocol-2 pickler (what `torch.save` uses) and
 * the three containers (zip, legacy stream, pre-1.0 tar). `uniter convert --to-torch` uses it for
 * export; the tests use it to build checkpoints of every shape the readers must handle (float16,
 * shared storages, strided views, wrappers, old names).
 *
 * Values are the reader's Python model (torch-pickle.ts): a TorchTensor pickles as
 * `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())`
 * and its TorchStorage as the persistent id torch uses for the chosen container.
 */
import * as path from 'node:path';
import { HostTensor } from '../engine/host.js';
import { writeFileAtomic } from '../util/atomic.js';
import type { PhaseProgress } from '../util/progress.js';
import { LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION } from './torch-legacy.js';
import { PyDict, PyGlobal, PyKey, PySet, PyTuple, PyValue, allowedGlobal } from './torch-pickle.js';
import { TorchDType, TorchStorage, TorchTensor, contiguousStrides, encodeTensorBytes, storageClassName } from './torch-tensor.js';

export type TorchSaveFormat = 'zip' | 'legacy' | 'tar';

/**
 * The persistent id a pickler writes for a storage or tensor (BINPERSID), or null to pickle the
 * object itself (a tensor then becomes a `_rebuild_tensor_v2` call; a storage has no other form).
 */
export type PersistentId = (obj: TorchStorage | TorchTensor) => PyValue | null;

/** A protocol-2 pickler with memoization (strings, globals, containers), as CPython writes it. */
export class PickleWriter {
  private chunks: Uint8Array[] = [];
  private memo = new Map<unknown, number>();
  private size = 0;

  constructor(private readonly persistentId?: PersistentId) {}

  dump(value: PyValue): Uint8Array {
    this.raw([0x80, 2]);
    this.save(value);
    this.raw([0x2e]);
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }

  private raw(bytes: ArrayLike<number>): void {
    const u = bytes instanceof Uint8Array ? bytes : Uint8Array.from(bytes);
    this.chunks.push(u);
    this.size += u.length;
  }

  private put(key: unknown): void {
    const idx = this.memo.size;
    this.memo.set(key, idx);
    if (idx < 256) this.raw([0x71, idx]);
    else this.raw([0x72, ...u32le(idx)]);
  }

  private get(key: unknown): boolean {
    const idx = this.memo.get(key);
    if (idx === undefined) return false;
    if (idx < 256) this.raw([0x68, idx]);
    else this.raw([0x6a, ...u32le(idx)]);
    return true;
  }

  private save(v: PyValue): void {
    if (v === null) return this.raw([0x4e]);
    if (v === true) return this.raw([0x88]);
    if (v === false) return this.raw([0x89]);
    if (typeof v === 'number') {
      if (!Number.isInteger(v)) {
        const b = new Uint8Array(9);
        b[0] = 0x47;
        new DataView(b.buffer).setFloat64(1, v, false);
        return this.raw(b);
      }
      return this.saveInt(BigInt(v));
    }
    if (typeof v === 'bigint') return this.saveInt(v);
    if (typeof v === 'string') {
      if (this.get(`s:${v}`)) return;
      const bytes = new TextEncoder().encode(v);
      this.raw([0x58, ...u32le(bytes.length)]);
      this.raw(bytes);
      return this.put(`s:${v}`);
    }
    if (v instanceof Uint8Array) {
      // Protocol 2 has no bytes opcode: CPython writes _codecs.encode(latin1 text, 'latin1').
      this.saveGlobal('_codecs', 'encode');
      let text = '';
      for (const b of v) text += String.fromCharCode(b);
      this.save(new PyTuple([text, 'latin1']));
      return this.raw([0x52]);
    }
    if (Array.isArray(v)) {
      if (this.get(v)) return;
      this.raw([0x5d]);
      this.put(v);
      this.batch(v, () => this.raw([0x65]), (item) => this.save(item));
      return;
    }
    if (v instanceof PyTuple) return this.saveTuple(v.items);
    if (v instanceof PyDict) return this.saveDict(v);
    if (v instanceof PyGlobal) return this.saveGlobal(v.module, v.name);
    if (v instanceof TorchStorage || v instanceof TorchTensor) {
      const pid = this.persistentId?.(v) ?? null;
      if (pid !== null) {
        this.save(pid);
        return this.raw([0x51]);
      }
      if (v instanceof TorchStorage) throw new Error(`PickleWriter: storage '${v.key}' needs a persistent id, and this pickle gives none`);
      this.saveGlobal('torch._utils', '_rebuild_tensor_v2');
      this.saveTuple([v.storage, v.offset, new PyTuple(v.shape), new PyTuple(v.stride), v.requiresGrad, new PyDict(true)]);
      return this.raw([0x52]);
    }
    if (v instanceof PySet) throw new Error('PickleWriter: sets are not needed in checkpoints and not written');
    throw new Error('PickleWriter: unsupported value');
  }

  private saveInt(v: bigint): void {
    if (v >= 0n && v < 256n) return this.raw([0x4b, Number(v)]);
    if (v >= 0n && v < 65536n) return this.raw([0x4d, Number(v) & 0xff, Number(v) >> 8]);
    if (v >= -(2n ** 31n) && v < 2n ** 31n) return this.raw([0x4a, ...i32le(Number(v))]);
    const bytes = encodeLong(v);
    this.raw([0x8a, bytes.length]);
    this.raw(bytes);
  }

  private saveTuple(items: readonly PyValue[]): void {
    if (items.length === 0) return this.raw([0x29]);
    if (items.length <= 3) {
      for (const it of items) this.save(it);
      return this.raw([0x85 + items.length - 1]);
    }
    this.raw([0x28]);
    for (const it of items) this.save(it);
    this.raw([0x74]);
  }

  private saveDict(d: PyDict): void {
    if (this.get(d)) return;
    if (d.ordered) {
      this.saveGlobal('collections', 'OrderedDict');
      this.raw([0x29, 0x52]);
    } else {
      this.raw([0x7d]);
    }
    this.put(d);
    const flat: Array<[PyKey, PyValue]> = [...d.entries];
    this.batch(flat, () => this.raw([0x75]), ([k, val]) => {
      this.save(k);
      this.save(val);
    });
    if (d.attributes !== null) {
      this.save(d.attributes);
      this.raw([0x62]);
    }
  }

  /** MARK ... op in batches of 1000, as CPython does for APPENDS/SETITEMS. */
  private batch<T>(items: T[], close: () => void, one: (item: T) => void): void {
    for (let i = 0; i < items.length; i += 1000) {
      this.raw([0x28]);
      for (const it of items.slice(i, i + 1000)) one(it);
      close();
    }
  }

  private saveGlobal(module: string, name: string): void {
    if (this.get(`g:${module}.${name}`)) return;
    this.raw(new TextEncoder().encode(`c${module}\n${name}\n`));
    this.put(`g:${module}.${name}`);
  }

}

function u32le(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}

function i32le(v: number): number[] {
  return u32le(v >>> 0);
}

/** Minimal little-endian two's complement bytes of an integer (the LONG1 payload). */
export function encodeLong(v: bigint): Uint8Array {
  if (v === 0n) return new Uint8Array(0);
  const out: number[] = [];
  let x = v;
  for (;;) {
    out.push(Number(x & 0xffn));
    x >>= 8n;
    const signBit = out[out.length - 1] & 0x80;
    if ((x === 0n && !signBit) || (x === -1n && signBit)) break;
  }
  return Uint8Array.from(out);
}

function storageClass(dtype: TorchDType): PyGlobal {
  const name = storageClassName(dtype);
  return new PyGlobal('torch', name, allowedGlobal('torch', name) as NonNullable<ReturnType<typeof allowedGlobal>>);
}

/** Storages reachable from a value, in first-seen order (roots of legacy views included). */
function collectStorages(root: PyValue): TorchStorage[] {
  const found: TorchStorage[] = [];
  const seen = new Set<unknown>();
  const visit = (v: PyValue) => {
    if (v === null || typeof v !== 'object' || seen.has(v)) return;
    seen.add(v);
    if (v instanceof TorchTensor) return visit(v.storage);
    if (v instanceof TorchStorage) {
      const r = v.root().root;
      if (!found.includes(r)) found.push(r);
      return;
    }
    if (Array.isArray(v)) v.forEach(visit);
    else if (v instanceof PyTuple) v.items.forEach(visit);
    else if (v instanceof PyDict) {
      for (const x of v.entries.values()) visit(x);
      visit(v.attributes);
    } else if (v instanceof PySet) v.items.forEach(visit);
  };
  visit(root);
  return found;
}

function storageBytes(s: TorchStorage): Uint8Array {
  if (!s.bytes) throw new Error(`storage '${s.key}' has no bytes to write`);
  if (s.bytes.length !== s.nbytes) throw new Error(`storage '${s.key}' holds ${s.bytes.length} bytes, ${s.numel} ${s.dtype} elements need ${s.nbytes}`);
  return s.bytes;
}

/**
 * The zip format of torch.save (>= 1.6): stored entries, data aligned to 64 bytes like torch's
 * writer. `byteorder` only writes the record: storage bytes must already be in that order.
 */
export function serializeTorchZip(root: PyValue, opts: { archiveName?: string; byteorder?: 'little' | 'big' | null; onProgress?: PhaseProgress } = {}): Uint8Array {
  const archive = opts.archiveName ?? 'archive';
  const pickle = new PickleWriter((s) => {
    if (!(s instanceof TorchStorage)) return null;
    if (s.viewOf) throw new Error(`the zip format has no storage views (storage '${s.key}')`);
    return new PyTuple(['storage', storageClass(s.dtype), s.key, s.location, s.numel]);
  }).dump(root);
  const files: Array<[string, Uint8Array]> = [[`${archive}/data.pkl`, pickle]];
  const byteorder = opts.byteorder === undefined ? 'little' : opts.byteorder;
  if (byteorder) files.push([`${archive}/byteorder`, new TextEncoder().encode(byteorder)]);
  const storages = collectStorages(root).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  for (const s of storages) files.push([`${archive}/data/${s.key}`, storageBytes(s)]);
  files.push([`${archive}/version`, new TextEncoder().encode('3\n')]);
  return storedZip(files, 64, opts.onProgress);
}

/** The legacy stream format (torch.save with _use_new_zipfile_serialization=False), little-endian. */
export function serializeTorchLegacy(root: PyValue): Uint8Array {
  const parts: Uint8Array[] = [];
  parts.push(new PickleWriter().dump(LEGACY_MAGIC_NUMBER));
  parts.push(new PickleWriter().dump(LEGACY_PROTOCOL_VERSION));
  const sysInfo = new PyDict();
  sysInfo.entries.set('protocol_version', LEGACY_PROTOCOL_VERSION);
  sysInfo.entries.set('little_endian', true);
  const sizes = new PyDict();
  sizes.entries.set('short', 2);
  sizes.entries.set('int', 4);
  sizes.entries.set('long', 8);
  sysInfo.entries.set('type_sizes', sizes);
  parts.push(new PickleWriter().dump(sysInfo));
  parts.push(
    new PickleWriter((s) => {
      if (!(s instanceof TorchStorage)) return null;
      const { root: r } = s.root();
      const view = s.viewOf ? new PyTuple([s.key, s.viewOf.offset, s.numel]) : null;
      return new PyTuple(['storage', storageClass(r.dtype), r.key, r.location, r.numel, view]);
    }).dump(root),
  );
  const storages = collectStorages(root).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  parts.push(new PickleWriter().dump(storages.map((s) => s.key)));
  for (const s of storages) {
    const count = new Uint8Array(8);
    new DataView(count.buffer).setBigInt64(0, BigInt(s.numel), true);
    parts.push(count, storageBytes(s));
  }
  return concat(parts);
}

/**
 * The pre-1.0 tar format. Storage and tensor keys must be integer strings (torch used
 * `_cdata` addresses); tensors in the object are persistent ids.
 */
export function serializeTorchTar(root: PyValue): Uint8Array {
  const tensors: TorchTensor[] = [];
  const objectPickle = new PickleWriter((obj) => {
    if (!(obj instanceof TorchTensor)) throw new Error(`the tar format stores storages only through tensors (storage '${obj.key}')`);
    let i = tensors.indexOf(obj);
    if (i < 0) i = tensors.push(obj) - 1;
    return String(tarTensorKey(i));
  }).dump(root);
  const storages = collectStorages(root);
  const sysInfo = new PyDict();
  sysInfo.entries.set('protocol_version', 1000);
  sysInfo.entries.set('little_endian', true);

  const storageParts: Uint8Array[] = [new PickleWriter().dump(storages.length)];
  for (const s of storages) {
    storageParts.push(new PickleWriter().dump(new PyTuple([Number(s.key), s.location, storageClass(s.dtype)])));
    const count = new Uint8Array(8);
    new DataView(count.buffer).setBigInt64(0, BigInt(s.numel), true);
    storageParts.push(count, storageBytes(s));
  }
  storageParts.push(new PickleWriter().dump([]));

  const tensorParts: Uint8Array[] = [new PickleWriter().dump(tensors.length)];
  tensors.forEach((t, i) => {
    const tensorType = `${storageClassName(t.dtype).replace('Storage', 'Tensor')}`;
    tensorParts.push(new PickleWriter().dump(new PyTuple([tarTensorKey(i), Number(t.storage.key), new PyGlobal('torch', tensorType, { kind: 'tensor-class' })])));
    const geo = new DataView(new ArrayBuffer(8 + 16 * t.shape.length + 8));
    geo.setInt32(0, t.shape.length, true);
    t.shape.forEach((d, j) => geo.setBigInt64(8 + 8 * j, BigInt(d), true));
    t.stride.forEach((d, j) => geo.setBigInt64(8 + 8 * (t.shape.length + j), BigInt(d), true));
    geo.setBigInt64(8 + 16 * t.shape.length, BigInt(t.offset), true);
    tensorParts.push(new Uint8Array(geo.buffer));
  });
  return tarArchive([
    ['sys_info', new PickleWriter().dump(sysInfo)],
    ['pickle', objectPickle],
    ['tensors', concat(tensorParts)],
    ['storages', concat(storageParts)],
  ]);
}

function tarTensorKey(i: number): number {
  return 1_000_000 + i;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function tarArchive(files: Array<[string, Uint8Array]>): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [name, data] of files) {
    const h = new Uint8Array(512);
    const put = (s: string, at: number) => h.set(new TextEncoder().encode(s), at);
    put(name, 0);
    put('0000644\0', 100);
    put('0000000\0', 108);
    put('0000000\0', 116);
    put(`${data.length.toString(8).padStart(11, '0')}\0`, 124);
    put('00000000000\0', 136);
    put('        ', 148);
    put('0', 156);
    put('ustar\0', 257);
    put('00', 263);
    let sum = 0;
    for (const b of h) sum += b;
    put(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    parts.push(h, data, new Uint8Array((512 - (data.length % 512)) % 512));
  }
  parts.push(new Uint8Array(1024));
  return concat(parts);
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * A zip of stored entries whose data start at multiples of `align` (padding in a 'FB' extra field,
 * as torch does); `onProgress` gets the bytes checksummed so far, entry by entry (phase `packing
 * the zip archive`: the CRC-32 of every byte is most of the time of a big checkpoint).
 */
export function storedZip(files: Array<[string, Uint8Array]>, align: number, onProgress?: PhaseProgress): Uint8Array {
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  const total = files.reduce((n, [, data]) => n + data.length, 0);
  let packed = 0;
  onProgress?.('packing the zip archive', 0, total, 'bytes');
  for (const [name, data] of files) {
    const fname = new TextEncoder().encode(name);
    const pad = (align - ((offset + 30 + fname.length + 4) % align)) % align;
    const crc = crc32(data);
    if (offset + 30 + fname.length + 4 + pad + data.length >= 0xffffffff) throw new Error('checkpoint too large for the zip writer (needs zip64)');
    const local = new DataView(new ArrayBuffer(30 + fname.length + 4 + pad));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, 0, true);
    local.setUint16(8, 0, true);
    local.setUint16(10, 0, true);
    local.setUint16(12, 0x21, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true);
    local.setUint32(22, data.length, true);
    local.setUint16(26, fname.length, true);
    local.setUint16(28, 4 + pad, true);
    new Uint8Array(local.buffer).set(fname, 30);
    local.setUint16(30 + fname.length, 0x4246, true);
    local.setUint16(32 + fname.length, pad, true);
    const cd = new DataView(new ArrayBuffer(46 + fname.length));
    cd.setUint32(0, 0x02014b50, true);
    cd.setUint16(4, 20, true);
    cd.setUint16(6, 20, true);
    cd.setUint16(8, 0, true);
    cd.setUint16(10, 0, true);
    cd.setUint16(12, 0, true);
    cd.setUint16(14, 0x21, true);
    cd.setUint32(16, crc, true);
    cd.setUint32(20, data.length, true);
    cd.setUint32(24, data.length, true);
    cd.setUint16(28, fname.length, true);
    cd.setUint32(42, offset, true);
    new Uint8Array(cd.buffer).set(fname, 46);
    parts.push(new Uint8Array(local.buffer), data);
    central.push(new Uint8Array(cd.buffer));
    offset += local.byteLength + data.length;
    packed += data.length;
    onProgress?.('packing the zip archive', packed, total, 'bytes');
  }
  const cdSize = central.reduce((n, c) => n + c.length, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, cdSize, true);
  end.setUint32(16, offset, true);
  return concat([...parts, ...central, new Uint8Array(end.buffer)]);
}

// ---- Building state dicts -------------------------------------------------------------------

/** A storage holding `values` encoded as `dtype`. */
export function makeStorage(key: string, dtype: TorchDType, values: ArrayLike<number | bigint>, location = 'cpu'): TorchStorage {
  const s = new TorchStorage(key, dtype, values.length, location);
  s.bytes = encodeTensorBytes(dtype, values);
  return s;
}

/** A contiguous tensor of `shape` over `storage` starting at element `offset`. */
export function contiguousTensor(storage: TorchStorage, shape: number[], offset = 0): TorchTensor {
  return new TorchTensor(storage, offset, shape, contiguousStrides(shape), storage.dtype);
}

/** An OrderedDict of name -> value (what `model.state_dict()` pickles as). */
export function orderedDict(entries: Iterable<[string, PyValue]>): PyDict {
  const d = new PyDict(true);
  for (const [k, v] of entries) d.entries.set(k, v);
  return d;
}

/**
 * A state dict of host tensors as torch would save it: one storage per tensor, in `dtype` when
 * given (floating tensors only), with each alias of `tied` sharing its primary's storage.
 */
export function stateDictFromHost(tensors: Map<string, HostTensor>, opts: { tied?: Record<string, string>; floatDtype?: TorchDType; /** Bytes of the tensors encoded so far (phase `encoding tensors`). */ onProgress?: PhaseProgress } = {}): PyDict {
  const tied = opts.tied ?? {};
  const views = new Map<string, TorchTensor>();
  let key = 0;
  const total = [...tensors.values()].reduce((n, t) => n + t.data.byteLength, 0);
  let done = 0;
  opts.onProgress?.('encoding tensors', 0, total, 'bytes');
  for (const [name, t] of tensors) {
    const dtype: TorchDType = t.dtype === 'float32' || t.dtype === 'float64' ? (opts.floatDtype ?? t.dtype) : t.dtype;
    const storage = makeStorage(String(key++), dtype, t.data);
    views.set(name, contiguousTensor(storage, t.shape.slice()));
    done += t.data.byteLength;
    opts.onProgress?.('encoding tensors', done, total, 'bytes');
  }
  const entries: Array<[string, PyValue]> = [];
  const names = [...tensors.keys()];
  for (const alias of Object.keys(tied)) if (!names.includes(alias)) names.push(alias);
  for (const name of names) {
    const primary = Object.hasOwn(tied, name) ? tied[name] : undefined;
    const view = views.get(primary ?? name);
    if (!view) throw new Error(`stateDictFromHost: no tensor for '${primary ?? name}'`);
    entries.push([name, view]);
  }
  return orderedDict(entries);
}

/** `onProgress`: the zip format reports packing its entries (the legacy and tar formats are quick to pack). */
export function serializeTorchCheckpoint(root: PyValue, format: TorchSaveFormat = 'zip', onProgress?: PhaseProgress): Uint8Array {
  if (format === 'zip') return serializeTorchZip(root, { onProgress });
  if (format === 'legacy') return serializeTorchLegacy(root);
  return serializeTorchTar(root);
}

/** Write a checkpoint atomically; `onProgress` gets the packing, then the bytes written (phase `writing <name>`). */
export function writeTorchCheckpoint(file: string, root: PyValue, format: TorchSaveFormat = 'zip', onProgress?: PhaseProgress): void {
  const bytes = serializeTorchCheckpoint(root, format, onProgress);
  const phase = `writing ${path.basename(file)}`;
  onProgress?.(phase, 0, bytes.length, 'bytes');
  writeFileAtomic(file, bytes, onProgress && ((done, total) => onProgress(phase, done, total, 'bytes')));
}
