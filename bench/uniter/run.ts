/**
 * bench/uniter: UNITER-base (hidden 768, 12 layers, vocab 28996, img_dim 2048, 1601 labels)
 * through the engine (ONNX Runtime) against a PyTorch UNITER of the same architecture
 * (bench/uniter/torch_uniter.py), both on the CPU in float32, in one invocation with the same
 * thread count. Measures:
 *
 *   train    one training step (forward + backward + clip + AdamW) on an MLM batch and on an
 *            ITM+WRA batch of 52 examples x (42 text tokens + 36 regions) = 4056 tokens
 *   infer    ITM scoring throughput (pairs/s) at batch 1 and batch 64
 *   ipot     IPOT alone (50 iterations) on B x 42 x 36 costs
 *   scaling  ITM+WRA step time over batch sizes (8, 16, 32, 64 examples) and 36 vs 100 regions
 *   data     the data-loader benchmark (bench/data-loader.ts) against the training step rate
 *
 * plus peak resident memory of each side per scenario (train, infer: fresh processes each).
 *
 *   npm run build && node dist/bench/uniter/run.js [--scenarios train,infer,ipot,scaling,data]
 *        [--rounds 3] [--scaling-rounds 2] [--warmup 1] [--layers 12] [--ort-threads 2] [--torch-settings 1x2]
 *        [--python /usr/bin/python3] [--no-parity | --parity-only] [--out bench/results/uniter.json]
 *        [--train-examples 52] [--infer-batches 1,64] [--scaling-batches 8,16,32,64]
 *        [--scaling-regions 36,100] [--scaling-examples 32]
 *        [--engine-session-options '{"enableCpuMemArena":false}']   (an experiment: extra ORT options)
 *
 * A torch setting "AxB" means torch.set_num_threads(A) with OPENBLAS_NUM_THREADS=B; with several,
 * every scenario runs against each and ratios use the fastest. Requests alternate between the
 * two sides (engine first in even rounds, PyTorch first in odd ones). Before timing, a parity
 * check runs a small UNITER (hidden 64, 2 layers) through both and compares losses, scores, OT
 * distances, the IPOT plan and every gradient.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { HostTensor, readSafetensors } from '../../src/engine/index.js';
import { writeFileAtomic } from '../../src/util/atomic.js';
import { GiB, Server, Summary, formatTable, lastJsonLine, loadAverage, machineInfo, median, pause, repoRoot, runChild, summarize } from '../harness.js';
import { parseSessionOptions } from './ort-session.js';
import { BatchKind, WorkloadShape, batchKey, batchTokens, makeBatch, makeIpotInputs, writeBatch } from './workload.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WORKER = path.join(HERE, 'worker.js');

export const SCENARIOS = ['train', 'infer', 'ipot', 'scaling', 'data'] as const;
export type Scenario = (typeof SCENARIOS)[number];

export interface TorchSetting {
  threads: number;
  blas: number;
}

interface Options {
  scenarios: Scenario[];
  rounds: number;
  /** Rounds of the scaling scenario (its large points are the slowest requests of the run). */
  scalingRounds: number;
  warmup: number;
  layers: number;
  ortThreads: number;
  torchSettings: TorchSetting[];
  python: string;
  parity: boolean;
  /** Extra ONNX Runtime session options for the engine worker (an experiment; default none). */
  engineSessionOptions: string | null;
  /** Stop after the parity check (a quick test that the baseline is the same model). */
  parityOnly: boolean;
  out: string;
  /** The training batch: examples, regions, wordpieces (default 52 x 36, 40 wordpieces). */
  train: WorkloadShape;
  inferBatches: number[];
  scalingBatches: number[];
  scalingRegions: number[];
  /** Examples per batch of the region-scaling points. */
  scalingExamples: number;
}

function parseOptions(argv: string[], root: string): Options {
  const o: Options = {
    scenarios: [...SCENARIOS],
    rounds: 3,
    scalingRounds: 2,
    warmup: 1,
    layers: 12,
    ortThreads: 2,
    torchSettings: [{ threads: 1, blas: 2 }],
    python: '/usr/bin/python3',
    parity: true,
    parityOnly: false,
    engineSessionOptions: null,
    out: path.join(root, 'bench/results/uniter.json'),
    train: { examples: 52, regions: 36, wordpieces: 40 },
    inferBatches: [1, 64],
    scalingBatches: [8, 16, 32, 64],
    scalingRegions: [36, 100],
    scalingExamples: 32,
  };
  const int = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < 1) throw new Error(`bench/uniter: ${flag} needs a positive integer, got '${v}'`);
    return n;
  };
  const ints = (flag: string, v: string | undefined): number[] => {
    if (!v || !/^\d+(,\d+)*$/.test(v)) throw new Error(`bench/uniter: ${flag} wants a comma-separated list of positive integers, got '${v}'`);
    return v.split(',').map((x) => int(flag, x));
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    switch (a) {
      case '--rounds': o.rounds = int(a, v); i++; break;
      case '--scaling-rounds': o.scalingRounds = int(a, v); i++; break;
      case '--warmup': o.warmup = int(a, v); i++; break;
      case '--layers': o.layers = int(a, v); i++; break;
      case '--ort-threads': o.ortThreads = int(a, v); i++; break;
      case '--train-examples': o.train = { ...o.train, examples: int(a, v) }; i++; break;
      case '--infer-batches': o.inferBatches = ints(a, v); i++; break;
      case '--scaling-batches': o.scalingBatches = ints(a, v); i++; break;
      case '--scaling-regions': o.scalingRegions = ints(a, v); i++; break;
      case '--scaling-examples': o.scalingExamples = int(a, v); i++; break;
      case '--python': if (!v) throw new Error('bench/uniter: --python needs a path'); o.python = v; i++; break;
      case '--out': if (!v) throw new Error('bench/uniter: --out needs a path'); o.out = path.resolve(v); i++; break;
      case '--no-parity': o.parity = false; break;
      case '--parity-only': o.parityOnly = true; break;
      case '--engine-session-options':
        parseSessionOptions(v ?? '', 'bench/uniter --engine-session-options');
        o.engineSessionOptions = v!;
        i++;
        break;
      case '--scenarios': {
        const names = (v ?? '').split(',');
        const bad = names.filter((n) => !(SCENARIOS as readonly string[]).includes(n));
        if (!v || bad.length) throw new Error(`bench/uniter: --scenarios takes a list of ${SCENARIOS.join(', ')}; got '${v}'`);
        o.scenarios = names as Scenario[];
        i++;
        break;
      }
      case '--torch-settings':
        if (!v || !/^\d+x\d+(,\d+x\d+)*$/.test(v)) throw new Error(`bench/uniter: --torch-settings wants e.g. 1x2,2x1 (torch threads x OpenBLAS threads), got '${v}'`);
        o.torchSettings = v.split(',').map((s) => {
          const [threads, blas] = s.split('x').map(Number);
          return { threads, blas };
        });
        i++;
        break;
      default:
        throw new Error(`bench/uniter: unknown option '${a}'`);
    }
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// Parity: the PyTorch baseline computes the same model

export interface UniterParity {
  config: string;
  /** |engine - torch| / max(|torch|, 1) per scalar. */
  losses: Record<string, { engine: number; torch: number; rel_diff: number }>;
  itm_scores_max_abs_diff: number;
  ot_dist_max_abs_diff: number;
  ipot_plan_max_abs_diff: number;
  /** Worst over all gradients of max|engine - torch| / max(max|torch|, 1e-3 x largest gradient). */
  grad_max_rel_diff: number;
  worst_grad: string;
  gradients_compared: number;
  ok: boolean;
}

function maxAbs(t: HostTensor): number {
  let m = 0;
  for (const v of t.data as Float32Array) m = Math.max(m, Math.abs(v));
  return m;
}

function maxDiff(a: HostTensor, b: HostTensor, what: string): number {
  if (a.shape.join() !== b.shape.join()) throw new Error(`parity: ${what} has shape [${a.shape}] in the engine, [${b.shape}] in PyTorch`);
  let m = 0;
  for (let i = 0; i < a.data.length; i++) m = Math.max(m, Math.abs(Number(a.data[i]) - Number(b.data[i])));
  return m;
}

async function parityCheck(o: Options): Promise<UniterParity> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-bench-parity-'));
  try {
    await runChild(process.execPath, [WORKER, 'parity', '--dir', dir]);
    await runChild(o.python, [path.join(repoRoot(), 'bench/uniter/torch_uniter.py'), 'parity', '--dir', dir], { ...process.env, OPENBLAS_NUM_THREADS: '2' });
    const eng = readSafetensors(path.join(dir, 'engine_out.safetensors')).tensors;
    const ref = readSafetensors(path.join(dir, 'torch_out.safetensors')).tensors;
    const get = (m: Map<string, HostTensor>, side: string, k: string) => {
      const t = m.get(k);
      if (!t) throw new Error(`parity: the ${side} side produced no '${k}'`);
      return t;
    };
    const losses: UniterParity['losses'] = {};
    for (const k of ['mlm.loss', 'itm.loss', 'itm.itm_loss', 'itm.ot_loss']) {
      const e = Number(get(eng, 'engine', k).data[0]);
      const t = Number(get(ref, 'torch', k).data[0]);
      losses[k] = { engine: e, torch: t, rel_diff: Math.abs(e - t) / Math.max(Math.abs(t), 1) };
    }
    let worst = 0;
    let worstName = '';
    let compared = 0;
    for (const task of ['mlm', 'itm']) {
      const names = [...ref.keys()].filter((n) => n.startsWith(`${task}.grad.`));
      const engNames = [...eng.keys()].filter((n) => n.startsWith(`${task}.grad.`));
      if (names.length === 0) throw new Error(`parity: PyTorch wrote no ${task} gradients`);
      const missing = names.filter((n) => !eng.has(n));
      const extra = engNames.filter((n) => !ref.has(n) && maxAbs(eng.get(n)!) > 0);
      if (missing.length || extra.length) throw new Error(`parity: ${task} gradients differ in which parameters get one (engine lacks [${missing}], PyTorch lacks [${extra}])`);
      // Some gradients are zero in exact arithmetic (the key bias: softmax ignores a per-row
      // shift), so each tensor's scale is floored at a small fraction of the largest gradient.
      const floor = 1e-3 * Math.max(...names.map((n) => maxAbs(ref.get(n)!)));
      for (const n of names) {
        const rel = maxDiff(eng.get(n)!, ref.get(n)!, n) / Math.max(maxAbs(ref.get(n)!), floor);
        compared++;
        if (rel > worst) [worst, worstName] = [rel, n];
      }
    }
    const result: UniterParity = {
      config: 'hidden 64, 2 layers, 4 heads, FFN 128, vocab 28996, img_dim 2048; 6 examples x (14 text tokens + 10 regions); eval mode (no dropout)',
      losses,
      itm_scores_max_abs_diff: maxDiff(get(eng, 'engine', 'itm.itm_scores'), get(ref, 'torch', 'itm.itm_scores'), 'itm_scores'),
      ot_dist_max_abs_diff: maxDiff(get(eng, 'engine', 'itm.ot_dist'), get(ref, 'torch', 'itm.ot_dist'), 'ot_dist'),
      ipot_plan_max_abs_diff: maxDiff(get(eng, 'engine', 'ipot.plan'), get(ref, 'torch', 'ipot.plan'), 'ipot plan'),
      grad_max_rel_diff: worst,
      worst_grad: worstName,
      gradients_compared: compared,
      ok: false,
    };
    result.ok =
      Object.values(losses).every((l) => l.rel_diff < 1e-4) &&
      result.itm_scores_max_abs_diff < 1e-4 &&
      result.ot_dist_max_abs_diff < 1e-4 &&
      result.ipot_plan_max_abs_diff < 1e-5 &&
      result.grad_max_rel_diff < 1e-3;
    return result;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Timing: cases run on both sides, interleaved

interface Case {
  label: string;
  request: Record<string, unknown>;
  /** Units of work per request: examples (train), pairs (infer), plans (ipot). */
  units: number;
  tokens?: number;
  /** Timed requests per round (cheap cases take several to smooth out noise). */
  perRound?: number;
}

interface SideTimes {
  first_s: number;
  wall_s: number[];
  cpu_s: number[];
  /** Training: the step's parts (forward_backward_s, clip_s, optimizer_s) per timed run. */
  parts: Record<string, number[]>;
}

export interface CaseResult {
  label: string;
  request: Record<string, unknown>;
  units: number;
  tokens?: number;
  engine: SideTimes & { wall: Summary; cpu: Summary; parts_median: Record<string, number> };
  torch: Array<SideTimes & { setting: string; wall: Summary; cpu: Summary; parts_median: Record<string, number> }>;
  /** Against the fastest torch setting (by median wall time). */
  torch_fastest: string;
  speedup: number;
  speedup_paired: Summary;
  speedup_cpu: number;
}

export interface ScenarioResult {
  scenario: Scenario;
  cases: CaseResult[];
  engine_ready: Record<string, unknown>;
  torch_ready: Record<string, unknown>[];
  engine_peak_rss_bytes: number;
  torch_peak_rss_bytes: Record<string, number>;
  seconds: number;
}

const settingLabel = (s: TorchSetting) => `${s.threads}x${s.blas}`;
const numbers = (r: Record<string, unknown>, keys: string[]): Record<string, number> => Object.fromEntries(keys.filter((k) => typeof r[k] === 'number').map((k) => [k, r[k] as number]));
const PART_KEYS = ['forward_backward_s', 'clip_s', 'optimizer_s'];

function newTimes(): SideTimes {
  return { first_s: 0, wall_s: [], cpu_s: [], parts: {} };
}

function record(t: SideTimes, reply: { wall: number; cpu: number; reply: Record<string, unknown> }): void {
  t.wall_s.push(reply.wall);
  t.cpu_s.push(reply.cpu);
  for (const [k, v] of Object.entries(numbers(reply.reply, PART_KEYS))) (t.parts[k] ??= []).push(v);
}

function finishTimes(t: SideTimes) {
  return { ...t, wall: summarize(t.wall_s), cpu: summarize(t.cpu_s), parts_median: Object.fromEntries(Object.entries(t.parts).map(([k, v]) => [k, median(v)])) };
}

function engineArgs(o: Options): string[] {
  const extra = o.engineSessionOptions ? ['--session-options', o.engineSessionOptions] : [];
  return [WORKER, 'serve', '--layers', String(o.layers), '--threads', String(o.ortThreads), ...extra];
}

async function startTorch(o: Options, s: TorchSetting): Promise<{ server: Server; ready: Record<string, unknown> }> {
  const env = { ...process.env, OPENBLAS_NUM_THREADS: String(s.blas), OMP_NUM_THREADS: String(s.threads) };
  return Server.start(`PyTorch ${settingLabel(s)}`, o.python, [path.join(repoRoot(), 'bench/uniter/torch_uniter.py'), 'serve', '--layers', String(o.layers), '--threads', String(s.threads)], env);
}

async function runScenario(o: Options, scenario: Scenario, cases: Case[], log: (s: string) => void, rounds = o.rounds): Promise<ScenarioResult> {
  const t0 = Date.now();
  const { server: engine, ready: engineReady } = await Server.start('engine worker', process.execPath, engineArgs(o));
  const eng = cases.map(newTimes);
  const torchTimes: SideTimes[][] = [];
  const torchReady: Record<string, unknown>[] = [];
  const torchPeak: Record<string, number> = {};
  try {
    // Warm-up: the first request of a case includes ORT session creation (engine) or the
    // allocator's first growth (both); it is reported separately, never in the medians.
    for (const [i, c] of cases.entries()) {
      eng[i].first_s = (await engine.time(c.request)).wall;
      for (let w = 1; w < o.warmup; w++) await engine.time(c.request);
    }
    for (const setting of o.torchSettings) {
      const { server: torch, ready } = await startTorch(o, setting);
      torchReady.push({ ...ready, setting: settingLabel(setting) });
      const tt = cases.map(newTimes);
      try {
        for (const [i, c] of cases.entries()) {
          tt[i].first_s = (await torch.time(c.request)).wall;
          for (let w = 1; w < o.warmup; w++) await torch.time(c.request);
        }
        for (let r = 0; r < rounds; r++) {
          for (const [i, c] of cases.entries()) {
            for (let k = 0; k < (c.perRound ?? 1); k++) {
              const order = (r + k) % 2 === 0 ? ['engine', 'torch'] : ['torch', 'engine'];
              for (const side of order) {
                // Let the other side's spinning worker threads go idle first.
                await pause(200);
                if (side === 'engine') record(eng[i], await engine.time(c.request));
                else record(tt[i], await torch.time(c.request));
              }
            }
            log(`  ${scenario} ${c.label} round ${r + 1}/${rounds}: engine ${eng[i].wall_s.at(-1)!.toFixed(3)} s, torch ${settingLabel(setting)} ${tt[i].wall_s.at(-1)!.toFixed(3)} s (load ${loadAverage()[0]})`);
          }
        }
        torchPeak[settingLabel(setting)] = (await torch.request('rss')).max_rss_bytes as number;
      } finally {
        await torch.quit();
      }
      torchTimes.push(tt);
    }
    const enginePeak = (await engine.request('rss')).max_rss_bytes as number;
    const results: CaseResult[] = cases.map((c, i) => {
      const e = finishTimes(eng[i]);
      const ts = torchTimes.map((tt, s) => ({ setting: settingLabel(o.torchSettings[s]), ...finishTimes(tt[i]) }));
      const fastestIdx = ts.reduce((best, t, s) => (t.wall.median < ts[best].wall.median ? s : best), 0);
      const best = ts[fastestIdx];
      // Paired ratios: each torch run against the engine run next to it in the same round.
      const offset = fastestIdx * best.wall_s.length;
      const paired = best.wall_s.map((t, k) => t / eng[i].wall_s[offset + k]);
      return {
        label: c.label,
        request: c.request,
        units: c.units,
        tokens: c.tokens,
        engine: e,
        torch: ts,
        torch_fastest: best.setting,
        speedup: best.wall.median / e.wall.median,
        speedup_paired: summarize(paired),
        speedup_cpu: best.cpu.median / e.cpu.median,
      };
    });
    return { scenario, cases: results, engine_ready: engineReady, torch_ready: torchReady, engine_peak_rss_bytes: enginePeak, torch_peak_rss_bytes: torchPeak, seconds: (Date.now() - t0) / 1000 };
  } finally {
    await engine.quit();
  }
}

// ---------------------------------------------------------------------------------------------

class BatchFiles {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-bench-batches-'));

  batch(kind: BatchKind, s: WorkloadShape): { file: string; tokens: number } {
    const file = path.join(this.dir, `${batchKey(kind, s)}.safetensors`);
    const b = makeBatch(kind, s);
    if (!fs.existsSync(file)) writeBatch(file, b);
    return { file, tokens: batchTokens(b) };
  }

  ipot(examples: number, txtTokens: number, regions: number): string {
    const file = path.join(this.dir, `ipot_${examples}x${txtTokens}x${regions}.safetensors`);
    if (!fs.existsSync(file)) writeBatch(file, makeIpotInputs(examples, txtTokens, regions));
    return file;
  }

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function trainCase(files: BatchFiles, task: BatchKind, s: WorkloadShape, label = task === 'itm' ? 'ITM+WRA step' : 'MLM step'): Case {
  const { file, tokens } = files.batch(task, s);
  return { label: `${label} ${s.examples}x${s.regions}`, request: { op: 'train', task, batch: file }, units: s.examples, tokens };
}

export interface DataLoaderComparison {
  loader: Record<string, unknown>;
  /** Examples per second the loader delivers vs examples per second one training step consumes. */
  rows: Array<{ task: string; source: string; loader_examples_per_s: number; engine_step_examples_per_s: number; headroom: number }>;
}

async function dataLoaderComparison(train: ScenarioResult | undefined, batchTokensPerStep: number): Promise<DataLoaderComparison> {
  const out = await runChild(process.execPath, [path.join(HERE, '..', 'data-loader.js'), '--seconds', '3', '--batch-tokens', String(batchTokensPerStep)]);
  const loader = JSON.parse(out) as { results: Array<{ task: string; source: string; examples_per_second: number }> };
  const stepRate = (task: string): number => {
    const c = train?.cases.find((k) => (k.request as { task?: string }).task === task);
    return c ? c.units / c.engine.wall.median : NaN;
  };
  return {
    loader: loader as unknown as Record<string, unknown>,
    rows: loader.results.map((r) => ({
      task: r.task,
      source: r.source,
      loader_examples_per_s: r.examples_per_second,
      engine_step_examples_per_s: stepRate(r.task),
      headroom: r.examples_per_second / stepRate(r.task),
    })),
  };
}

const fmtS = (s: number) => (s >= 10 ? s.toFixed(1) : s >= 1 ? s.toFixed(2) : s.toFixed(3));
const gib = (b: number) => `${(b / GiB).toFixed(2)} GiB`;

function printScenario(r: ScenarioResult): void {
  const rows: string[][] = [['case', 'engine s median [min-max]', 'torch s median [min-max]', 'speedup (paired)', 'CPU-s engine / torch']];
  for (const c of r.cases) {
    const t = c.torch.find((x) => x.setting === c.torch_fastest)!;
    rows.push([
      c.label,
      `${fmtS(c.engine.wall.median)} [${fmtS(c.engine.wall.min)}-${fmtS(c.engine.wall.max)}]`,
      `${fmtS(t.wall.median)} [${fmtS(t.wall.min)}-${fmtS(t.wall.max)}] (${t.setting})`,
      `${c.speedup.toFixed(2)}x (${c.speedup_paired.median.toFixed(2)}x)`,
      `${c.engine.cpu.median.toFixed(2)} / ${t.cpu.median.toFixed(2)}`,
    ]);
  }
  console.log(`\n${r.scenario} (${r.seconds.toFixed(0)} s): peak RSS engine ${gib(r.engine_peak_rss_bytes)}, torch ${Object.entries(r.torch_peak_rss_bytes).map(([k, v]) => `${k} ${gib(v)}`).join(', ')}`);
  console.log(formatTable(rows));
}

async function main(): Promise<void> {
  const root = repoRoot();
  const o = parseOptions(process.argv.slice(2), root);
  const started = new Date().toISOString();
  const machine = machineInfo(root);
  console.log(`bench/uniter: UNITER-base (${o.layers} layers), ORT ${o.ortThreads} threads vs PyTorch ${o.torchSettings.map(settingLabel).join(', ')}; ${o.rounds} interleaved rounds after ${o.warmup} warm-up; load ${machine.load_before.join(' ')}`);
  const log = (s: string) => console.log(s);

  let parity: UniterParity | null = null;
  if (o.parity) {
    parity = await parityCheck(o);
    const l = parity.losses;
    console.log(
      `parity (${parity.config}): losses mlm ${l['mlm.loss'].engine.toFixed(6)}/${l['mlm.loss'].torch.toFixed(6)}, itm+wra ${l['itm.loss'].engine.toFixed(6)}/${l['itm.loss'].torch.toFixed(6)}; ` +
        `ITM scores ${parity.itm_scores_max_abs_diff.toExponential(1)}, OT distance ${parity.ot_dist_max_abs_diff.toExponential(1)}, IPOT plan ${parity.ipot_plan_max_abs_diff.toExponential(1)}; ` +
        `worst of ${parity.gradients_compared} gradients ${parity.grad_max_rel_diff.toExponential(1)} (${parity.worst_grad}) -> ${parity.ok ? 'OK' : 'MISMATCH'}`,
    );
    if (!parity.ok) throw new Error('parity check failed: the engine and the PyTorch baseline compute different numbers; timings would be meaningless');
    if (o.parityOnly) return;
  }

  const files = new BatchFiles();
  const scenarios: Partial<Record<Scenario, ScenarioResult>> = {};
  let data: DataLoaderComparison | null = null;
  try {
    const want = (s: Scenario) => o.scenarios.includes(s);
    const w = o.train.wordpieces;
    if (want('train')) {
      scenarios.train = await runScenario(o, 'train', [trainCase(files, 'mlm', o.train), trainCase(files, 'itm', o.train)], log);
      printScenario(scenarios.train);
    }
    if (want('infer') || want('ipot')) {
      // Inference and IPOT share processes: IPOT's memory is negligible next to the model's.
      const cases: Case[] = [];
      if (want('infer')) {
        for (const b of o.inferBatches) {
          const { file, tokens } = files.batch('pairs', { examples: b, regions: o.train.regions, wordpieces: w });
          cases.push({ label: `ITM inference batch ${b}`, request: { op: 'infer', batch: file }, units: b, tokens, perRound: b <= 8 ? 3 : 1 });
        }
      }
      if (want('ipot')) {
        const B = o.train.examples;
        cases.push({ label: `IPOT ${B}x${w + 2}x${o.train.regions}`, request: { op: 'ipot', inputs: files.ipot(B, w + 2, o.train.regions) }, units: B, perRound: 3 });
      }
      const r = await runScenario(o, want('infer') ? 'infer' : 'ipot', cases, log);
      printScenario(r);
      if (want('infer')) scenarios.infer = { ...r, cases: r.cases.filter((c) => c.request.op === 'infer') };
      if (want('ipot')) scenarios.ipot = { ...r, scenario: 'ipot', cases: r.cases.filter((c) => c.request.op === 'ipot') };
    }
    if (want('scaling')) {
      const cases: Case[] = [];
      for (const b of o.scalingBatches) cases.push(trainCase(files, 'itm', { examples: b, regions: o.scalingRegions[0], wordpieces: w }));
      for (const n of o.scalingRegions.slice(1)) cases.push(trainCase(files, 'itm', { examples: o.scalingExamples, regions: n, wordpieces: w }));
      const already = new Set<string>();
      const unique = cases.filter((c) => !already.has(c.label) && already.add(c.label));
      scenarios.scaling = await runScenario(o, 'scaling', unique, log, o.scalingRounds);
      printScenario(scenarios.scaling);
    }
    if (want('data')) {
      data = await dataLoaderComparison(scenarios.train, 4096);
      console.log('\ndata loader vs training step (examples/s):');
      console.log(
        formatTable([
          ['task', 'source', 'loader', 'engine step', 'headroom'],
          ...data.rows.map((r) => [r.task, r.source, r.loader_examples_per_s.toFixed(0), Number.isFinite(r.engine_step_examples_per_s) ? r.engine_step_examples_per_s.toFixed(2) : '(no train run)', Number.isFinite(r.headroom) ? `${r.headroom.toFixed(0)}x` : '-']),
        ]),
      );
    }
  } finally {
    files.remove();
  }

  const targets = evaluateTargets(scenarios);
  console.log('\ntargets:');
  for (const t of targets) console.log(`  ${t.met ? 'met   ' : 'MISSED'} ${t.name}: ${t.detail}`);
  const results = {
    bench: 'uniter',
    command: ['node', path.relative(root, process.argv[1]), ...process.argv.slice(2)].join(' '),
    started,
    finished: new Date().toISOString(),
    machine: { ...machine, load_after: loadAverage() },
    workload: {
      model: `UNITER-base: hidden 768, ${o.layers} layers, 12 heads, FFN 3072, vocab 28996, img_dim 2048, 1601 labels; float32`,
      train_batch: o.train,
      training_step: 'forward + backward (dropout 0.1) + clip_grad_norm 5 + AdamW (lr 5e-5, betas 0.9/0.98, eps 1e-6, decay 0.01); ITM adds WRA (IPOT beta 0.5, 50 iterations, lambda 0.1)',
      inference: 'ITM scores, eval mode; engine: inference graph; PyTorch: torch.inference_mode()',
    },
    method: {
      rounds: o.rounds,
      scaling_rounds: o.scalingRounds,
      warmup: o.warmup,
      interleaved: true,
      ort_threads: o.ortThreads,
      engine_session_options: o.engineSessionOptions ? (JSON.parse(o.engineSessionOptions) as unknown) : null,
      torch_settings: o.torchSettings.map(settingLabel),
      torch_setting_meaning: 'AxB = torch.set_num_threads(A), OPENBLAS_NUM_THREADS=B',
      peak_rss: 'max RSS of each side\'s process over its scenario (fresh processes per scenario; includes warm-up)',
    },
    parity,
    scenarios,
    data_loader: data,
    targets,
  };
  writeFileAtomic(o.out, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`\nwrote ${path.relative(process.cwd(), o.out) || o.out}`);
}

export interface TargetCheck {
  name: string;
  met: boolean;
  detail: string;
}

function evaluateTargets(s: Partial<Record<Scenario, ScenarioResult>>): TargetCheck[] {
  const out: TargetCheck[] = [];
  for (const c of s.train?.cases ?? []) out.push({ name: `training step ${c.label} >= 1.3x PyTorch`, met: c.speedup >= 1.3, detail: `${c.speedup.toFixed(2)}x (paired median ${c.speedup_paired.median.toFixed(2)}x, CPU-seconds ${c.speedup_cpu.toFixed(2)}x)` });
  for (const c of s.infer?.cases ?? []) out.push({ name: `${c.label} >= 2x PyTorch`, met: c.speedup >= 2, detail: `${c.speedup.toFixed(2)}x (paired median ${c.speedup_paired.median.toFixed(2)}x, CPU-seconds ${c.speedup_cpu.toFixed(2)}x)` });
  for (const key of ['train', 'infer'] as const) {
    const r = s[key];
    if (!r) continue;
    const torchPeak = Math.min(...Object.values(r.torch_peak_rss_bytes));
    out.push({ name: `${key} peak RSS <= PyTorch's`, met: r.engine_peak_rss_bytes <= torchPeak, detail: `engine ${gib(r.engine_peak_rss_bytes)} vs PyTorch ${gib(torchPeak)}` });
  }
  if (s.train) {
    const tokens = Math.max(...s.train.cases.map((c) => c.tokens ?? 0));
    out.push({ name: `base trains at ${tokens} tokens per micro-batch within 16 GiB`, met: s.train.engine_peak_rss_bytes <= 16 * GiB, detail: `engine peak RSS ${gib(s.train.engine_peak_rss_bytes)}` });
  }
  return out;
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : String(e));
  process.exit(1);
});
