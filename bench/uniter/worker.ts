/**
 * The engine side of the UNITER benchmark, in its own process so that its peak RSS belongs to
 * the benchmark alone. `run.ts` spawns it; torch_uniter.py answers the same protocol.
 *
 *   node dist/bench/uniter/worker.js serve [--layers 12] [--threads 2] [--seed 1] [--session-options JSON] [--checkpoint-activations 1]
 *        Builds the base model (AdamW, lr 5e-5, betas (0.9, 0.98), eps 1e-6, decay 0.01; clip 5),
 *        prints {"ready": ...}, then answers one JSON line per request line:
 *          {"op":"train","task":"mlm"|"itm","batch":FILE}  forward + backward (dropout 0.1, WRA
 *                                                           for ITM) + clip + AdamW, as pretrain()
 *          {"op":"infer","batch":FILE}                      ITM scores, no dropout, no gradient
 *          {"op":"infer","batch":FILE,"precision":"int8"}   the same from the int8 graph (encoder
 *                                                           linears quantized; issue 19)
 *          {"op":"infer","batch":FILE,"baked":true}         the same from a graph with the weights
 *                                                           baked in as initializers (an experiment:
 *                                                           ORT can then pre-pack GEMM weights)
 *          {"op":"ipot","inputs":FILE}                      IPOT (beta 0.5, 50 iterations) alone
 *          {"op":"gemm","m":M,"k":K,"n":N}                  one [M,K] x [N,K]^T product (a Linear
 *                                                           layer's GEMM), random inputs
 *          "rss"                                            {"max_rss_bytes", "rss_bytes"}
 *          "quit"
 *   node dist/bench/uniter/worker.js parity --dir D
 *        A small UNITER (hidden 64, 2 layers): writes D/config.json, D/weights.safetensors, the batches
 *        D/{mlm,itm,ipot}.safetensors and the engine's numbers D/engine_out.safetensors
 *        (losses, ITM scores, OT distances, IPOT plan, every gradient), for the PyTorch side
 *        to recompute.
 */
import * as path from 'node:path';
import * as readline from 'node:readline';
import { performance } from 'node:perf_hooks';
import { Graph, HostTensor, Program, compile, f32, linear, writeSafetensors } from '../../src/engine/index.js';
import type { Batch } from '../../src/data/types.js';
import { PRESETS, UniterConfig, saveConfig } from '../../src/model/config.js';
import { TIES, allSpecs, initParams } from '../../src/model/params.js';
import { UniterRunner } from '../../src/model/runner.js';
import { DEFAULT_OT, buildTaskGraph, prepareFeeds } from '../../src/model/task-graphs.js';
import { PRECISIONS, Precision, ipot } from '../../src/model/uniter.js';
import { AdamW, clipScale, globalGradNorm } from '../../src/pretrain/optimizer.js';
import { Rng } from '../../src/util/rng.js';
import { hookSessions, parseSessionOptions } from './ort-session.js';
import { ADAMW_OPTIONS, GRAD_CLIP, LEARNING_RATE, makeBatch, makeIpotInputs, readBatch, writeBatch } from './workload.js';

/** The small configuration of the parity check (the benchmark itself uses PRESETS.base). */
const PARITY_CONFIG: UniterConfig = { ...PRESETS.base, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128 };

type Options = Map<string, string>;

function parseArgs(argv: string[]): { cmd: string; opts: Options } {
  const [cmd, ...rest] = argv;
  const opts: Options = new Map();
  for (let i = 0; i < rest.length; i += 2) {
    const a = rest[i];
    const v = rest[i + 1];
    if (!a.startsWith('--') || v === undefined) throw new Error(`uniter worker: expected '--name value' pairs, got '${rest.slice(i).join(' ')}'`);
    opts.set(a.slice(2), v);
  }
  return { cmd: cmd ?? '', opts };
}

function intOpt(opts: Options, name: string, def: number): number {
  const v = opts.get(name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`uniter worker: --${name} must be a positive integer, got '${v}'`);
  return n;
}

/** Every pre-training parameter of `cfg` (tied aliases excluded), freshly initialised. */
function freshParams(cfg: UniterConfig, seed: number): Map<string, HostTensor> {
  return initParams(allSpecs(cfg, 'pretrain').filter((s) => !TIES[s.name]), cfg.initializer_range, seed);
}

/** One Linear layer's matrix product, [M, K] x [N, K]^T (the GEMM that dominates the model). */
class GemmProbe {
  private readonly program: Program;
  private readonly inputs = new Map<string, Map<string, HostTensor>>();

  constructor(threads: number) {
    const g = new Graph('gemm');
    const a = g.input('a', 'float32', ['M', 'K']);
    const w = g.input('w', 'float32', ['N', 'K']);
    this.program = compile(g, { y: linear(a, w) }, { threads });
  }

  async run(m: number, k: number, n: number): Promise<void> {
    const key = `${m}x${k}x${n}`;
    let feeds = this.inputs.get(key);
    if (!feeds) {
      const rng = new Rng(5, 'gemm', key);
      const fill = (len: number) => {
        const x = new Float32Array(len);
        for (let i = 0; i < len; i++) x[i] = rng.uniform() - 0.5;
        return x;
      };
      feeds = new Map([
        ['a', f32([m, k], fill(m * k))],
        ['w', f32([n, k], fill(n * k))],
      ]);
      this.inputs.set(key, feeds);
    }
    await this.program.run(feeds);
  }
}

/** The IPOT graph alone: cost [B, M, N] and padding masks -> transport plan [B, N, M]. */
function ipotProgram(threads: number) {
  const g = new Graph('ipot');
  const cost = g.input('cost', 'float32', ['B', 'M', 'N']);
  const txtPad = g.input('txt_pad', 'bool', ['B', 'M']);
  const imgPad = g.input('img_pad', 'bool', ['B', 'N']);
  return compile(g, { plan: ipot(cost, txtPad, imgPad, DEFAULT_OT.beta, DEFAULT_OT.iterations) }, { threads });
}

function gradients(out: Map<string, HostTensor>): Map<string, Float32Array> {
  const grads = new Map<string, Float32Array>();
  for (const [k, v] of out) if (k.startsWith('grad.')) grads.set(k.slice(5), v.data as Float32Array);
  return grads;
}

/** The training step of pretrain(): run with gradients, clip, AdamW. */
class EngineTrainer {
  readonly runner: UniterRunner;
  private readonly optimizer: AdamW;
  private step = 0;
  private bakedInference: Program | null = null;

  constructor(
    cfg: UniterConfig,
    params: Map<string, HostTensor>,
    private readonly threads: number,
    private readonly seed: number,
    checkpointActivations: boolean,
  ) {
    this.runner = new UniterRunner(cfg, params, threads, { checkpointActivations });
    const values = new Map<string, Float32Array>();
    const shapes = new Map<string, number[]>();
    for (const [k, v] of params) {
      values.set(k, v.data as Float32Array);
      shapes.set(k, v.shape);
    }
    this.optimizer = new AdamW(values, shapes, ADAMW_OPTIONS);
  }

  async train(task: 'mlm' | 'itm', batch: Batch): Promise<Record<string, number>> {
    const t0 = performance.now();
    const out = await this.runner.run(task, batch, {
      training: true,
      grads: true,
      ot: task === 'itm' ? DEFAULT_OT : null,
      dropout: { seed: this.seed, step: this.step++ },
    });
    const t1 = performance.now();
    const grads = gradients(out);
    // As the trainers: the norm, then the clipping factor applied inside the update.
    const clip = clipScale(globalGradNorm(grads), GRAD_CLIP);
    const t2 = performance.now();
    this.optimizer.step(grads, LEARNING_RATE, clip);
    const t3 = performance.now();
    return {
      loss: Number(out.get('loss')!.data[0]),
      forward_backward_s: (t1 - t0) / 1000,
      clip_s: (t2 - t1) / 1000,
      optimizer_s: (t3 - t2) / 1000,
      updated_params: [...grads.values()].reduce((s, g) => s + g.length, 0),
    };
  }

  async infer(batch: Batch, baked = false, precision: Precision = 'float32'): Promise<HostTensor> {
    const opts = { training: false, grads: false, inference: true };
    // As Uniter.scores(): a graph whose only output is the scores.
    if (!baked) return (await this.runner.run('itm', batch, { ...opts, precision, outputs: ['itm_scores'] })).get('itm_scores')!;
    if (!this.bakedInference) {
      const tg = buildTaskGraph(this.runner.cfg, 'itm', opts);
      const weights = new Map(tg.params.map((n) => [n, this.runner.params.get(n)!]));
      this.bakedInference = compile(tg.graph, tg.outputs, { threads: this.threads, initializers: weights });
    }
    return (await this.bakedInference.run(prepareFeeds('itm', batch, { inference: true }))).get('itm_scores')!;
  }
}

async function serve(opts: Options): Promise<void> {
  // An experiment, never the default: extra ONNX Runtime session options (see ort-session.ts).
  const sessionOptions = opts.get('session-options');
  if (sessionOptions) hookSessions(parseSessionOptions(sessionOptions, 'uniter worker --session-options'));
  const cfg: UniterConfig = { ...PRESETS.base, num_hidden_layers: intOpt(opts, 'layers', PRESETS.base.num_hidden_layers) };
  const threads = intOpt(opts, 'threads', 2);
  const seed = intOpt(opts, 'seed', 1);
  const t0 = performance.now();
  const params = freshParams(cfg, seed);
  const checkpointActivations = opts.get('checkpoint-activations') === '1';
  const trainer = new EngineTrainer(cfg, params, threads, seed, checkpointActivations);
  const ipotRun = ipotProgram(threads);
  const gemm = new GemmProbe(threads);
  const say = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
  const batches = new Map<string, Batch>();
  const load = (file: unknown): Batch => {
    if (typeof file !== 'string') throw new Error(`request needs a batch file, got ${JSON.stringify(file)}`);
    let b = batches.get(file);
    if (!b) batches.set(file, (b = readBatch(file)));
    return b;
  };
  say({
    ready: true,
    side: 'engine',
    config: cfg,
    threads,
    session_options: sessionOptions ? JSON.parse(sessionOptions) : null,
    checkpoint_activations: checkpointActivations,
    parameters: [...params.values()].reduce((s, t) => s + t.data.length, 0),
    init_s: (performance.now() - t0) / 1000,
  });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const text = line.trim();
    if (text === 'quit') break;
    if (text === 'rss') {
      say({ max_rss_bytes: process.resourceUsage().maxRSS * 1024, rss_bytes: process.memoryUsage.rss() });
      continue;
    }
    try {
      const req = JSON.parse(text) as { op?: string; task?: string; batch?: string; inputs?: string };
      const start = performance.now();
      const cpu = process.cpuUsage();
      let extra: Record<string, unknown>;
      if (req.op === 'train') {
        if (req.task !== 'mlm' && req.task !== 'itm') throw new Error(`train: task must be mlm or itm, got ${JSON.stringify(req.task)}`);
        extra = await trainer.train(req.task, load(req.batch));
      } else if (req.op === 'infer') {
        const precision = (req as { precision?: string }).precision ?? 'float32';
        if (!PRECISIONS.includes(precision as Precision)) throw new Error(`infer: precision must be one of ${PRECISIONS.join(', ')}, got ${JSON.stringify(precision)}`);
        const scores = await trainer.infer(load(req.batch), (req as { baked?: boolean }).baked === true, precision as Precision);
        extra = { pairs: scores.shape[0] };
      } else if (req.op === 'gemm') {
        const { m, k, n } = req as unknown as { m: number; k: number; n: number };
        if (![m, k, n].every((d) => Number.isInteger(d) && d > 0)) throw new Error(`gemm: m, k and n must be positive integers, got ${text}`);
        await gemm.run(m, k, n);
        extra = { gflop: (2 * m * k * n) / 1e9 };
      } else if (req.op === 'ipot') {
        const plan = (await ipotRun.run(load(req.inputs))).get('plan')!;
        extra = { plan_shape: plan.shape };
      } else {
        throw new Error(`unknown request ${text.slice(0, 100)}`);
      }
      const used = process.cpuUsage(cpu);
      say({ op: req.op, seconds: (performance.now() - start) / 1000, cpu_seconds: (used.user + used.system) / 1e6, ...extra });
    } catch (e) {
      say({ error: (e as Error).message });
    }
  }
  lines.close();
}

/** Outputs of the small model for the parity check (eval mode: no dropout, so both sides agree). */
async function parity(opts: Options): Promise<Record<string, unknown>> {
  const dir = opts.get('dir');
  if (!dir) throw new Error('uniter worker parity: --dir is required');
  const cfg = PARITY_CONFIG;
  const params = freshParams(cfg, 3);
  const runner = new UniterRunner(cfg, params, intOpt(opts, 'threads', 2));
  const shape = { examples: 6, regions: 10, wordpieces: 12 };
  const mlm = makeBatch('mlm', shape, 5);
  const itm = makeBatch('itm', shape, 5);
  const ipotInputs = makeIpotInputs(4, 14, 10, 5);
  writeSafetensors(path.join(dir, 'weights.safetensors'), params);
  saveConfig(path.join(dir, 'config.json'), cfg);
  writeBatch(path.join(dir, 'mlm.safetensors'), mlm);
  writeBatch(path.join(dir, 'itm.safetensors'), itm);
  writeBatch(path.join(dir, 'ipot.safetensors'), ipotInputs);
  const result = new Map<string, HostTensor>();
  const mlmOut = await runner.run('mlm', mlm, { training: false, grads: true });
  result.set('mlm.loss', mlmOut.get('loss')!);
  for (const [k, g] of gradients(mlmOut)) result.set(`mlm.grad.${k}`, f32(params.get(k)!.shape, g));
  const itmOut = await runner.run('itm', itm, { training: false, grads: true, ot: DEFAULT_OT });
  for (const k of ['loss', 'itm_loss', 'ot_loss', 'itm_scores', 'ot_dist']) result.set(`itm.${k}`, itmOut.get(k)!);
  for (const [k, g] of gradients(itmOut)) result.set(`itm.grad.${k}`, f32(params.get(k)!.shape, g));
  result.set('ipot.plan', (await ipotProgram(2).run(ipotInputs)).get('plan')!);
  writeSafetensors(path.join(dir, 'engine_out.safetensors'), result);
  return { dir, tensors: result.size };
}

async function main(): Promise<void> {
  const { cmd, opts } = parseArgs(process.argv.slice(2));
  if (cmd === 'serve') return serve(opts);
  if (cmd === 'parity') {
    process.stdout.write(`${JSON.stringify(await parity(opts))}\n`);
    return;
  }
  throw new Error(`uniter worker: unknown command '${cmd}' (expected 'serve' or 'parity')`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
