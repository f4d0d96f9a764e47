/**
 * UNITER configuration: the official `UniterConfig` JSON fields plus the image dimensions,
 * with named presets. `tiny` is for tests and the embedded default run.
 */
import { writeFileAtomic } from '../util/atomic.js';
import { readJsonFile } from '../util/json.js';

export interface UniterConfig {
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  hidden_act: 'gelu';
  hidden_dropout_prob: number;
  attention_probs_dropout_prob: number;
  max_position_embeddings: number;
  type_vocab_size: number;
  initializer_range: number;
  /** Region feature width (2048 for BUTD features). */
  img_dim: number;
  /** Detector classes incl. background (1601 for BUTD/Visual Genome). */
  img_label_dim: number;
}

const COMMON = {
  hidden_act: 'gelu' as const,
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  max_position_embeddings: 512,
  type_vocab_size: 2,
  initializer_range: 0.02,
  vocab_size: 28996,
  img_dim: 2048,
  img_label_dim: 1601,
};

export const PRESETS: Record<'tiny' | 'base' | 'large', UniterConfig> = {
  tiny: { ...COMMON, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 512 },
  base: { ...COMMON, hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, intermediate_size: 3072 },
  large: { ...COMMON, hidden_size: 1024, num_hidden_layers: 24, num_attention_heads: 16, intermediate_size: 4096 },
};

export type PresetName = keyof typeof PRESETS;

const INT_FIELDS = ['vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'max_position_embeddings', 'type_vocab_size', 'img_dim', 'img_label_dim'] as const;
const PROB_FIELDS = ['hidden_dropout_prob', 'attention_probs_dropout_prob'] as const;

/** Validate and complete a config object (missing img dims default to the BUTD values). */
export function parseConfig(raw: unknown, source = 'config'): UniterConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${source}: expected a JSON object with UniterConfig fields`);
  const o = raw as Record<string, unknown>;
  const cfg = { ...COMMON, ...o } as Record<string, unknown>;
  for (const f of INT_FIELDS) {
    const v = cfg[f];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new Error(`${source}: field '${f}' must be a positive integer, got ${JSON.stringify(v)}`);
  }
  for (const f of PROB_FIELDS) {
    const v = cfg[f];
    if (typeof v !== 'number' || v < 0 || v >= 1) throw new Error(`${source}: field '${f}' must be a probability in [0, 1), got ${JSON.stringify(v)}`);
  }
  if (typeof cfg.initializer_range !== 'number' || !(cfg.initializer_range > 0)) throw new Error(`${source}: field 'initializer_range' must be a positive number`);
  if (cfg.hidden_act !== 'gelu') throw new Error(`${source}: field 'hidden_act' must be "gelu" (exact erf form), got ${JSON.stringify(cfg.hidden_act)}`);
  if ((cfg.hidden_size as number) % (cfg.num_attention_heads as number) !== 0)
    throw new Error(`${source}: hidden_size ${cfg.hidden_size} is not a multiple of num_attention_heads ${cfg.num_attention_heads}`);
  const out: Record<string, unknown> = {};
  for (const k of [...INT_FIELDS, ...PROB_FIELDS, 'hidden_act', 'initializer_range']) out[k] = cfg[k];
  return out as unknown as UniterConfig;
}

export function loadConfig(file: string): UniterConfig {
  return parseConfig(readJsonFile(file, 'model config'), file);
}

export function saveConfig(file: string, cfg: UniterConfig): void {
  writeFileAtomic(file, JSON.stringify(cfg, null, 2) + '\n');
}

export function resolveConfig(spec: PresetName | UniterConfig | string): UniterConfig {
  if (typeof spec === 'object') return parseConfig(spec);
  if (spec in PRESETS) return { ...PRESETS[spec as PresetName] };
  return loadConfig(spec);
}
