/** Shared by the serve tests: a small random model that reads the tiny world's features, and its gallery. */
import * as path from 'node:path';
import { generateWorld } from '../../src/data/world.js';
import { PRESETS, UniterConfig } from '../../src/model/config.js';
import { worldGallery } from '../../src/serve/gallery.js';
import type { Gallery } from '../../src/serve/gallery.js';
import { randomParams, tempDir, writeModelFolder } from '../export/model-folders.js';

/** Full vocabulary (real captions) but narrow and shallow: loads and runs in milliseconds. */
export const SERVE_CFG: UniterConfig = {
  ...PRESETS.tiny,
  hidden_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  intermediate_size: 64,
  max_position_embeddings: 128,
};

let cached: { modelDir: string; gallery: Gallery } | null = null;

/** A pre-trained-layout model folder (ITM head) and a gallery of the tiny world's test images. */
export function serveFixture(): { modelDir: string; gallery: Gallery } {
  if (cached) return cached;
  const world = generateWorld({ preset: 'tiny' });
  const cfg = { ...SERVE_CFG, img_dim: world.images.imgDim, img_label_dim: world.images.labelDim };
  const modelDir = writeModelFolder(path.join(tempDir('serve-model-'), 'm'), cfg, randomParams(cfg, 'pretrain', { seed: 3 }));
  cached = { modelDir, gallery: worldGallery(world, { split: 'test' }) };
  return cached;
}
