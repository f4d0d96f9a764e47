/**
 * The two pre-zip formats of `torch.save`.
 *
 * Legacy stream (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`): five pickles back to
 * back, then raw storage data:
 *   magic number 0x1950a86a20f9469cfc6c, protocol version 1001, sys_info dict,
 *   the object (storages are persistent ids ('storage', <StorageClass>, root_key, location,
 *   numel, view_metadata) with view_metadata None or (view_key, offset, size)),
 *   the sorted list of storage keys,
 *   then for each key: an 8-byte element count and the storage's bytes.
 *
 * Tar (PyTorch before 0.1.10): a tar archive with members `storages` (count, then per storage a
 * pickled (key, location, StorageClass), an 8-byte count and the bytes, then a pickled list of
 * storage views), `tensors` (count, then per tensor a pickled (key, storage_key, TensorType) and
 * binary ndim/sizes/strides/offset) and `pickle` (the object; persistent ids are keys).
 */
import { PyDict, PyTuple, PyValue, describePy, unpickle } from './torch-pickle.js';
import { pidFields, storageClassDtype } from './torch-zip.js';
import { TorchCheckpointError, TorchStorage, TorchTensor } from './torch-tensor.js';

export const LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6cn;
export const LEGACY_PROTOCOL_VERSION = 1001;

export interface TorchLegacyContents {
  root: PyValue;
  littleEndian: boolean;
  storages: TorchStorage[];
}

export function readTorchLegacy(buf: Uint8Array, file: string): TorchLegacyContents {
  let magic: PyValue;
  let pos: number;
  try {
    ({ value: magic, end: pos } = unpickle(buf, { source: `${file} (magic number)` }));
  } catch (e) {
    throw new TorchCheckpointError(`${file}: not a PyTorch checkpoint: neither a zip archive nor the legacy pickle stream (${(e as Error).message})`);
  }
  if (magic !== LEGACY_MAGIC_NUMBER) throw new TorchCheckpointError(`${file}: not a PyTorch checkpoint: the first pickle is ${describePy(magic)}, not the torch.save magic number`);
  const version = unpickle(buf, { source: `${file} (protocol version)`, offset: pos });
  pos = version.end;
  if (version.value !== LEGACY_PROTOCOL_VERSION) throw new TorchCheckpointError(`${file}: unsupported legacy protocol version ${describePy(version.value)} (expected ${LEGACY_PROTOCOL_VERSION})`);
  const sysInfo = unpickle(buf, { source: `${file} (sys_info)`, offset: pos });
  pos = sysInfo.end;
  let littleEndian = true;
  if (sysInfo.value instanceof PyDict && sysInfo.value.entries.get('little_endian') === false) littleEndian = false;

  const roots = new Map<string, TorchStorage>();
  const views = new Map<string, TorchStorage>();
  const objectSource = `${file} (object pickle)`;
  const persistentLoad = (pid: PyValue): PyValue => {
    const fields = pidFields(pid, objectSource);
    if (fields[0] === 'module') {
      throw new TorchCheckpointError(`${objectSource}: the file pickles a whole nn.Module (torch.save(model)); only state dicts can be read: save model.state_dict() instead`);
    }
    if (fields[0] !== 'storage' || fields.length !== 6) {
      throw new TorchCheckpointError(`${objectSource}: unexpected persistent id (${fields.length} fields, kind ${describePy(fields[0])}); expected ('storage', type, key, location, numel, view_metadata)`);
    }
    const [, cls, rootKey, location, numel, viewMeta] = fields;
    const dtype = storageClassDtype(cls, objectSource);
    if (typeof rootKey !== 'string' || typeof location !== 'string' || typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) {
      throw new TorchCheckpointError(`${objectSource}: malformed storage persistent id (key ${describePy(rootKey)}, numel ${describePy(numel)})`);
    }
    let root = roots.get(rootKey);
    if (!root) {
      root = new TorchStorage(rootKey, dtype, numel, location);
      root.bigEndian = !littleEndian;
      roots.set(rootKey, root);
    }
    if (viewMeta === null) return root;
    const view = viewMeta instanceof PyTuple ? viewMeta.items : null;
    if (!view || view.length !== 3 || typeof view[0] !== 'string' || typeof view[1] !== 'number' || typeof view[2] !== 'number') {
      throw new TorchCheckpointError(`${objectSource}: malformed storage view metadata ${describePy(viewMeta)} for storage '${rootKey}' (expected (view_key, offset, size))`);
    }
    const [viewKey, offset, size] = view as [string, number, number];
    let v = views.get(viewKey);
    if (!v) {
      v = new TorchStorage(viewKey, dtype, size, location, { root, offset });
      views.set(viewKey, v);
    }
    return v;
  };
  const obj = unpickle(buf, { source: objectSource, offset: pos, persistentLoad });
  pos = obj.end;
  const keyList = unpickle(buf, { source: `${file} (storage key list)`, offset: pos });
  pos = keyList.end;
  if (!Array.isArray(keyList.value)) throw new TorchCheckpointError(`${file}: the storage key list is ${describePy(keyList.value)}, expected a list`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (const key of keyList.value) {
    if (typeof key !== 'string') throw new TorchCheckpointError(`${file}: storage key ${describePy(key)} is not a string`);
    const storage = roots.get(key);
    if (!storage) throw new TorchCheckpointError(`${file}: storage '${key}' has data but the object pickle never references it`);
    if (pos + 8 > buf.length) throw new TorchCheckpointError(`${file}: truncated file: the element count of storage '${key}' is missing (at byte ${pos} of ${buf.length})`);
    const count = dv.getBigInt64(pos, littleEndian);
    pos += 8;
    if (count !== BigInt(storage.numel)) throw new TorchCheckpointError(`${file}: storage '${key}' records ${count} elements, the pickle says ${storage.numel}`);
    const end = pos + storage.nbytes;
    if (end > buf.length) throw new TorchCheckpointError(`${file}: truncated file: storage '${key}' needs ${storage.nbytes} bytes at byte ${pos}, only ${buf.length - pos} remain`);
    storage.bytes = buf.subarray(pos, end);
    pos = end;
  }
  return { root: obj.value, littleEndian, storages: [...roots.values()] };
}

export function isTarFile(buf: Uint8Array): boolean {
  return buf.length >= 512 && new TextDecoder('ascii').decode(buf.subarray(257, 262)) === 'ustar';
}

/** Regular-file members of a tar archive (ustar/GNU/PAX headers; long names via PAX 'path'). */
export function readTarMembers(buf: Uint8Array, file: string): Map<string, Uint8Array> {
  const members = new Map<string, Uint8Array>();
  const ascii = new TextDecoder('latin1');
  let pos = 0;
  let paxPath: string | null = null;
  while (pos + 512 <= buf.length) {
    const header = buf.subarray(pos, pos + 512);
    if (header.every((b) => b === 0)) break;
    const field = (a: number, b: number) => ascii.decode(header.subarray(a, b)).replace(/\0.*$/s, '');
    const sizeText = field(124, 136).trim();
    const size = Number.parseInt(sizeText || '0', 8);
    if (!Number.isSafeInteger(size) || size < 0) throw new TorchCheckpointError(`${file}: corrupt tar header at byte ${pos} (size '${sizeText}')`);
    const type = field(156, 157) || '0';
    const prefix = field(345, 500);
    const name = paxPath ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
    const start = pos + 512;
    if (start + size > buf.length) throw new TorchCheckpointError(`${file}: truncated tar archive: member '${name}' needs ${size} bytes at byte ${start}`);
    const data = buf.subarray(start, start + size);
    if (type === 'x') {
      const m = /\d+ path=([^\n]*)\n/.exec(new TextDecoder().decode(data));
      paxPath = m ? m[1] : null;
    } else {
      if (type === '0' || type === '\0') members.set(name, data);
      paxPath = null;
    }
    pos = start + Math.ceil(size / 512) * 512;
  }
  return members;
}

export function readTorchTar(buf: Uint8Array, file: string): { root: PyValue; storages: TorchStorage[] } {
  const members = readTarMembers(buf, file);
  const member = (name: string): Uint8Array => {
    const m = members.get(name);
    if (!m) throw new TorchCheckpointError(`${file}: tar checkpoint lacks the member '${name}' (has: ${[...members.keys()].join(', ')})`);
    return m;
  };
  const objects = new Map<string, TorchStorage | TorchTensor>();
  const keyOf = (v: PyValue, where: string): string => {
    if (typeof v === 'number' || typeof v === 'bigint') return String(v);
    if (typeof v === 'string' && /^\d+$/.test(v)) return String(BigInt(v));
    throw new TorchCheckpointError(`${where}: object key ${describePy(v)} is not an integer`);
  };

  const storagesData = member('storages');
  const sSrc = `${file}:storages`;
  const sdv = new DataView(storagesData.buffer, storagesData.byteOffset, storagesData.byteLength);
  let r = unpickle(storagesData, { source: sSrc });
  const numStorages = r.value;
  if (typeof numStorages !== 'number') throw new TorchCheckpointError(`${sSrc}: storage count is ${describePy(numStorages)}`);
  let pos = r.end;
  const storages: TorchStorage[] = [];
  for (let i = 0; i < numStorages; i++) {
    r = unpickle(storagesData, { source: sSrc, offset: pos });
    pos = r.end;
    const rec = r.value instanceof PyTuple ? r.value.items : null;
    if (!rec || rec.length !== 3) throw new TorchCheckpointError(`${sSrc}: storage record ${i} is ${describePy(r.value)}, expected (key, location, StorageClass)`);
    const key = keyOf(rec[0], sSrc);
    const dtype = storageClassDtype(rec[2], sSrc);
    if (pos + 8 > storagesData.length) throw new TorchCheckpointError(`${sSrc}: truncated: element count of storage '${key}' is missing`);
    const count = Number(sdv.getBigInt64(pos, true));
    pos += 8;
    const storage = new TorchStorage(key, dtype, count, typeof rec[1] === 'string' ? rec[1] : 'cpu');
    if (pos + storage.nbytes > storagesData.length) throw new TorchCheckpointError(`${sSrc}: truncated: storage '${key}' needs ${storage.nbytes} bytes at byte ${pos}`);
    storage.bytes = storagesData.subarray(pos, pos + storage.nbytes);
    pos += storage.nbytes;
    objects.set(key, storage);
    storages.push(storage);
  }
  r = unpickle(storagesData, { source: sSrc, offset: pos });
  const viewList = Array.isArray(r.value) ? r.value : [];
  for (const v of viewList) {
    const items = v instanceof PyTuple ? v.items : null;
    if (!items || items.length !== 4) throw new TorchCheckpointError(`${sSrc}: storage view ${describePy(v)} is not (target, root, offset, numel)`);
    const root = objects.get(keyOf(items[1], sSrc));
    if (!(root instanceof TorchStorage)) throw new TorchCheckpointError(`${sSrc}: storage view refers to unknown root ${describePy(items[1])}`);
    objects.set(keyOf(items[0], sSrc), new TorchStorage(keyOf(items[0], sSrc), root.dtype, Number(items[3]), root.location, { root, offset: Number(items[2]) }));
  }

  const tensorsData = member('tensors');
  const tSrc = `${file}:tensors`;
  const tdv = new DataView(tensorsData.buffer, tensorsData.byteOffset, tensorsData.byteLength);
  r = unpickle(tensorsData, { source: tSrc });
  const numTensors = r.value;
  if (typeof numTensors !== 'number') throw new TorchCheckpointError(`${tSrc}: tensor count is ${describePy(numTensors)}`);
  pos = r.end;
  for (let i = 0; i < numTensors; i++) {
    r = unpickle(tensorsData, { source: tSrc, offset: pos });
    pos = r.end;
    const rec = r.value instanceof PyTuple ? r.value.items : null;
    if (!rec || rec.length !== 3) throw new TorchCheckpointError(`${tSrc}: tensor record ${i} is ${describePy(r.value)}, expected (key, storage_key, TensorType)`);
    const key = keyOf(rec[0], tSrc);
    const storage = objects.get(keyOf(rec[1], tSrc));
    if (!(storage instanceof TorchStorage)) throw new TorchCheckpointError(`${tSrc}: tensor '${key}' refers to unknown storage ${describePy(rec[1])}`);
    if (pos + 8 > tensorsData.length) throw new TorchCheckpointError(`${tSrc}: truncated at tensor '${key}'`);
    const ndim = tdv.getInt32(pos, true);
    pos += 8; // ndim was written as 8 bytes; the loader reads 4 and skips 4
    if (ndim < 0 || pos + 16 * ndim + 8 > tensorsData.length) throw new TorchCheckpointError(`${tSrc}: truncated or corrupt geometry for tensor '${key}'`);
    const read = (): number => {
      const v = Number(tdv.getBigInt64(pos, true));
      pos += 8;
      return v;
    };
    const shape = Array.from({ length: ndim }, read);
    const stride = Array.from({ length: ndim }, read);
    const offset = read();
    objects.set(key, new TorchTensor(storage, offset, shape, stride, storage.dtype));
  }

  const pSrc = `${file}:pickle`;
  const persistentLoad = (pid: PyValue): PyValue => {
    const obj = objects.get(keyOf(pid, pSrc));
    if (!obj) throw new TorchCheckpointError(`${pSrc}: persistent id ${describePy(pid)} names no stored tensor or storage`);
    return obj;
  };
  const { value } = unpickle(member('pickle'), { source: pSrc, persistentLoad });
  return { root: value, storages };
}
