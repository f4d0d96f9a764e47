/**
 * Reading a PyTorch checkpoint file of any `torch.save` format into host tensors, with the
 * storage sharing between names made explicit (tied weights are one storage under two names).
 */
import * as path from 'node:path';
import { HostTensor } from '../engine/host.js';
import { unwrapStateDict } from './official-names.js';
import { PyValue, describePy } from './torch-pickle.js';
import { isTarFile, readTorchLegacy, readTorchTar } from './torch-legacy.js';
import { ELEMENT_SIZE, TorchCheckpointError, TorchDType, TorchStorage, TorchTensor, materializeTensor } from './torch-tensor.js';
import { readFileReporting, type PhaseProgress } from '../util/progress.js';
import { isZipFile, readTorchZip } from './torch-zip.js';

export type TorchFormat = 'zip' | 'legacy' | 'tar';

export interface TorchFile {
  file: string;
  format: TorchFormat;
  /** The unpickled object (storages already hold their bytes). */
  root: PyValue;
}

export interface TorchCheckpoint {
  file: string;
  format: TorchFormat;
  /** The key of the wrapper dict the state dict was found under (`model_state`...), or null. */
  wrapper: string | null;
  /** Every tensor of the state dict, contiguous, in file order (float16/bfloat16 widened to float32). */
  tensors: Map<string, HostTensor>;
  /** The dtype each tensor had in the file. */
  sourceDtypes: Map<string, TorchDType>;
  /** alias -> primary: names that are the very same view of one storage (tied weights); primary comes first in file order. */
  ties: Map<string, string>;
  /** Names grouped by the storage they share, for every storage that more than one name views. */
  sharedStorage: string[][];
  /** State-dict entries that are not tensors (kept out of `tensors`). */
  skipped: Array<{ name: string; value: string }>;
}

export function parseTorchFile(buf: Uint8Array, file: string): TorchFile {
  if (isZipFile(buf)) return { file, format: 'zip', root: readTorchZip(buf, file).root };
  if (isTarFile(buf)) return { file, format: 'tar', root: readTorchTar(buf, file).root };
  return { file, format: 'legacy', root: readTorchLegacy(buf, file).root };
}

/** Read and unpickle a checkpoint file; `onProgress` gets the bytes read (phase `reading <name>`). */
export function loadTorchFile(file: string, onProgress?: PhaseProgress): TorchFile {
  let buf: Buffer;
  try {
    buf = readFileReporting(file, onProgress);
  } catch (e) {
    throw new TorchCheckpointError(`${file}: cannot read checkpoint (${(e as Error).message})`);
  }
  if (buf.length === 0) throw new TorchCheckpointError(`${file}: empty file`);
  onProgress?.(`unpickling ${path.basename(file)}`, 0, buf.length, 'bytes'); // announced: no counts inside the archive reader
  return parseTorchFile(buf, file);
}

/**
 * Locate the state dict inside an unpickled checkpoint and copy its tensors out; `onProgress`
 * gets the bytes of the tensors copied so far (phase `decoding tensors`).
 */
export function checkpointFromTorchFile(tf: TorchFile, onProgress?: PhaseProgress): TorchCheckpoint {
  const { dict, wrapper } = unwrapStateDict(tf.root, tf.file);
  const tensors = new Map<string, HostTensor>();
  const sourceDtypes = new Map<string, TorchDType>();
  const views = new Map<string, TorchTensor>();
  const skipped: TorchCheckpoint['skipped'] = [];
  const where = wrapper ? `${tf.file} [${wrapper}]` : tf.file;
  const tensorBytes = (v: TorchTensor) => v.shape.reduce((a, b) => a * b, 1) * ELEMENT_SIZE[v.dtype];
  let total = 0;
  for (const value of dict.entries.values()) if (value instanceof TorchTensor) total += tensorBytes(value);
  let done = 0;
  onProgress?.('decoding tensors', 0, total, 'bytes');
  for (const [key, value] of dict.entries) {
    if (typeof key !== 'string') throw new TorchCheckpointError(`${where}: state dict key ${String(key)} is not a string`);
    if (!(value instanceof TorchTensor)) {
      skipped.push({ name: key, value: describePy(value) });
      continue;
    }
    tensors.set(key, materializeTensor(value, `${where}: tensor '${key}'`));
    sourceDtypes.set(key, value.dtype);
    views.set(key, value);
    done += tensorBytes(value);
    onProgress?.('decoding tensors', done, total, 'bytes');
  }
  const { ties, sharedStorage } = storageSharing(views);
  return { file: tf.file, format: tf.format, wrapper, tensors, sourceDtypes, ties, sharedStorage, skipped };
}

export function readTorchCheckpoint(file: string, onProgress?: PhaseProgress): TorchCheckpoint {
  return checkpointFromTorchFile(loadTorchFile(file, onProgress), onProgress);
}

/** Which names view one storage, and which of those are the identical view (ties). */
export function storageSharing(views: Map<string, TorchTensor>): { ties: Map<string, string>; sharedStorage: string[][] } {
  const storageIds = new Map<TorchStorage, number>();
  const byStorage = new Map<number, string[]>();
  const byView = new Map<string, string>();
  const ties = new Map<string, string>();
  for (const [name, t] of views) {
    const root = t.storage.root().root;
    let id = storageIds.get(root);
    if (id === undefined) {
      id = storageIds.size;
      storageIds.set(root, id);
    }
    const group = byStorage.get(id) ?? [];
    group.push(name);
    byStorage.set(id, group);
    const vk = t.viewKey(id);
    const primary = byView.get(vk);
    if (primary !== undefined && t.shape.reduce((a, b) => a * b, 1) > 0) ties.set(name, primary);
    else byView.set(vk, name);
  }
  return { ties, sharedStorage: [...byStorage.values()].filter((g) => g.length > 1) };
}
