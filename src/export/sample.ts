/**
 * Seeded synthetic batches for any scoring task: random WordPiece ids, region features and
 * boxes, collated exactly as user inputs are. Used to verify an exported model against the
 * library, at more than one batch size and sequence length.
 */
import { collateRows } from '../data/collate.js';
import { defaultTokenizer } from '../data/tokenizer.js';
import type { Batch } from '../data/types.js';
import { positionFeatures } from '../data/types.js';
import type { UniterConfig } from '../model/config.js';
import { Rng } from '../util/rng.js';
import { ModelInput, RegionFeatures, collateInputs } from '../api/inputs.js';
import type { ScoringTask } from '../api/scoring-heads.js';

export interface SampleShape {
  /** Examples (statements for NLVR2, questions for VCR: 2 candidate rows each). */
  examples: number;
  /** Text length range in wordpieces, without [CLS]/[SEP] (inclusive). */
  words: [number, number];
  /** Regions per image (inclusive). */
  regions: [number, number];
}

/** Two shapes that differ in every dynamic axis (B, Lt, N, Lj). */
export const VERIFY_SHAPES: readonly SampleShape[] = [
  { examples: 2, words: [2, 5], regions: [2, 4] },
  { examples: 3, words: [7, 11], regions: [5, 9] },
];

function sampleImage(rng: Rng, nbb: number, imgDim: number): RegionFeatures {
  const features = new Float32Array(nbb * imgDim);
  rng.fillNormal(features, 0, 1);
  const normBb = new Float32Array(nbb * 6);
  for (let k = 0; k < nbb; k++) {
    const x1 = rng.uniform() * 0.5;
    const y1 = rng.uniform() * 0.5;
    const w = 0.1 + rng.uniform() * 0.4;
    const h = 0.1 + rng.uniform() * 0.4;
    normBb.set([x1, y1, x1 + w, y1 + h, w, h], k * 6);
  }
  return { nbb, features, normBb };
}

/** A random batch of `task` for a model with config `cfg`. */
export function sampleBatch(task: ScoringTask, cfg: UniterConfig, shape: SampleShape, seed: number): Batch {
  const rng = new Rng(seed, 'export-sample', task, shape.examples);
  const tokenizer = defaultTokenizer();
  // Ids 1..vocab_size-1 (0 is padding); texts no longer than the position table allows.
  const maxWords = Math.max(1, Math.min(shape.words[1], cfg.max_position_embeddings - 2));
  const words = () => {
    const n = Math.min(rng.int(shape.words[0], shape.words[1] + 1), maxWords);
    return Array.from({ length: n }, () => rng.int(1, cfg.vocab_size));
  };
  const image = () => sampleImage(rng, rng.int(shape.regions[0], shape.regions[1] + 1), cfg.img_dim);
  if (task === 'vcr') {
    // Two candidate rows per question: question tokens type 0, answer tokens type 2.
    const rows = [];
    for (let e = 0; e < shape.examples; e++) {
      const q = words();
      const im = image();
      for (let c = 0; c < 2; c++) {
        const a = words();
        const ids = [tokenizer.cls, ...q, tokenizer.sep, ...a, tokenizer.sep];
        rows.push({
          inputIds: ids,
          txtTypeIds: [...new Array<number>(q.length + 2).fill(0), ...new Array<number>(a.length + 1).fill(2)],
          imgFeat: im.features,
          imgPosFeat: positionFeatures(im.normBb, im.nbb),
          nbb: im.nbb,
        });
      }
    }
    return collateRows(rows, cfg.img_dim).batch;
  }
  const inputs: ModelInput[] = [];
  for (let e = 0; e < shape.examples; e++) {
    inputs.push(task.startsWith('nlvr2') ? { text: words(), images: [image(), image()] } : { text: words(), image: image() });
  }
  return collateInputs(task, inputs, tokenizer, cfg);
}
