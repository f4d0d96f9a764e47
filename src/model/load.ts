/**
 * Loading initial weights the way the official `from_pretrained` does: gamma/beta renamed,
 * a `bert.` prefix mapped to `uniter.`, non-strict (missing keys keep their fresh
 * initialization, unexpected keys are ignored, both reported), shape mismatches are errors.
 * Accepts a model folder (config.json + model.safetensors), a safetensors file, or a PyTorch
 * checkpoint (.pt/.pth/.bin, read without Python).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { HostTensor } from '../engine/host.js';
import { readUniterWeights } from '../interop/convert.js';
import { officialNames } from '../interop/official-names.js';
import { readTorchCheckpoint } from '../interop/torch-checkpoint.js';
import { toOfficialWeights } from '../interop/official-names.js';
import { TIES } from './params.js';
import { checkFiniteTensors } from '../util/finite.js';
import type { PhaseProgress } from '../util/progress.js';

export interface LoadReport {
  source: string;
  loaded: string[];
  missing: string[];
  unexpected: string[];
}

/** Weights of a model folder, safetensors file or PyTorch checkpoint by official name; `onProgress` gets the bytes read. */
export function readWeightsAny(file: string, onProgress?: PhaseProgress): Map<string, HostTensor> {
  if (!fs.existsSync(file)) throw new Error(`checkpoint '${file}' does not exist`);
  const isDir = fs.statSync(file).isDirectory();
  if (!isDir && /\.(pt|pth|bin|ckpt)$/.test(file)) {
    const ck = readTorchCheckpoint(file, onProgress);
    // toOfficialWeights refuses non-finite weights, naming the tensor.
    return toOfficialWeights({ file, tensors: ck.tensors, sourceDtypes: ck.sourceDtypes, ties: ck.ties }).tensors;
  }
  const { tensors } = readUniterWeights(isDir ? file : path.resolve(file), { onProgress });
  const names = officialNames([...tensors.keys()]);
  const out = new Map<string, HostTensor>();
  for (const [k, v] of tensors) out.set(names.get(k) ?? k, v);
  checkFiniteTensors(file, out);
  return out;
}

/** Copy matching tensors from `source` into `params` (non-strict), returning what happened. */
export function loadNonStrict(params: Map<string, HostTensor>, source: Map<string, HostTensor>, sourceName: string): LoadReport {
  const report: LoadReport = { source: sourceName, loaded: [], missing: [], unexpected: [] };
  for (const [name, t] of source) {
    const primary = TIES[name] ?? name;
    const target = params.get(primary);
    if (!target) {
      if (!TIES[name]) report.unexpected.push(name);
      continue;
    }
    if (TIES[name] && source.has(primary)) continue; // the primary copy wins
    if (target.shape.join() !== t.shape.join())
      throw new Error(`${sourceName}: tensor '${name}' has shape [${t.shape}], the model needs [${target.shape}]`);
    if (t.dtype !== 'float32') throw new Error(`${sourceName}: tensor '${name}' has dtype ${t.dtype}, expected a float tensor`);
    (target.data as Float32Array).set(t.data as Float32Array);
    report.loaded.push(primary);
  }
  const loaded = new Set(report.loaded);
  for (const name of params.keys()) if (!loaded.has(name)) report.missing.push(name);
  return report;
}
