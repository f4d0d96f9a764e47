/**
 * Parity against a golden fixture directory (laid out like test/fixtures/golden/tiny, produced
 * by the official PyTorch code): every batch is built twice (the stored official collate output
 * and this project's own collate from examples.json + inputs.safetensors) and compared, then every
 * task, downstream head and the standalone IPOT case is run and compared tensor by tensor.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Graph, compile } from '../engine/index.js';
import { HostTensor, maxMagnitude, toNumbers } from '../engine/host.js';
import { readSafetensors } from '../engine/safetensors.js';
import type { Batch } from '../data/types.js';
import { buildGoldenBatches } from '../data/golden-batches.js';
import { parseConfig } from './config.js';
import { initTypeEmbedding } from './surgery.js';
import { UniterRunner } from './runner.js';
import { DEFAULT_OT, OtOptions, TaskName, hardTargets } from './task-graphs.js';
import { otDistance } from './uniter.js';

export interface GoldenRow {
  name: string;
  kind: 'forward' | 'grad' | 'batch';
  maxAbs: number;
  /** Largest magnitude of the expected tensor. */
  scale: number;
  tolerance: number;
  ok: boolean;
  note?: string;
}

export interface GoldenReport {
  rows: GoldenRow[];
  computed: Map<string, HostTensor>;
  failures: number;
}

/** Tensors a fixture may omit and a port need not produce. */
function isOptional(name: string): boolean {
  return (
    /(^|\/)(txt_emb|img_emb|embedding_output|encoder_layer_\d+|ot_txt_emb|ot_img_emb|image_hidden|init_type_embedding_result)$/.test(name) ||
    /_head_input$/.test(name) ||
    /(attn[12]_(output|weights)|fc_left|fc_right|attn_pool_left|attn_pool_right)$/.test(name)
  );
}

const MODEL_CLASS_TASK: Record<string, TaskName> = {
  UniterForVisualQuestionAnswering: 'vqa',
  UniterForVisualEntailment: 've',
  UniterForNlvr2Paired: 'nlvr2_paired',
  UniterForNlvr2PairedAttn: 'nlvr2_paired_attn',
  UniterForNlvr2Triplet: 'nlvr2_triplet',
  UniterForImageTextRetrieval: 'retrieval',
  UniterForVisualCommonsenseReasoning: 'vcr',
};

/**
 * Tolerances: forward values within 1e-4 of max(1, largest magnitude); gradients within 1e-4 of
 * the gradient tensor's largest magnitude. One exception, stated in the report: a gradient that is
 * analytically zero (the attention key bias: softmax ignores a shift that is constant over keys)
 * holds only float32 rounding noise whose digits depend on summation order. When a gradient's
 * largest magnitude is below float32 resolution of the task's largest gradient (2^-23 times it),
 * it is compared at that resolution instead of at its own noise level; the report says so.
 */
function compare(name: string, kind: 'forward' | 'grad', got: HostTensor | undefined, exp: HostTensor, noiseFloor = 0): GoldenRow {
  const scale = maxMagnitude(exp);
  const numericallyZero = kind === 'grad' && scale > 0 && scale < noiseFloor;
  const tolerance = numericallyZero ? noiseFloor : kind === 'grad' ? 1e-4 * scale : 1e-4 * Math.max(1, scale);
  if (!got) return { name, kind, maxAbs: NaN, scale, tolerance, ok: false, note: 'not computed' };
  if (got.shape.join() !== exp.shape.join())
    return { name, kind, maxAbs: NaN, scale, tolerance, ok: false, note: `shape [${got.shape}] vs expected [${exp.shape}]` };
  let maxAbs = 0;
  for (let i = 0; i < exp.data.length; i++) {
    const d = Math.abs(Number(got.data[i]) - Number(exp.data[i]));
    maxAbs = Number.isNaN(d) ? Infinity : Math.max(maxAbs, d);
  }
  return { name, kind, maxAbs, scale, tolerance, ok: maxAbs <= tolerance };
}

function compareBatch(name: string, stored: Batch, own: Batch): GoldenRow[] {
  const rows: GoldenRow[] = [];
  for (const [k, exp] of stored) {
    const got = own.get(k);
    const row = compare(`${name}:${k}`, 'forward', got, exp);
    rows.push({ ...row, kind: 'batch', tolerance: 0, ok: !!got && row.maxAbs === 0 && got.dtype === exp.dtype, note: got && got.dtype !== exp.dtype ? `dtype ${got.dtype} vs ${exp.dtype}` : row.note });
  }
  return rows;
}

function zerosLike(t: HostTensor): HostTensor {
  return { dtype: 'float32', shape: [...t.shape], data: new Float32Array(t.data.length) };
}

export async function checkGolden(dir: string, opts: { threads?: number } = {}): Promise<GoldenReport> {
  const cfgRaw = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  const cfg = parseConfig(cfgRaw, path.join(dir, 'config.json'));
  const ot: OtOptions = {
    beta: cfgRaw.ot?.beta ?? DEFAULT_OT.beta,
    iterations: cfgRaw.ot?.iteration ?? DEFAULT_OT.iterations,
    lambda: cfgRaw.ot?.lambda ?? DEFAULT_OT.lambda,
  };
  const weights = readSafetensors(path.join(dir, 'weights.safetensors')).tensors;
  checkWeights(cfg, weights, path.join(dir, 'weights.safetensors'));
  const rows: GoldenRow[] = [];
  const computed = new Map<string, HostTensor>();
  let ownBatches = new Map<string, Batch>();
  try {
    ownBatches = buildGoldenBatches(dir);
  } catch (e) {
    rows.push({ name: 'collate:examples.json', kind: 'batch', maxAbs: NaN, scale: 0, tolerance: 0, ok: false, note: (e as Error).message });
  }
  const loadBatch = (rel: string): Batch => {
    const stored = readSafetensors(path.join(dir, rel)).tensors;
    const own = ownBatches.get(rel);
    if (own) rows.push(...compareBatch(rel, stored, own));
    else rows.push({ name: `${rel}`, kind: 'batch', maxAbs: NaN, scale: 0, tolerance: 0, ok: false, note: 'own collate did not build this batch' });
    return stored;
  };
  const record = (prefix: string, exp: Map<string, HostTensor>, out: Map<string, HostTensor>) => {
    let gradScale = 0;
    for (const [k, e] of exp) if (k.startsWith('grad.')) gradScale = Math.max(gradScale, maxMagnitude(e));
    const noiseFloor = 2 ** -23 * gradScale;
    for (const [k, e] of exp) {
      const name = `${prefix}/${k}`;
      const kind = k.startsWith('grad.') ? 'grad' : 'forward';
      let got = out.get(k);
      if (!got && kind === 'grad') got = zerosLike(e); // the loss does not reach this parameter
      if (!got && isOptional(name)) {
        rows.push({ name, kind, maxAbs: NaN, scale: 0, tolerance: 0, ok: true, note: 'optional, not computed' });
        continue;
      }
      const row = compare(name, kind, got, e, noiseFloor);
      if (kind === 'grad' && row.scale > 0 && row.scale < noiseFloor)
        row.note = `numerically zero: values up to ${row.scale.toExponential(1)} are float32 rounding noise; compared at 2^-23 of the task's largest gradient`;
      rows.push(row);
      if (got) computed.set(name, got);
    }
  };

  // Pre-training tasks
  const pretrainRunner = new UniterRunner(cfg, weights, opts.threads);
  for (const task of ['mlm', 'mrfr', 'mrc', 'mrckl', 'itm'] as const) {
    const expFile = path.join(dir, task, 'expected.safetensors');
    if (!fs.existsSync(expFile)) continue;
    const exp = readSafetensors(expFile);
    const batch = loadBatch(`${task}/batch.safetensors`);
    const grads = exp.metadata.grads_included === 'true';
    const out = await pretrainRunner.run(task, batch, { training: false, grads, capture: true, ot: task === 'itm' ? ot : null });
    if (task === 'mrc') out.set('hard_targets', hardTargets(batch.get('label_targets')!));
    if (task === 'itm') {
      const d = out.get('ot_dist')!;
      const targets = toNumbers(batch.get('targets')!);
      const pick = (label: number) => {
        const vals = targets.flatMap((t, i) => (t === label ? [(d.data as Float32Array)[i]] : []));
        return { dtype: 'float32' as const, shape: [vals.length], data: Float32Array.from(vals) };
      };
      out.set('ot_pos_dist', pick(1));
      out.set('ot_neg_dist', pick(0));
    }
    record(task, exp.tensors, out);
  }

  // Downstream heads
  const downDir = path.join(dir, 'downstream');
  if (fs.existsSync(downDir)) {
    for (const folder of fs.readdirSync(downDir).sort()) {
      for (const file of fs.readdirSync(path.join(downDir, folder)).sort()) {
        const m = /^expected(?:_(.+))?\.safetensors$/.exec(file);
        if (!m) continue;
        const suffix = m[1];
        const exp = readSafetensors(path.join(downDir, folder, file));
        const modelClass = exp.metadata.model_class ?? '';
        let task: TaskName | undefined = MODEL_CLASS_TASK[modelClass];
        if (modelClass === 'UniterForReferringExpressionComprehension') task = exp.metadata.mlp === '2' ? 're_mlp2' : 're_mlp1';
        const prefix = suffix ? `downstream/${folder}/${suffix}` : `downstream/${folder}`;
        if (!task) {
          rows.push({ name: prefix, kind: 'forward', maxAbs: NaN, scale: 0, tolerance: 0, ok: false, note: `unknown model_class '${modelClass}'` });
          continue;
        }
        const headFile = path.join(downDir, folder, suffix ? `head_${suffix}.safetensors` : 'head.safetensors');
        const params = new Map(weights);
        for (const [k, v] of readSafetensors(headFile).tensors) params.set(k, v);
        const batch = loadBatch(`downstream/${folder}/${exp.metadata.batch_file ?? 'batch.safetensors'}`);
        const numAnswers = task === 'vqa' ? params.get('vqa_output.3.weight')?.shape[0] : undefined;
        const sampleSize = batch.has('sample_size') ? Number(batch.get('sample_size')!.data[0]) : undefined;
        const tv = params.get('uniter.embeddings.token_type_embeddings.weight')!.shape[0];
        const runner = new UniterRunner({ ...cfg, type_vocab_size: task === 'vcr' || task.startsWith('nlvr2') ? cfg.type_vocab_size : tv, vocab_size: params.get('uniter.embeddings.word_embeddings.weight')!.shape[0] }, params, opts.threads);
        const out = await runner.run(task, batch, { training: false, grads: false, capture: true, numAnswers, sampleSize });
        if (exp.tensors.has('init_type_embedding_result')) out.set('init_type_embedding_result', initTypeEmbedding(weights.get('uniter.embeddings.token_type_embeddings.weight')!, 3));
        record(prefix, exp.tensors, out);
      }
    }
  }

  // Standalone IPOT
  const ipotFile = path.join(dir, 'ipot', 'ipot.safetensors');
  if (fs.existsSync(ipotFile)) {
    const f = readSafetensors(ipotFile);
    const p = JSON.parse(f.metadata.params ?? '{"beta":0.5,"iteration":50}');
    const alt = f.metadata.alt_params ? JSON.parse(f.metadata.alt_params) : null;
    const out = new Map<string, HostTensor>();
    const main = await runIpot(f.tensors, p.beta, p.iteration, opts.threads);
    out.set('cost', main.get('cost')!);
    out.set('T', main.get('T')!);
    out.set('distance', main.get('distance')!);
    if (alt) {
      const a = await runIpot(f.tensors, alt.beta, alt.iteration, opts.threads);
      out.set('alt_T', a.get('T')!);
      out.set('alt_distance', a.get('distance')!);
    }
    const expected = new Map([...f.tensors].filter(([k]) => !['txt_emb', 'img_emb', 'txt_pad', 'img_pad'].includes(k)));
    record('ipot', expected, out);
  }
  return { rows, computed, failures: rows.filter((r) => !r.ok).length };
}

async function runIpot(t: Map<string, HostTensor>, beta: number, iterations: number, threads?: number): Promise<Map<string, HostTensor>> {
  const need = (k: string) => {
    const v = t.get(k);
    if (!v) throw new Error(`ipot/ipot.safetensors: missing tensor '${k}'`);
    return v;
  };
  const te = need('txt_emb');
  const g = new Graph('ipot');
  const txt = g.input('txt_emb', 'float32', ['B', 'M', te.shape[2]]);
  const img = g.input('img_emb', 'float32', ['B', 'N', te.shape[2]]);
  const txtPad = g.input('txt_pad', 'bool', ['B', 'M']);
  const imgPad = g.input('img_pad', 'bool', ['B', 'N']);
  const r = otDistance(txt, img, txtPad, imgPad, beta, iterations);
  const prog = compile(g, { cost: r.cost, T: r.plan, distance: r.distance }, { threads });
  return prog.run({ txt_emb: te, img_emb: need('img_emb'), txt_pad: need('txt_pad'), img_pad: need('img_pad') });
}

/** Config and weights must agree before anything runs (names the tensor and both shapes). */
function checkWeights(cfg: ReturnType<typeof parseConfig>, w: Map<string, HostTensor>, file: string): void {
  const expect: Array<[string, number[]]> = [
    ['uniter.embeddings.word_embeddings.weight', [cfg.vocab_size, cfg.hidden_size]],
    ['uniter.embeddings.position_embeddings.weight', [cfg.max_position_embeddings, cfg.hidden_size]],
    ['uniter.img_embeddings.img_linear.weight', [cfg.hidden_size, cfg.img_dim]],
    ['uniter.encoder.layer.0.intermediate.dense.weight', [cfg.intermediate_size, cfg.hidden_size]],
    ['region_classifier.net.3.weight', [cfg.img_label_dim, cfg.hidden_size]],
  ];
  for (const [name, shape] of expect) {
    const t = w.get(name);
    if (!t) throw new Error(`${file}: missing tensor '${name}' (config needs shape [${shape}])`);
    if (t.shape.join() !== shape.join()) throw new Error(`${file}: tensor '${name}' has shape [${t.shape}] but config.json implies [${shape}]`);
  }
  const last = `uniter.encoder.layer.${cfg.num_hidden_layers - 1}.output.LayerNorm.weight`;
  if (!w.has(last)) throw new Error(`${file}: missing tensor '${last}' (config has ${cfg.num_hidden_layers} layers)`);
  if (w.has(`uniter.encoder.layer.${cfg.num_hidden_layers}.output.LayerNorm.weight`))
    throw new Error(`${file}: has more encoder layers than config.json's num_hidden_layers ${cfg.num_hidden_layers}`);
}
