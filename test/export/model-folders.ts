/** Model folders for the export and API tests: tiny random models per head, and the golden weights. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RegionFeatures } from '../../src/api/inputs.js';
import type { HostTensor } from '../../src/engine/host.js';
import { readSafetensors, writeSafetensors } from '../../src/engine/safetensors.js';
import { PRESETS, UniterConfig } from '../../src/model/config.js';
import { HeadName, allSpecs, initParams } from '../../src/model/params.js';
import { saveModelFolder } from '../../src/pretrain/checkpoint.js';

/** The golden fixture, found from the compiled test file (dist/test/export/) so any cwd works. */
export const GOLDEN = fileURLToPath(new URL('../../../test/fixtures/golden/tiny', import.meta.url));

/** Small enough that a folder is ~100 KB: vocab 512 (ids from the bundled tokenizer's range 0..511 only). */
export const TINY: UniterConfig = {
  ...PRESETS.tiny,
  vocab_size: 512,
  hidden_size: 32,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  intermediate_size: 64,
  max_position_embeddings: 64,
  img_dim: 24,
  img_label_dim: 9,
};

const tempDirs: string[] = [];

/** A fresh directory under the OS temp dir, removed by removeTempDirs(). */
export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const d of tempDirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
}

/** Random parameters of `head` (std 0.1 so that scores differ visibly between inputs). */
export function randomParams(cfg: UniterConfig, head: HeadName, opts: { numAnswers?: number; seed?: number } = {}): Map<string, HostTensor> {
  const params = initParams(allSpecs(cfg, head, { numAnswers: opts.numAnswers }), 0.1, opts.seed ?? 7);
  // Non-zero biases and LayerNorm weights, so a bias that is dropped or misplaced shows.
  for (const [name, t] of params) {
    if (/(bias|LayerNorm\.weight|layer_norm\.weight|\.2\.weight)$/.test(name)) {
      const d = t.data as Float32Array;
      for (let i = 0; i < d.length; i++) d[i] += 0.05 * Math.sin(i + name.length);
    }
  }
  return params;
}

/** A model folder as the trainers write it (saveModelFolder). */
export function writeModelFolder(dir: string, cfg: UniterConfig, params: Map<string, HostTensor>): string {
  saveModelFolder(dir, { ...cfg }, new Map([...params].map(([k, v]) => [k, v.data as Float32Array])), new Map([...params].map(([k, v]) => [k, v.shape])));
  return dir;
}

/** The golden fixture's weights plus one downstream head file, as a model folder. */
export function goldenModelFolder(dir: string, headFile?: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const tensors = new Map(readSafetensors(path.join(GOLDEN, 'weights.safetensors')).tensors);
  if (headFile) for (const [k, v] of readSafetensors(path.join(GOLDEN, 'downstream', headFile)).tensors) tensors.set(k, v);
  fs.copyFileSync(path.join(GOLDEN, 'config.json'), path.join(dir, 'config.json'));
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, {});
  return dir;
}

/** Deterministic regions for scoring tests: `nbb` boxes of `dim`-wide features varying with `seed`. */
export function testRegions(nbb: number, seed: number, dim = TINY.img_dim): RegionFeatures {
  const features = Float32Array.from({ length: nbb * dim }, (_, i) => Math.sin(i * 0.37 + seed));
  const normBb = new Float32Array(nbb * 6);
  for (let k = 0; k < nbb; k++) normBb.set([0.1 * k, 0.05, 0.1 * k + 0.2, 0.5, 0.2, 0.45], k * 6);
  return { nbb, features, normBb };
}
