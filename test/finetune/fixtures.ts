/** Shared by the fine-tuning tests: a tiny world on disk, a tiny model, config files in a temp dir. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateWorld, writeWorld, type World } from '../../src/data/world.js';
import { PRESETS, type UniterConfig } from '../../src/model/config.js';

export const TINY_MODEL_FIELDS = { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 };
export const TINY_MODEL: UniterConfig = { ...PRESETS.tiny, ...TINY_MODEL_FIELDS };

export interface Sandbox {
  dir: string;
  worldDir: string;
  world: World;
  /** Write a fine-tuning config (official field names) and return its path. */
  config(name: string, fields: Record<string, unknown>): string;
  cleanup(): void;
}

/** A temp dir holding the tiny synthetic world written as `uniter world` does. */
export function makeSandbox(prefix: string): Sandbox {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const world = generateWorld({ preset: 'tiny' });
  const worldDir = path.join(dir, 'world');
  writeWorld(world, worldDir);
  return {
    dir,
    worldDir,
    world,
    config(name, fields) {
      const file = path.join(dir, `${name}.json`);
      fs.writeFileSync(file, JSON.stringify({ model_config: TINY_MODEL_FIELDS, checkpoint: null, ...fields }));
      return file;
    },
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

export function readJsonl(file: string): Array<Record<string, unknown>> {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

export const silent = (): void => undefined;
