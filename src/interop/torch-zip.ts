/**
 * The zip checkpoint format of `torch.save` (PyTorch >= 1.6): a zip archive with stored
 * (uncompressed) entries under one top folder whose name varies (`archive/`, or the file's
 * base name in older versions):
 *   <top>/data.pkl      the pickled object; storages are persistent ids
 *                       ('storage', <StorageClass>, key, location, numel)
 *   <top>/data/<key>    each storage's raw bytes
 *   <top>/version       format version; <top>/byteorder ("little" or "big", absent = little)
 */
import { unzipSync } from 'fflate';
import { zipStructureProblem } from '../util/zip-check.js';
import { PyGlobal, PyTuple, PyValue, describePy, unpickle } from './torch-pickle.js';
import { TorchCheckpointError, TorchDType, TorchStorage } from './torch-tensor.js';

export interface TorchZipContents {
  root: PyValue;
  /** The top folder inside the archive (without the slash). */
  archiveName: string;
  version: string | null;
  byteorder: 'little' | 'big';
  storages: TorchStorage[];
}

const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04];

export function isZipFile(buf: Uint8Array): boolean {
  return buf.length >= 4 && ZIP_MAGIC.every((b, i) => buf[i] === b);
}

export function readTorchZip(buf: Uint8Array, file: string): TorchZipContents {
  let entries: Record<string, Uint8Array>;
  const problem = zipStructureProblem(buf);
  if (problem) throw new TorchCheckpointError(`${file}: cannot read the zip archive (${problem}); the file is truncated or not a torch.save checkpoint`);
  try {
    entries = unzipSync(buf);
  } catch (e) {
    throw new TorchCheckpointError(`${file}: cannot read the zip archive (${(e as Error).message}); the file is truncated or not a torch.save checkpoint`);
  }
  const names = Object.keys(entries);
  if (names.some((n) => /^[^/]+\/constants\.pkl$/.test(n) || /^[^/]+\/code\//.test(n))) {
    throw new TorchCheckpointError(`${file}: this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; save model.state_dict() with torch.save instead`);
  }
  const pickles = names.filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pickles.length !== 1) {
    const shown = names.slice(0, 8).join(', ');
    throw new TorchCheckpointError(
      pickles.length === 0
        ? `${file}: zip archive has no '<folder>/data.pkl' entry, so it is not a torch.save checkpoint (entries: ${shown}${names.length > 8 ? ', ...' : ''})`
        : `${file}: zip archive has several data.pkl entries (${pickles.join(', ')})`,
    );
  }
  const prefix = pickles[0].slice(0, -'data.pkl'.length);
  const text = (name: string): string | null => (entries[prefix + name] ? new TextDecoder().decode(entries[prefix + name]).trim() : null);
  const byteorder = text('byteorder') ?? 'little';
  if (byteorder !== 'little' && byteorder !== 'big') throw new TorchCheckpointError(`${file}: entry '${prefix}byteorder' says '${byteorder}', expected 'little' or 'big'`);
  const version = text('version') ?? text('.data/version');

  const storages = new Map<string, TorchStorage>();
  const pickleSource = `${file}:${prefix}data.pkl`;
  const persistentLoad = (pid: PyValue): PyValue => {
    const fields = pidFields(pid, pickleSource);
    if (fields[0] !== 'storage') throw new TorchCheckpointError(`${pickleSource}: persistent id of kind '${fields[0]}' is not a storage`);
    if (fields.length !== 5) throw new TorchCheckpointError(`${pickleSource}: storage persistent id has ${fields.length} fields, expected 5 (storage, type, key, location, numel)`);
    const [, cls, key, location, numel] = fields;
    const dtype = storageClassDtype(cls, pickleSource);
    if (typeof key !== 'string' || typeof location !== 'string' || typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) {
      throw new TorchCheckpointError(`${pickleSource}: malformed storage persistent id (key ${describePy(key)}, location ${describePy(location)}, numel ${describePy(numel)})`);
    }
    const known = storages.get(key);
    if (known) return known;
    const entryName = `${prefix}data/${key}`;
    const bytes = entries[entryName];
    if (!bytes) throw new TorchCheckpointError(`${file}: storage entry '${entryName}' is missing from the archive (the pickle references storage '${key}')`);
    const storage = new TorchStorage(key, dtype, numel, location);
    if (bytes.length !== storage.nbytes) {
      throw new TorchCheckpointError(`${file}: storage entry '${entryName}' holds ${bytes.length} bytes, but ${numel} ${dtype} elements need ${storage.nbytes} (truncated or corrupt archive)`);
    }
    storage.bytes = bytes;
    storage.bigEndian = byteorder === 'big';
    storages.set(key, storage);
    return storage;
  };
  const { value } = unpickle(entries[pickles[0]], { source: pickleSource, persistentLoad });
  return { root: value, archiveName: prefix.slice(0, -1), version, byteorder, storages: [...storages.values()] };
}

/** A persistent id tuple with its first field decoded to a string (Python 2 files store bytes). */
export function pidFields(pid: PyValue, source: string): PyValue[] {
  if (!(pid instanceof PyTuple) || pid.items.length === 0) throw new TorchCheckpointError(`${source}: persistent id must be a tuple, got ${describePy(pid)}`);
  const items = [...pid.items];
  if (items[0] instanceof Uint8Array) items[0] = new TextDecoder('ascii').decode(items[0]);
  for (const i of [2, 3]) if (items[i] instanceof Uint8Array) items[i] = new TextDecoder('ascii').decode(items[i] as Uint8Array);
  return items;
}

/** The element dtype of a storage class value (`torch.HalfStorage`...; untyped storages are bytes). */
export function storageClassDtype(cls: PyValue, source: string): TorchDType {
  if (!(cls instanceof PyGlobal) || cls.role.kind !== 'storage-class') throw new TorchCheckpointError(`${source}: expected a storage class in the persistent id, got ${describePy(cls)}`);
  return cls.role.dtype === 'untyped' ? 'uint8' : cls.role.dtype;
}
