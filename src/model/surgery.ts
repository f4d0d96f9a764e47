/**
 * Task-time changes to a pre-trained model, as the official fine-tuning scripts do them.
 */
import type { HostTensor } from '../engine/host.js';
import { Rng } from '../util/rng.js';

/** Token-type table grown to `rows` rows: existing rows kept, each new row a copy of the last one
 * (NLVR2: 3 rows with row 2 = row 1). */
export function initTypeEmbedding(table: HostTensor, rows: number): HostTensor {
  const [r, h] = table.shape;
  const data = new Float32Array(rows * h);
  const src = table.data as Float32Array;
  for (let i = 0; i < rows; i++) data.set(src.subarray(Math.min(i, r - 1) * h, (Math.min(i, r - 1) + 1) * h), i * h);
  return { dtype: 'float32', shape: [rows, h], data };
}

/** VCR: token types grow to 4 rows (2 and 3 copied from row 0), as the official VCR scripts. */
export function initVcrTypeEmbedding(table: HostTensor): HostTensor {
  const [r, h] = table.shape;
  const data = new Float32Array(4 * h);
  const src = table.data as Float32Array;
  for (let i = 0; i < 4; i++) {
    const from = i < r ? i : 0;
    data.set(src.subarray(from * h, (from + 1) * h), i * h);
  }
  return { dtype: 'float32', shape: [4, h], data };
}

/** Word embeddings grown by `extra` rows drawn from N(0, std) (VCR adds 81 tokens). */
export function growWordEmbedding(table: HostTensor, extra: number, std: number, seed: number): HostTensor {
  const [v, h] = table.shape;
  const data = new Float32Array((v + extra) * h);
  data.set(table.data as Float32Array);
  const rng = new Rng(seed, 'grow-word-embedding');
  for (let i = v * h; i < data.length; i++) data[i] = rng.normal(0, std);
  return { dtype: 'float32', shape: [v + extra, h], data };
}

/** Retrieval: rank_output initialised from row 1 ("matched") of itm_output. */
export function initRankOutput(params: Map<string, HostTensor>): void {
  const w = params.get('itm_output.weight');
  const b = params.get('itm_output.bias');
  if (!w || !b) throw new Error("initRankOutput: parameters lack 'itm_output.weight'/'itm_output.bias'");
  const h = w.shape[1];
  params.set('rank_output.weight', { dtype: 'float32', shape: [1, h], data: (w.data as Float32Array).slice(h, 2 * h) });
  params.set('rank_output.bias', { dtype: 'float32', shape: [1], data: (b.data as Float32Array).slice(1, 2) });
}
