/**
 * The engine side of the benchmark, in its own process so that its peak RSS belongs to the
 * benchmark alone. `run.ts` spawns it.
 *
 *   node dist/bench/engine/worker.js serve [--layers 12] [--batch 8] [--seq 128] [--threads 2]
 *        Builds the forward and the forward+backward programs, prints {"ready": ...}, then
 *        answers each stdin line "forward" | "forward_backward" | "gemm" | "rss" with one JSON line
 *        ("quit" ends). The same protocol as torch_baseline.py, so the two can be interleaved.
 *   node dist/bench/engine/worker.js time --phase forward|forward_backward [--layers 12]
 *        [--batch 8] [--seq 128] [--warmup 2] [--runs 5] [--threads 2] [--profile <prefix>]
 *   node dist/bench/engine/worker.js parity --dir <dir> [--layers 2] [--batch 2] [--seq 16]
 *        (writes inputs, weights and the engine's outputs as safetensors into <dir>)
 */
import * as path from 'node:path';
import * as readline from 'node:readline';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import { Graph, HostTensor, Tensor, compile, f32, gemm, sumAll, writeSafetensors } from '../../src/engine/index.js';
import { median } from '../harness.js';
import { BERT_BASE, BertConfig, bertGradOutputs, bertInputs, buildBert, initBertParams } from './bert.js';

export type Phase = 'forward' | 'forward_backward';

export interface WorkerTiming {
  phase: Phase;
  config: BertConfig & { batch: number; seq: number; threads: number };
  build_s: number;
  /** First run: ORT session creation (graph optimisation) plus one execution. */
  first_run_s: number;
  times_s: number[];
  median_s: number;
  max_rss_bytes: number;
  /** Nodes in the traced graph (forward and, when asked for, backward). */
  traced_nodes: number;
  onnx_bytes: number;
  /** Prefix of the ORT profile trace (`<prefix>_<timestamp>.json`) when profiling. */
  profile_prefix?: string;
}

function parseArgs(argv: string[]): { cmd: string; opts: Map<string, string> } {
  const [cmd, ...rest] = argv;
  const opts = new Map<string, string>();
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (!a.startsWith('--')) throw new Error(`worker: unexpected argument '${a}'`);
    const v = rest[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`worker: option ${a} needs a value`);
    opts.set(a.slice(2), v);
    i++;
  }
  return { cmd: cmd ?? '', opts };
}

function intOpt(opts: Map<string, string>, name: string, def: number): number {
  const v = opts.get(name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`worker: --${name} must be a non-negative integer, got '${v}'`);
  return n;
}

async function time(opts: Map<string, string>): Promise<WorkerTiming> {
  const phase = opts.get('phase') as Phase;
  if (phase !== 'forward' && phase !== 'forward_backward') throw new Error(`worker: --phase must be forward or forward_backward, got '${phase}'`);
  const cfg: BertConfig = { ...BERT_BASE, layers: intOpt(opts, 'layers', BERT_BASE.layers) };
  const batch = intOpt(opts, 'batch', 8);
  const seq = intOpt(opts, 'seq', 128);
  const warmup = intOpt(opts, 'warmup', 2);
  const runs = intOpt(opts, 'runs', 5);
  const threads = intOpt(opts, 'threads', 2);
  const profile = opts.get('profile');

  const t0 = performance.now();
  const bert = buildBert(cfg);
  const outputs: Record<string, Tensor> = phase === 'forward' ? { output: bert.output } : { loss: bert.loss, ...bertGradOutputs(bert) };
  const program = compile(bert.graph, outputs, { threads });
  const build_s = (performance.now() - t0) / 1000;
  const feeds = new Map<string, HostTensor>([...initBertParams(cfg, 1), ...bertInputs(cfg, batch, seq, 2)]);
  // The profiled variant needs its own session (the runtime's cached one has no profiling).
  let runOnce: () => Promise<unknown> = () => program.run(feeds);
  let profileSession: ort.InferenceSession | null = null;
  if (profile) {
    profileSession = await ort.InferenceSession.create(program.model.bytes, {
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
      enableProfiling: true,
      profileFilePrefix: profile,
    });
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of feeds) ortFeeds[name] = new ort.Tensor('float32', t.data as Float32Array, t.shape);
    const s = profileSession;
    runOnce = () => s.run(ortFeeds);
  }
  const t1 = performance.now();
  await runOnce();
  const first_run_s = (performance.now() - t1) / 1000;
  for (let i = 1; i < warmup; i++) await runOnce();
  const times_s: number[] = [];
  for (let i = 0; i < runs; i++) {
    const s = performance.now();
    await runOnce();
    times_s.push((performance.now() - s) / 1000);
  }
  // endProfiling writes the JSON trace as `<prefix>_<timestamp>.json`.
  if (profileSession) profileSession.endProfiling();
  return {
    phase,
    config: { ...cfg, batch, seq, threads },
    build_s,
    first_run_s,
    times_s,
    median_s: median(times_s),
    max_rss_bytes: process.resourceUsage().maxRSS * 1024,
    traced_nodes: bert.graph.nodes.length,
    onnx_bytes: program.model.bytes.length,
    profile_prefix: profile,
  };
}

/** sum(x @ W^T) for x [rows, inner], W [outer, inner]: one GEMM plus a cheap reduction. */
function buildGemmProbe(rows: number, inner: number, outer: number): { graph: Graph; total: Tensor; feeds: Map<string, HostTensor> } {
  const graph = new Graph('gemm_probe');
  const x = graph.input('x', 'float32', [rows, inner]);
  const w = graph.param('w', [outer, inner]);
  const fill = (shape: number[]) => f32(shape, Float32Array.from({ length: shape[0] * shape[1] }, (_, i) => Math.sin(i) * 0.05));
  return { graph, total: sumAll(gemm(x, w, { transB: true })), feeds: new Map([['x', fill([rows, inner])], ['w', fill([outer, inner])]]) };
}

async function serve(opts: Map<string, string>): Promise<void> {
  const cfg: BertConfig = { ...BERT_BASE, layers: intOpt(opts, 'layers', BERT_BASE.layers) };
  const batch = intOpt(opts, 'batch', 8);
  const seq = intOpt(opts, 'seq', 128);
  const threads = intOpt(opts, 'threads', 2);
  const t0 = performance.now();
  // Two graphs: inference needs no backward nodes (and ORT then plans no memory for them).
  const fwd = buildBert(cfg);
  const fwdbwd = buildBert(cfg);
  const feeds = new Map<string, HostTensor>([...initBertParams(cfg, 1), ...bertInputs(cfg, batch, seq, 2)]);
  // The largest GEMM of the model alone (FFN up-projection, summed so little comes back to JS):
  // it tells how much of any difference is the matrix-multiply library's.
  const gemmProbe = buildGemmProbe(batch * seq, cfg.hidden, cfg.intermediate);
  const programs = {
    forward: { program: compile(fwd.graph, { output: fwd.output }, { threads }), feeds },
    forward_backward: { program: compile(fwdbwd.graph, { loss: fwdbwd.loss, ...bertGradOutputs(fwdbwd) }, { threads }), feeds },
    gemm: { program: compile(gemmProbe.graph, { total: gemmProbe.total }, { threads }), feeds: gemmProbe.feeds },
  };
  const build_s = (performance.now() - t0) / 1000;
  const say = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
  say({
    ready: true,
    config: { ...cfg, batch, seq, threads },
    build_s,
    traced_nodes: { forward: fwd.graph.nodes.length, forward_backward: fwdbwd.graph.nodes.length },
    onnx_bytes: { forward: programs.forward.program.model.bytes.length, forward_backward: programs.forward_backward.program.model.bytes.length },
  });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const cmd = line.trim();
    if (cmd === 'quit') break;
    if (cmd === 'rss') {
      say({ max_rss_bytes: process.resourceUsage().maxRSS * 1024 });
      continue;
    }
    if (cmd !== 'forward' && cmd !== 'forward_backward' && cmd !== 'gemm') {
      say({ error: `unknown command '${cmd}'` });
      continue;
    }
    const start = performance.now();
    const cpu = process.cpuUsage();
    const out = await programs[cmd].program.run(programs[cmd].feeds);
    const seconds = (performance.now() - start) / 1000;
    const used = process.cpuUsage(cpu);
    say({ phase: cmd, seconds, cpu_seconds: (used.user + used.system) / 1e6, outputs: out.size });
  }
  lines.close();
}

async function parity(opts: Map<string, string>): Promise<{ dir: string }> {
  const dir = opts.get('dir');
  if (!dir) throw new Error('worker parity: --dir is required');
  const cfg: BertConfig = { ...BERT_BASE, layers: intOpt(opts, 'layers', 2) };
  const batch = intOpt(opts, 'batch', 2);
  const seq = intOpt(opts, 'seq', 16);
  const bert = buildBert(cfg);
  const program = compile(bert.graph, { output: bert.output, loss: bert.loss, ...bertGradOutputs(bert) }, { threads: intOpt(opts, 'threads', 2) });
  const params = initBertParams(cfg, 3);
  const inputs = bertInputs(cfg, batch, seq, 4);
  writeSafetensors(path.join(dir, 'weights.safetensors'), params, { layers: String(cfg.layers) });
  writeSafetensors(path.join(dir, 'inputs.safetensors'), inputs);
  const out = await program.run(new Map([...params, ...inputs]));
  writeSafetensors(path.join(dir, 'engine_out.safetensors'), out);
  return { dir };
}

async function main(): Promise<void> {
  const { cmd, opts } = parseArgs(process.argv.slice(2));
  let result: unknown;
  if (cmd === 'serve') return serve(opts);
  if (cmd === 'time') result = await time(opts);
  else if (cmd === 'parity') result = await parity(opts);
  else throw new Error(`worker: unknown command '${cmd}' (expected 'serve', 'time' or 'parity')`);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
