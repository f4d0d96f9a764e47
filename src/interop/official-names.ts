/**
 * The official UNITER checkpoint conventions, applied the way the official loader applies them
 * (`UniterPreTrainedModel.from_pretrained` in model/model.py, `scripts/convert_ckpt.py`):
 *  - the state dict may sit under a `model_state` (VCR scripts) or `state_dict` key;
 *  - TF-style LayerNorm names: a key containing `gamma` gets `gamma` -> `weight`, one containing
 *    `beta` gets `beta` -> `bias` (when both occur, the `beta` rewrite of the original key wins,
 *    exactly as in the official loop);
 *  - BERT checkpoints (keys under `bert.`) become UNITER ones: `bert.` -> `uniter.`, which is what
 *    both convert_ckpt.py and the prefix handling of from_pretrained amount to;
 *  - two weights are tied in `UniterForPretraining`: they are stored once, under the primary name,
 *    and the tie is recorded in the safetensors metadata (`tied`: alias -> primary);
 *  - floating weights become float32 (AMP O2 checkpoints are float16).
 * Also here: inferring the model config JSON from tensor shapes, and checking a given config
 * against them.
 */
import { DType, HostTensor } from '../engine/host.js';
import { PyDict, PyValue, describePy } from './torch-pickle.js';
import { TorchCheckpointError, TorchDType, TorchTensor } from './torch-tensor.js';
import { firstNonFinite, indexIn } from '../util/finite.js';

/** alias -> primary for the weights `UniterForPretraining` shares between modules. */
export const OFFICIAL_TIES: Readonly<Record<string, string>> = {
  'cls.predictions.decoder.weight': 'uniter.embeddings.word_embeddings.weight',
  'feat_regress.weight': 'uniter.img_embeddings.img_linear.weight',
};

/** Keys under which training scripts wrap the state dict. */
export const STATE_DICT_WRAPPERS: readonly string[] = ['model_state', 'state_dict'];

function holdsTensors(d: PyDict): boolean {
  for (const v of d.entries.values()) if (v instanceof TorchTensor) return true;
  return false;
}

/** The dict of tensors in an unpickled checkpoint: the object itself or one of the wrappers. */
export function unwrapStateDict(root: PyValue, file: string): { dict: PyDict; wrapper: string | null } {
  if (!(root instanceof PyDict)) throw new TorchCheckpointError(`${file}: the checkpoint holds ${describePy(root)}, not a state dict (a dict of tensors)`);
  if (holdsTensors(root)) return { dict: root, wrapper: null };
  for (const w of STATE_DICT_WRAPPERS) {
    const inner = root.entries.get(w);
    if (inner instanceof PyDict && holdsTensors(inner)) return { dict: inner, wrapper: w };
  }
  const keys = [...root.entries.keys()].map(String);
  throw new TorchCheckpointError(
    `${file}: no state dict found: the top-level dict (keys: ${keys.slice(0, 10).join(', ')}${keys.length > 10 ? ', ...' : ''}) holds no tensors and no ${STATE_DICT_WRAPPERS.map((w) => `'${w}'`).join(' or ')} entry with tensors`,
  );
}

/** The official loader's TF-name rewrite of one key. */
export function renameGammaBeta(key: string): string {
  let renamed = key;
  if (key.includes('gamma')) renamed = key.replaceAll('gamma', 'weight');
  if (key.includes('beta')) renamed = key.replaceAll('beta', 'bias');
  return renamed;
}

/** Official name of every key of a state dict (in order), applying gamma/beta and `bert.` -> `uniter.`. */
export function officialNames(keys: readonly string[]): Map<string, string> {
  const afterLn = keys.map(renameGammaBeta);
  const fromBert = afterLn.some((k) => k.startsWith('bert.'));
  const out = new Map<string, string>();
  keys.forEach((k, i) => out.set(k, fromBert && afterLn[i].startsWith('bert.') ? `uniter.${afterLn[i].slice('bert.'.length)}` : afterLn[i]));
  return out;
}

export interface OfficialWeights {
  /** Primary tensors under official names, in file order; floating ones are float32. */
  tensors: Map<string, HostTensor>;
  /** alias -> primary. */
  tied: Record<string, string>;
  /** [file name, official name] for every key that changed. */
  renamed: Array<[string, string]>;
  /** Stored tensors whose dtype changed (float16/bfloat16/float64 -> float32, int8/int16/uint8 -> int32). */
  casts: Array<{ from: TorchDType; to: DType; names: string[] }>;
  /** How each tie was found. */
  tieEvidence: Record<string, 'shared storage' | 'identical values'>;
  warnings: string[];
}

export interface StateDictInput {
  file: string;
  tensors: Map<string, HostTensor>;
  sourceDtypes: Map<string, TorchDType>;
  /** alias -> primary ties found through shared storage, in file names. */
  ties: Map<string, string>;
}

/** Apply the official conventions to a state dict read from a checkpoint. */
export function toOfficialWeights(input: StateDictInput): OfficialWeights {
  const names = officialNames([...input.tensors.keys()]);
  const renamed: Array<[string, string]> = [];
  const byOfficial = new Map<string, HostTensor>();
  const origin = new Map<string, string>();
  const castOf = new Map<string, TorchDType>();
  for (const [key, t] of input.tensors) {
    const name = names.get(key) as string;
    if (origin.has(name)) throw new TorchCheckpointError(`${input.file}: keys '${origin.get(name)}' and '${key}' both map to the official name '${name}'`);
    origin.set(name, key);
    if (name !== key) renamed.push([key, name]);
    const out = t.dtype === 'float64' ? { dtype: 'float32' as const, shape: t.shape, data: Float32Array.from(t.data as Float64Array) } : t;
    if (out.data instanceof Float32Array) {
      const bad = firstNonFinite(out.data);
      if (bad >= 0) throw new TorchCheckpointError(`${input.file}: tensor '${key}' holds ${out.data[bad]} at ${indexIn(out.shape, bad)} (shape [${out.shape.join(', ')}]); weights must be finite`);
    }
    const src = input.sourceDtypes.get(key);
    if (src && src !== out.dtype) castOf.set(name, src);
    byOfficial.set(name, out);
  }

  // Union the storage ties and the official ties into groups, each with one primary.
  const warnings: string[] = [];
  const groupOf = new Map<string, Set<string>>();
  const join = (a: string, b: string) => {
    const ga = groupOf.get(a) ?? new Set([a]);
    const gb = groupOf.get(b) ?? new Set([b]);
    for (const n of gb) ga.add(n);
    for (const n of ga) groupOf.set(n, ga);
  };
  const storageTied = new Set<string>();
  for (const [alias, primary] of input.ties) {
    const a = names.get(alias) as string;
    const p = names.get(primary) as string;
    join(a, p);
    storageTied.add(a).add(p);
  }
  for (const [alias, primary] of Object.entries(OFFICIAL_TIES)) {
    const ta = byOfficial.get(alias);
    const tp = byOfficial.get(primary);
    if (!ta || !tp || groupOf.get(alias)?.has(primary)) continue;
    if (ta.shape.join() !== tp.shape.join()) {
      warnings.push(`'${alias}' [${ta.shape}] and '${primary}' [${tp.shape}] are tied in UniterForPretraining but differ in shape here; kept as two tensors`);
      continue;
    }
    const diff = maxAbsDiff(ta, tp);
    if (diff !== 0) {
      warnings.push(`'${alias}' should be the same tensor as '${primary}' but differs by up to ${diff}; kept the values of '${primary}' and tied '${alias}' to it`);
    }
    join(alias, primary);
  }
  // Each group keeps one primary: the official primary when the group has one, else the first name in file order.
  const officialPrimaries = new Set(Object.values(OFFICIAL_TIES));
  const tied = new Map<string, string>();
  const tieEvidence = new Map<string, 'shared storage' | 'identical values'>();
  const done = new Set<Set<string>>();
  for (const group of groupOf.values()) {
    if (done.has(group)) continue;
    done.add(group);
    const ordered = [...byOfficial.keys()].filter((n) => group.has(n));
    const primary = ordered.find((n) => officialPrimaries.has(n)) ?? ordered[0];
    for (const n of ordered) {
      if (n === primary) continue;
      tied.set(n, primary);
      tieEvidence.set(n, storageTied.has(n) ? 'shared storage' : 'identical values');
    }
  }
  const tensors = new Map<string, HostTensor>();
  for (const [n, t] of byOfficial) if (!tied.has(n)) tensors.set(n, t);
  const casts: OfficialWeights['casts'] = [];
  for (const [name, from] of castOf) {
    if (tied.has(name)) continue;
    const to = (tensors.get(name) as HostTensor).dtype;
    const entry = casts.find((c) => c.from === from && c.to === to);
    if (entry) entry.names.push(name);
    else casts.push({ from, to, names: [name] });
  }
  return { tensors, tied: Object.fromEntries(tied), renamed, casts, tieEvidence: Object.fromEntries(tieEvidence), warnings };
}

function maxAbsDiff(a: HostTensor, b: HostTensor): number {
  let m = 0;
  for (let i = 0; i < a.data.length; i++) {
    const d = Math.abs(Number(a.data[i]) - Number(b.data[i]));
    if (Number.isNaN(d)) return NaN;
    if (d > m) m = d;
  }
  return m;
}

/** Every official name, ties expanded: each alias gets its own copy of its primary's data. */
export function expandTies(tensors: Map<string, HostTensor>, tied: Record<string, string>, source: string): Map<string, HostTensor> {
  const out = new Map(tensors);
  for (const [alias, primary] of Object.entries(tied)) {
    if (typeof primary !== 'string') throw new TorchCheckpointError(`${source}: tie '${alias}' has no primary name`);
    const t = tensors.get(primary);
    if (!t) throw new TorchCheckpointError(`${source}: tie '${alias}' -> '${primary}' names a primary tensor that is not in the file`);
    if (out.has(alias)) throw new TorchCheckpointError(`${source}: '${alias}' is stored and also recorded as tied to '${primary}'`);
    out.set(alias, { dtype: t.dtype, shape: t.shape.slice(), data: t.data.slice() } as HostTensor);
  }
  return out;
}

/** The model config JSON (the fields of the official UniterConfig plus the image dims and OT settings). */
export interface UniterConfigJson {
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  intermediate_size: number;
  hidden_act: string;
  hidden_dropout_prob: number;
  attention_probs_dropout_prob: number;
  max_position_embeddings: number;
  type_vocab_size: number;
  initializer_range: number;
  img_dim: number;
  img_label_dim: number;
  ot: { beta: number; iteration: number; k: number; lambda: number };
  [extra: string]: unknown;
}

/** Values that no tensor shape reveals: the official base config and pre-training settings. */
export const CONFIG_DEFAULTS = {
  hidden_act: 'gelu',
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  initializer_range: 0.02,
  img_label_dim: 1601,
  ot: { beta: 0.5, iteration: 50, k: 1, lambda: 0.1 },
} as const;

const FIELD_ORDER = [
  'vocab_size',
  'hidden_size',
  'num_hidden_layers',
  'num_attention_heads',
  'intermediate_size',
  'hidden_act',
  'hidden_dropout_prob',
  'attention_probs_dropout_prob',
  'max_position_embeddings',
  'type_vocab_size',
  'initializer_range',
  'img_dim',
  'img_label_dim',
  'ot',
] as const;

type Shapes = ReadonlyMap<string, { shape: readonly number[] }>;

const T = {
  word: 'uniter.embeddings.word_embeddings.weight',
  position: 'uniter.embeddings.position_embeddings.weight',
  tokenType: 'uniter.embeddings.token_type_embeddings.weight',
  imgLinear: 'uniter.img_embeddings.img_linear.weight',
  regionOut: 'region_classifier.net.3.weight',
  intermediate: (i: number) => `uniter.encoder.layer.${i}.intermediate.dense.weight`,
};

function layerIndices(shapes: Shapes): number[] {
  const found = new Set<number>();
  for (const k of shapes.keys()) {
    const m = /^uniter\.encoder\.layer\.(\d+)\./.exec(k);
    if (m) found.add(Number(m[1]));
  }
  return [...found].sort((a, b) => a - b);
}

/** Config fields read off tensor shapes, plus notes on the ones that could not be. */
export function inferConfigFields(shapes: Shapes): { fields: Partial<UniterConfigJson>; notes: string[]; missing: Map<string, string> } {
  const fields: Partial<UniterConfigJson> = {};
  const notes: string[] = [];
  const missing = new Map<string, string>();
  const shape = (name: string) => shapes.get(name)?.shape;
  const word = shape(T.word);
  if (word?.length === 2) {
    fields.vocab_size = word[0];
    fields.hidden_size = word[1];
  } else {
    missing.set('vocab_size', `no tensor '${T.word}'`);
    missing.set('hidden_size', `no tensor '${T.word}'`);
  }
  const layers = layerIndices(shapes);
  if (layers.length) fields.num_hidden_layers = layers[layers.length - 1] + 1;
  else missing.set('num_hidden_layers', "no 'uniter.encoder.layer.N.*' tensors");
  if (fields.hidden_size !== undefined) {
    if (fields.hidden_size % 64 === 0) {
      fields.num_attention_heads = fields.hidden_size / 64;
      notes.push(`num_attention_heads = hidden_size / 64 = ${fields.num_attention_heads} (head size 64, as in UNITER base and large; shapes cannot show it)`);
    } else {
      missing.set('num_attention_heads', `hidden_size ${fields.hidden_size} is not a multiple of the usual head size 64, and tensor shapes do not show the head count`);
    }
  }
  const inter = shape(T.intermediate(layers[0] ?? 0));
  if (inter?.length === 2) fields.intermediate_size = inter[0];
  else missing.set('intermediate_size', `no tensor '${T.intermediate(0)}'`);
  const pos = shape(T.position);
  if (pos?.length === 2) fields.max_position_embeddings = pos[0];
  else missing.set('max_position_embeddings', `no tensor '${T.position}'`);
  const tt = shape(T.tokenType);
  if (tt?.length === 2) fields.type_vocab_size = tt[0];
  else missing.set('type_vocab_size', `no tensor '${T.tokenType}'`);
  const img = shape(T.imgLinear);
  if (img?.length === 2) fields.img_dim = img[1];
  else missing.set('img_dim', `no tensor '${T.imgLinear}'`);
  const region = shape(T.regionOut);
  if (region?.length === 2) fields.img_label_dim = region[0];
  else notes.push(`img_label_dim = ${CONFIG_DEFAULTS.img_label_dim} (default: no '${T.regionOut}' in the checkpoint)`);
  return { fields, notes, missing };
}

/**
 * The config for a set of weights: `given` (a user's config file, official or ours) wins field by
 * field, inferred shapes fill the rest, defaults fill what shapes cannot show; then the result is
 * checked against the shapes.
 */
export function resolveUniterConfig(shapes: Shapes, given?: { source: string; json: Record<string, unknown> }): { config: UniterConfigJson; notes: string[] } {
  const { fields, notes, missing } = inferConfigFields(shapes);
  const merged: Record<string, unknown> = {};
  for (const f of FIELD_ORDER) {
    if (given && f in given.json) merged[f] = given.json[f];
    else if (f in fields) merged[f] = fields[f as keyof typeof fields];
    else if (f in CONFIG_DEFAULTS) {
      merged[f] = structuredClone(CONFIG_DEFAULTS[f as keyof typeof CONFIG_DEFAULTS]);
      if (f !== 'img_label_dim') notes.push(`${f} = ${JSON.stringify(merged[f])} (default)`);
    } else {
      const why = missing.get(f) ?? 'not inferable';
      throw new TorchCheckpointError(`cannot infer config field '${f}': ${why}; pass --config with a model config JSON`);
    }
  }
  if (given) for (const [k, v] of Object.entries(given.json)) if (!(k in merged)) merged[k] = v;
  const config = merged as UniterConfigJson;
  checkConfigAgainstWeights(config, shapes, given?.source ?? 'inferred config');
  return { config, notes: given ? notes.filter((n) => !FIELD_ORDER.some((f) => n.startsWith(`${f} `) && f in given.json)) : notes };
}

/** Throws, naming the field and the tensor, when a config contradicts the weights' shapes. */
export function checkConfigAgainstWeights(config: UniterConfigJson, shapes: Shapes, source: string): void {
  const intFields = ['vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'max_position_embeddings', 'type_vocab_size', 'img_dim', 'img_label_dim'] as const;
  for (const f of intFields) {
    const v = config[f];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new TorchCheckpointError(`${source}: field '${f}' must be a positive integer, got ${JSON.stringify(v)}`);
  }
  if (config.hidden_size % config.num_attention_heads !== 0) {
    throw new TorchCheckpointError(`${source}: field 'hidden_size' (${config.hidden_size}) is not a multiple of 'num_attention_heads' (${config.num_attention_heads})`);
  }
  const expect = (tensor: string, dims: Array<[number, keyof UniterConfigJson]>) => {
    const t = shapes.get(tensor);
    if (!t) return;
    const want = dims.map(([, f]) => config[f] as number);
    dims.forEach(([axis, f], i) => {
      if (t.shape.length !== dims.length || t.shape[axis] !== want[i]) {
        throw new TorchCheckpointError(`${source}: field '${String(f)}' is ${want[i]} but tensor '${tensor}' has shape [${t.shape}] (expected [${want}])`);
      }
    });
  };
  expect(T.word, [
    [0, 'vocab_size'],
    [1, 'hidden_size'],
  ]);
  expect(T.position, [
    [0, 'max_position_embeddings'],
    [1, 'hidden_size'],
  ]);
  expect(T.tokenType, [
    [0, 'type_vocab_size'],
    [1, 'hidden_size'],
  ]);
  expect(T.imgLinear, [
    [0, 'hidden_size'],
    [1, 'img_dim'],
  ]);
  expect(T.regionOut, [
    [0, 'img_label_dim'],
    [1, 'hidden_size'],
  ]);
  const layers = layerIndices(shapes);
  if (layers.length) {
    if (layers.length !== config.num_hidden_layers || layers[layers.length - 1] !== config.num_hidden_layers - 1) {
      throw new TorchCheckpointError(`${source}: field 'num_hidden_layers' is ${config.num_hidden_layers} but the weights hold encoder layers [${layers.join(', ')}]`);
    }
    for (const i of layers) {
      expect(T.intermediate(i), [
        [0, 'intermediate_size'],
        [1, 'hidden_size'],
      ]);
    }
  }
}
