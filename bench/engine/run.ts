/**
 * bench/engine: a BERT-base encoder stack (12 layers, hidden 768, 12 heads, FFN 3072, batch
 * 8 x 128 tokens with padding) through the engine (ONNX Runtime) against the same computation
 * in PyTorch eager, both on the CPU in float32.
 *
 *   npm run build && node dist/bench/engine/run.js [--rounds 5] [--warmup 2] [--layers 12]
 *        [--batch 8] [--seq 128] [--ort-threads 2] [--torch-settings 1x2,2x2]
 *        [--python /usr/bin/python3] [--no-parity] [--out bench/engine/results.json]
 *
 * Both sides run as long-lived child processes that time one run per request; requests
 * alternate between them (ORT, PyTorch, PyTorch, ORT, ...) so that load from other processes
 * on this shared machine falls on both alike. A torch setting "AxB" means
 * torch.set_num_threads(A) with OPENBLAS_NUM_THREADS=B. Before timing, a parity check runs
 * a 2-layer version through both and compares outputs and every weight gradient.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { HostTensor, readSafetensors } from '../../src/engine/index.js';
import { writeFileAtomic } from '../../src/util/atomic.js';
import { GiB, Server, formatTable, loadAverage, machineInfo, median, pause, repoRoot, runChild } from '../harness.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WORKER = path.join(HERE, 'worker.js');

interface Options {
  rounds: number;
  warmup: number;
  layers: number;
  batch: number;
  seq: number;
  ortThreads: number;
  torchSettings: Array<{ threads: number; blas: number }>;
  python: string;
  parity: boolean;
  out: string;
}

function parseOptions(argv: string[], root: string): Options {
  const o: Options = {
    rounds: 5,
    warmup: 2,
    layers: 12,
    batch: 8,
    seq: 128,
    ortThreads: 2,
    torchSettings: [
      { threads: 1, blas: 2 },
      { threads: 2, blas: 2 },
    ],
    python: '/usr/bin/python3',
    parity: true,
    out: path.join(root, 'bench/engine/results.json'),
  };
  const int = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < 1) throw new Error(`bench: ${flag} needs a positive integer, got '${v}'`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    switch (a) {
      case '--rounds': o.rounds = int(a, v); i++; break;
      case '--warmup': o.warmup = int(a, v); i++; break;
      case '--layers': o.layers = int(a, v); i++; break;
      case '--batch': o.batch = int(a, v); i++; break;
      case '--seq': o.seq = int(a, v); i++; break;
      case '--ort-threads': o.ortThreads = int(a, v); i++; break;
      case '--python': if (!v) throw new Error('bench: --python needs a path'); o.python = v; i++; break;
      case '--out': if (!v) throw new Error('bench: --out needs a path'); o.out = path.resolve(v); i++; break;
      case '--no-parity': o.parity = false; break;
      case '--torch-settings':
        if (!v || !/^\d+x\d+(,\d+x\d+)*$/.test(v)) throw new Error(`bench: --torch-settings wants e.g. 1x2,2x2 (torch threads x OpenBLAS threads), got '${v}'`);
        o.torchSettings = v.split(',').map((s) => {
          const [threads, blas] = s.split('x').map(Number);
          return { threads, blas };
        });
        i++;
        break;
      default:
        throw new Error(`bench: unknown option '${a}'`);
    }
  }
  return o;
}

type Phase = 'forward' | 'forward_backward';
/** Interleaved runs of the GEMM probe per torch setting. */
const GEMM_PROBES = 10;
const PHASES: Phase[] = ['forward', 'forward_backward'];

export { median };

// ---------------------------------------------------------------------------------------------
// Parity: the two implementations compute the same numbers

interface ParityReport {
  layers: number;
  batch: number;
  seq: number;
  output_max_abs_diff: number;
  loss_engine: number;
  loss_torch: number;
  /** Worst over all weight gradients of max|engine - torch| / max(max|torch|, 1e-3 * largest gradient). */
  grad_max_rel_diff: number;
  worst_grad: string;
  ok: boolean;
}

async function parityCheck(o: Options): Promise<ParityReport> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-bench-parity-'));
  try {
    const shape = { layers: 2, batch: 2, seq: 16 };
    await runChild(process.execPath, [WORKER, 'parity', '--dir', dir, '--layers', String(shape.layers), '--batch', String(shape.batch), '--seq', String(shape.seq)]);
    await runChild(o.python, [path.join(repoRoot(), 'bench/engine/torch_baseline.py'), 'parity', '--dir', dir], { ...process.env, OPENBLAS_NUM_THREADS: '2' });
    const eng = readSafetensors(path.join(dir, 'engine_out.safetensors')).tensors;
    const ref = readSafetensors(path.join(dir, 'torch_out.safetensors')).tensors;
    const maxAbs = (t: HostTensor) => (t.data as Float32Array).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const maxDiff = (a: HostTensor, b: HostTensor) => {
      if (a.shape.join() !== b.shape.join()) throw new Error(`parity: shapes differ [${a.shape}] vs [${b.shape}]`);
      let m = 0;
      for (let i = 0; i < a.data.length; i++) m = Math.max(m, Math.abs((a.data as Float32Array)[i] - (b.data as Float32Array)[i]));
      return m;
    };
    let worst = 0;
    let worstName = '';
    const gradNames = [...ref.keys()].filter((n) => n.startsWith('grad:'));
    if (gradNames.length === 0) throw new Error('parity: PyTorch wrote no gradients');
    // Some gradients are zero in exact arithmetic (the key bias: softmax ignores a per-row
    // shift), so each tensor's scale is floored at a small fraction of the largest gradient.
    const floor = 1e-3 * Math.max(...gradNames.map((n) => maxAbs(ref.get(n)!)));
    for (const name of gradNames) {
      const e = eng.get(name);
      if (!e) throw new Error(`parity: the engine produced no ${name}`);
      const rel = maxDiff(e, ref.get(name)!) / Math.max(maxAbs(ref.get(name)!), floor);
      if (rel > worst) [worst, worstName] = [rel, name];
    }
    const outDiff = maxDiff(eng.get('output')!, ref.get('output')!);
    const lossE = eng.get('loss')!.data[0] as number;
    const lossT = ref.get('loss')!.data[0] as number;
    return {
      ...shape,
      output_max_abs_diff: outDiff,
      loss_engine: lossE,
      loss_torch: lossT,
      grad_max_rel_diff: worst,
      worst_grad: worstName,
      ok: outDiff < 1e-4 && worst < 1e-3 && Math.abs(lossE - lossT) <= 1e-4 * Math.max(1, Math.abs(lossT)),
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------

interface SideResult {
  label: string;
  first_run_s: Record<Phase, number>;
  times_s: Record<Phase, number[]>;
  /** CPU seconds (all threads) per timed run: less sensitive to other load than wall time. */
  cpu_s: Record<Phase, number[]>;
  median_s: Record<Phase, number>;
  min_s: Record<Phase, number>;
  median_cpu_s: Record<Phase, number>;
  /** Seconds per run of the largest GEMM alone (x [batch*seq, 768] @ W^T [768, 3072], summed). */
  gemm_s: number[];
  max_rss_bytes: number;
  info: Record<string, unknown>;
}

function newSide(label: string, info: Record<string, unknown>): SideResult {
  const perPhase = <T>(f: () => T): Record<Phase, T> => ({ forward: f(), forward_backward: f() });
  return {
    label,
    first_run_s: perPhase(() => 0),
    times_s: perPhase(() => []),
    cpu_s: perPhase(() => []),
    median_s: perPhase(() => 0),
    min_s: perPhase(() => 0),
    median_cpu_s: perPhase(() => 0),
    gemm_s: [],
    max_rss_bytes: 0,
    info,
  };
}

function finish(side: SideResult): void {
  for (const phase of PHASES) {
    side.median_s[phase] = median(side.times_s[phase]);
    side.min_s[phase] = Math.min(...side.times_s[phase]);
    side.median_cpu_s[phase] = median(side.cpu_s[phase]);
  }
}

const fmt = (s: number) => `${s.toFixed(3)} s`;

async function main(): Promise<void> {
  const root = repoRoot();
  const o = parseOptions(process.argv.slice(2), root);
  const started = new Date().toISOString();
  const machine = machineInfo(root);
  console.log(`bench/engine: BERT ${o.layers} layers, batch ${o.batch} x ${o.seq}; ${o.rounds} interleaved rounds after ${o.warmup} warm-up runs; load ${machine.load_before.join(' ')}`);

  let parity: ParityReport | null = null;
  if (o.parity) {
    parity = await parityCheck(o);
    console.log(
      `parity (2 layers, 2 x 16): output max|diff| ${parity.output_max_abs_diff.toExponential(2)}, loss ${parity.loss_engine.toFixed(6)} vs ${parity.loss_torch.toFixed(6)}, worst gradient rel diff ${parity.grad_max_rel_diff.toExponential(2)} (${parity.worst_grad}) -> ${parity.ok ? 'OK' : 'MISMATCH'}`,
    );
    if (!parity.ok) throw new Error('parity check failed: the engine and PyTorch compute different numbers; timings would be meaningless');
  }

  const shapeArgs = ['--layers', String(o.layers), '--batch', String(o.batch), '--seq', String(o.seq)];
  const { server: engine, ready: engineReady } = await Server.start('engine worker', process.execPath, [WORKER, 'serve', ...shapeArgs, '--threads', String(o.ortThreads)]);
  const eng = newSide(`engine (ORT, ${o.ortThreads} threads)`, engineReady);
  for (const phase of PHASES) {
    eng.first_run_s[phase] = (await engine.time(phase)).wall; // includes ORT session creation
    for (let i = 1; i < o.warmup; i++) await engine.time(phase);
  }

  const torchSides: SideResult[] = [];
  for (const setting of o.torchSettings) {
    const env = { ...process.env, OPENBLAS_NUM_THREADS: String(setting.blas), OMP_NUM_THREADS: String(setting.threads) };
    const label = `PyTorch threads=${setting.threads} OpenBLAS=${setting.blas}`;
    const { server: torch, ready } = await Server.start(label, o.python, [path.join(root, 'bench/engine/torch_baseline.py'), 'serve', ...shapeArgs, '--threads', String(setting.threads)], env);
    const side = newSide(label, { ...ready, setting });
    for (const phase of PHASES) {
      side.first_run_s[phase] = (await torch.time(phase)).wall;
      for (let i = 1; i < o.warmup; i++) await torch.time(phase);
    }
    for (let r = 0; r < o.rounds; r++) {
      for (const phase of PHASES) {
        // Alternate who goes first; pause so spinning worker threads of the other side settle.
        const order = r % 2 === 0 ? [engine, torch] : [torch, engine];
        for (const s of order) {
          await pause(200);
          const t = await s.time(phase);
          const target = s === engine ? eng : side;
          target.times_s[phase].push(t.wall);
          target.cpu_s[phase].push(t.cpu);
        }
      }
      process.stdout.write(
        `  ${label} round ${r + 1}/${o.rounds}: engine ${fmt(eng.times_s.forward.at(-1)!)} / ${fmt(eng.times_s.forward_backward.at(-1)!)}, torch ${fmt(side.times_s.forward.at(-1)!)} / ${fmt(side.times_s.forward_backward.at(-1)!)} (load ${loadAverage()[0]})\n`,
      );
    }
    for (let r = 0; r < GEMM_PROBES; r++) {
      for (const s of r % 2 === 0 ? [engine, torch] : [torch, engine]) {
        await pause(50);
        (s === engine ? eng : side).gemm_s.push((await s.time('gemm')).wall);
      }
    }
    side.max_rss_bytes = (await torch.request('rss')).max_rss_bytes as number;
    finish(side);
    torchSides.push(side);
    await torch.quit();
  }
  eng.max_rss_bytes = (await engine.request('rss')).max_rss_bytes as number;
  finish(eng);
  await engine.quit();

  // Peak RSS of forward+backward alone (its own process: one warm-up and one timed run).
  const fbOnly = JSON.parse(
    (await runChild(process.execPath, [WORKER, 'time', '--phase', 'forward_backward', ...shapeArgs, '--threads', String(o.ortThreads), '--warmup', '1', '--runs', '1'])).trim(),
  ) as { max_rss_bytes: number };

  const fastest = (phase: Phase) => torchSides.reduce((a, b) => (b.median_s[phase] < a.median_s[phase] ? b : a));
  const summary = PHASES.map((phase) => {
    const best = fastest(phase);
    // Paired ratios: each torch run against the engine run next to it in the same round.
    const offset = torchSides.indexOf(best) * o.rounds;
    const paired = best.times_s[phase].map((t, i) => t / eng.times_s[phase][offset + i]);
    return {
      phase,
      engine_median_s: eng.median_s[phase],
      torch_fastest_setting: best.label,
      torch_fastest_median_s: best.median_s[phase],
      speedup: best.median_s[phase] / eng.median_s[phase],
      speedup_paired_median: median(paired),
      speedup_min: best.min_s[phase] / eng.min_s[phase],
      speedup_cpu_seconds: best.median_cpu_s[phase] / eng.median_cpu_s[phase],
      target: phase === 'forward' ? 2 : 1.3,
    };
  });
  const gemmFlop = 2 * o.batch * o.seq * 768 * 3072;
  const gflops = (s: SideResult) => Number((gemmFlop / median(s.gemm_s) / 1e9).toFixed(1));
  const gemmRates = Object.fromEntries([eng, ...torchSides].map((s) => [s.label, gflops(s)]));
  const targets = {
    forward_speedup_ge_2: summary[0].speedup >= 2,
    forward_backward_speedup_ge_1_3: summary[1].speedup >= 1.3,
    forward_backward_peak_rss_lt_8GiB: fbOnly.max_rss_bytes < 8 * GiB,
  };

  const rows: string[][] = [['side', 'forward median (min)', 'fwd+bwd median (min)', 'CPU-s fwd / fwd+bwd', 'first fwd / fwd+bwd', 'peak RSS']];
  for (const s of [eng, ...torchSides]) {
    rows.push([
      s.label,
      `${fmt(s.median_s.forward)} (${fmt(s.min_s.forward)})`,
      `${fmt(s.median_s.forward_backward)} (${fmt(s.min_s.forward_backward)})`,
      `${s.median_cpu_s.forward.toFixed(2)} / ${s.median_cpu_s.forward_backward.toFixed(2)}`,
      `${fmt(s.first_run_s.forward)} / ${fmt(s.first_run_s.forward_backward)}`,
      `${(s.max_rss_bytes / GiB).toFixed(2)} GiB`,
    ]);
  }
  console.log(`\n${formatTable(rows)}`);
  console.log('');
  for (const s of summary) {
    console.log(
      `${s.phase}: engine ${fmt(s.engine_median_s)} vs ${s.torch_fastest_setting} ${fmt(s.torch_fastest_median_s)} -> ${s.speedup.toFixed(2)}x (paired median ${s.speedup_paired_median.toFixed(2)}x, min ${s.speedup_min.toFixed(2)}x, CPU-seconds ${s.speedup_cpu_seconds.toFixed(2)}x; target ${s.target}x: ${s.speedup >= s.target ? 'met' : 'MISSED'})`,
    );
  }
  console.log(`largest GEMM alone ([${o.batch * o.seq}, 768] @ [768, 3072]), median GFLOP/s: ${Object.entries(gemmRates).map(([k, v]) => `${k} ${v}`).join('; ')}`);
  console.log(`peak RSS of forward+backward alone (engine process): ${(fbOnly.max_rss_bytes / GiB).toFixed(2)} GiB (target < 8 GiB: ${targets.forward_backward_peak_rss_lt_8GiB ? 'met' : 'MISSED'})`);

  const results = {
    started,
    finished: new Date().toISOString(),
    machine: { ...machine, load_after: loadAverage() },
    workload: { model: 'BERT encoder, post-LN, erf-GELU, LayerNorm eps 1e-12, additive key mask', layers: o.layers, hidden: 768, heads: 12, intermediate: 3072, batch: o.batch, seq: o.seq, dtype: 'float32' },
    method: {
      rounds: o.rounds,
      warmup: o.warmup,
      interleaved: true,
      forward: 'engine: forward-only graph; PyTorch: under torch.no_grad()',
      forward_backward: 'loss = sum(output * fixed projection); gradients w.r.t. all weights (engine: returned to JS; PyTorch: .grad)',
    },
    parity,
    engine: eng,
    torch: torchSides,
    summary,
    gemm_gflops_median: gemmRates,
    engine_forward_backward_only_peak_rss_bytes: fbOnly.max_rss_bytes,
    targets,
  };
  writeFileAtomic(o.out, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`\nwrote ${path.relative(process.cwd(), o.out) || o.out}`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : String(e));
  process.exit(1);
});
