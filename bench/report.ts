/**
 * docs/benchmarks.md from the benchmark results: tables of every measurement, SVG charts
 * (src/report/svg.ts), the machine, the method, the targets and the commands that reproduce
 * the numbers. Nothing in the document is typed by hand except the analysis, which is read from
 * bench/results/analysis.md (written after looking at the numbers and the profiles).
 *
 *   node dist/bench/report.js [--results bench/results] [--docs docs]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { barChart, lineChart } from '../src/report/svg.js';
import { writeFileAtomic } from '../src/util/atomic.js';
import { GiB, repoRoot } from './harness.js';

interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

interface CaseJson {
  label: string;
  request: { op: string; task?: string; baked?: boolean };
  units: number;
  tokens?: number;
  engine: { wall: Summary; cpu: Summary; first_s: number; parts_median: Record<string, number>; load_1min?: number[] };
  torch: Array<{ setting: string; wall: Summary; cpu: Summary; first_s: number; parts_median: Record<string, number>; load_1min?: number[] }>;
  torch_fastest: string;
  speedup: number;
  speedup_paired: Summary;
  speedup_cpu: number;
  engine_peak_rss_bytes: number;
  torch_peak_rss_bytes: Record<string, number>;
}

interface ScenarioJson {
  scenario: string;
  mode: 'interleaved' | 'sequential';
  cases: CaseJson[];
  engine_ready: Array<Record<string, unknown>>;
  torch_ready: Array<Record<string, unknown>>;
  seconds: number;
}

interface MemoryJson {
  steps: string[];
  tokens: number;
  runs: Array<{ label: string; experiment: boolean; steps: Array<{ task: string; rss_after_bytes: number; max_rss_bytes: number; seconds: number }>; peak_rss_bytes: number; stopped: string | null }>;
}

interface UniterResults {
  started: string;
  finished: string;
  machine: Record<string, unknown> & { load_before: number[]; load_after: number[] };
  workload: Record<string, unknown>;
  method: Record<string, unknown> & { rounds: number; warmup: number; ort_threads: number; torch_settings: string[] };
  parity: null | {
    config: string;
    losses: Record<string, { engine: number; torch: number; rel_diff: number }>;
    itm_scores_max_abs_diff: number;
    ot_dist_max_abs_diff: number;
    ipot_plan_max_abs_diff: number;
    grad_max_rel_diff: number;
    worst_grad: string;
    gradients_compared: number;
    ok: boolean;
  };
  scenarios: Partial<Record<'train' | 'infer' | 'ipot' | 'scaling', ScenarioJson>>;
  memory?: MemoryJson | null;
  memory_guard_events?: Array<{ child: string; rss_bytes: number; reason: string; at: string }>;
  data_loader: null | { rows: Array<{ task: string; source: string; loader_examples_per_s: number; engine_step_examples_per_s: number; headroom: number }> };
  targets: Array<{ name: string; met: boolean; inconclusive?: boolean; detail: string }>;
  command?: string;
}

interface EngineResults {
  started: string;
  workload: { layers: number; batch: number; seq: number };
  summary: Array<{ phase: string; engine_median_s: number; torch_fastest_setting: string; torch_fastest_median_s: number; speedup: number; speedup_paired_median: number; speedup_cpu_seconds: number; target: number }>;
  engine_forward_backward_only_peak_rss_bytes?: number;
}

const fmtS = (s: number) => (s >= 100 ? s.toFixed(0) : s >= 10 ? s.toFixed(1) : s >= 1 ? s.toFixed(2) : s >= 0.1 ? s.toFixed(3) : s.toFixed(4));
const gib = (b: number) => `${(b / GiB).toFixed(2)} GiB`;
const x = (r: number) => `${r.toFixed(2)}x`;
const spread = (s: Summary) => `${fmtS(s.median)} (${fmtS(s.min)}–${fmtS(s.max)})`;

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

function readJson<T>(file: string): T | null {
  if (!fs.existsSync(file)) return null;
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

const fastestTorch = (c: CaseJson) => c.torch.find((t) => t.setting === c.torch_fastest) ?? c.torch[0];

function caseRows(cases: CaseJson[], unit: string, rate: (c: CaseJson, s: number) => number): string[][] {
  return cases.map((c) => {
    const t = fastestTorch(c);
    return [
      c.label,
      spread(c.engine.wall),
      `${spread(t.wall)} [${t.setting}]`,
      `${rate(c, c.engine.wall.median).toFixed(unit === 'pairs/s' && rate(c, c.engine.wall.median) < 10 ? 2 : 1)} / ${rate(c, t.wall.median).toFixed(unit === 'pairs/s' && rate(c, t.wall.median) < 10 ? 2 : 1)}`,
      `**${x(c.speedup)}** (paired ${x(c.speedup_paired.median)}, ${x(c.speedup_paired.min)}–${x(c.speedup_paired.max)})`,
      `${c.engine.cpu.median.toFixed(2)} / ${t.cpu.median.toFixed(2)} (${x(c.speedup_cpu)})`,
    ];
  });
}

export function renderBenchmarks(resultsDir: string, docsDir: string): { markdown: string; charts: Record<string, string> } {
  const u = readJson<UniterResults>(path.join(resultsDir, 'uniter.json'));
  const e = readJson<EngineResults>(path.join(resultsDir, 'engine.json'));
  const analysisFile = path.join(resultsDir, 'analysis.md');
  const analysis = fs.existsSync(analysisFile) ? fs.readFileSync(analysisFile, 'utf8').trim() : '';
  const charts: Record<string, string> = {};
  const md: string[] = [];
  // A results file records where it was written; the reader's copy goes to the default place.
  const withoutOut = (c: string) => c.replace(/ --out \S+/, '');
  md.push('# Benchmarks: the engine (ONNX Runtime) against PyTorch on the CPU');
  md.push('');
  md.push(
    'Generated by `node dist/bench/report.js` from `bench/results/*.json`; the numbers come from `npm run bench` ' +
      '(`bench/run-all.ts`). Benchmarks are not run by CI. Both sides compute in float32 on the CPU, each in its own ' +
      'child process; see "Machine and method" for how requests are ordered.',
  );
  if (!u) {
    md.push('', '_No UNITER results yet: run `npm run bench`._');
    return { markdown: md.join('\n') + '\n', charts };
  }
  const torchInfo = (u.scenarios.train ?? u.scenarios.infer ?? u.scenarios.scaling)?.torch_ready[0] ?? {};
  md.push('');
  md.push('## Summary');
  md.push('');
  md.push(table(['target (issue "Benchmarks")', 'result', 'measured'], u.targets.map((t) => [t.name, t.met ? 'met' : t.inconclusive ? 'inconclusive' : '**missed**', t.detail])));
  if (analysis) md.push('', analysis);

  md.push('', '## Machine and method', '');
  const m = u.machine;
  md.push(
    table(
      ['', ''],
      [
        ['CPU', `${String(m.cpu)}, ${String(m.cores)} cores, ${String(m.memory_gib)} GiB memory (${String(m.platform ?? '')})`],
        ['load average (1/5/15 min)', `before ${m.load_before.join(' / ')}, after ${m.load_after.join(' / ')} (other engineers' jobs share the machine)`],
        ['engine', `Node ${String(m.node)}, onnxruntime-node ${String(m.onnxruntime_node)}, ${u.method.ort_threads} intra-op threads`],
        ['PyTorch', `${String(torchInfo.torch ?? '?')} (Debian python3-torch, eager), BLAS ${JSON.stringify(torchInfo.blas_libraries ?? [])}; settings ${u.method.torch_settings.join(', ')} (${String(u.method.torch_setting_meaning)})`],
        ['model', String(u.workload.model)],
        ['training step', String(u.workload.training_step)],
        ['inference', String(u.workload.inference)],
        [
          'timing',
          `${u.method.warmup} warm-up request(s) per case and side (the first one, with session creation, reported apart), then ${u.method.rounds} rounds (scaling: ${String(u.method.scaling_rounds ?? u.method.rounds)}); ` +
            `${u.method.training_mode === 'interleaved' ? 'requests alternate between the two live processes (engine first in even rounds); each training task and scaling point has its own pair of processes' : 'inference requests alternate between the two live processes; training cases run one side after the other (sequential mode: load changes between the two phases bias the wall-clock ratio, the CPU-seconds ratio less so)'}; ` +
            'medians with (min–max); "paired" = median of per-round PyTorch/engine ratios; CPU-s = CPU seconds of the process per request (all its threads)',
        ],
        ['memory', String(u.method.peak_rss)],
        ['run', `${u.started} – ${u.finished}`],
      ],
    ),
  );
  if (u.parity) {
    const p = u.parity;
    md.push('', '### Same model on both sides (parity check before timing)', '');
    md.push(
      `${p.config}: ${Object.entries(p.losses)
        .map(([k, v]) => `${k} ${v.engine.toFixed(6)} vs ${v.torch.toFixed(6)}`)
        .join(', ')}; ITM scores max |diff| ${p.itm_scores_max_abs_diff.toExponential(1)}, OT distances ${p.ot_dist_max_abs_diff.toExponential(1)}, ` +
        `IPOT plan ${p.ipot_plan_max_abs_diff.toExponential(1)}; worst of ${p.gradients_compared} gradients (relative) ${p.grad_max_rel_diff.toExponential(1)} (${p.worst_grad}): **${p.ok ? 'OK' : 'MISMATCH'}**.`,
    );
  }

  const header = ['case', 'engine s', 'PyTorch s [setting]', 'throughput engine / PyTorch', 'speedup (engine faster when > 1)', 'CPU-s engine / PyTorch'];
  const train = u.scenarios.train;
  if (train) {
    md.push('', '## Training step (forward + backward + clip + AdamW)', '');
    md.push(table(header, caseRows(train.cases, 'examples/s', (c, s) => c.units / s)).replace('throughput engine / PyTorch', 'examples/s engine / PyTorch'));
    md.push('', 'Parts of the step (medians, seconds): ');
    md.push('');
    md.push(
      table(
        ['case', 'side', 'forward + backward', 'clip', 'AdamW', 'tokens', 'first step (session creation)', 'load average during the timed steps'],
        train.cases.flatMap((c) => {
          const t = fastestTorch(c);
          const p = (r: Record<string, number>, k: string) => (r[k] === undefined ? '-' : fmtS(r[k]));
          const load = (l?: number[]) => (l && l.length ? l.map((v) => v.toFixed(1)).join(', ') : '-');
          return [
            [c.label, 'engine', p(c.engine.parts_median, 'forward_backward_s'), p(c.engine.parts_median, 'clip_s'), p(c.engine.parts_median, 'optimizer_s'), String(c.tokens ?? ''), fmtS(c.engine.first_s), load(c.engine.load_1min)],
            [c.label, `PyTorch ${t.setting}`, p(t.parts_median, 'forward_backward_s'), p(t.parts_median, 'clip_s'), p(t.parts_median, 'optimizer_s'), String(c.tokens ?? ''), fmtS(t.first_s), load(t.load_1min)],
          ];
        }),
      ),
    );
  }
  const infer = u.scenarios.infer;
  const inferCases = infer?.cases.filter((c) => c.request.op === 'infer') ?? [];
  const gemmCases = infer?.cases.filter((c) => c.request.op === 'gemm') ?? [];
  if (inferCases.length) {
    md.push('', '## ITM inference', '');
    md.push(table(header, caseRows(inferCases, 'pairs/s', (c, s) => c.units / s)).replace('throughput engine / PyTorch', 'pairs/s engine / PyTorch'));
  }
  if (gemmCases.length) {
    md.push('', '## The dominant GEMM alone (ONNX Runtime MLAS against PyTorch OpenBLAS)', '');
    md.push(table(header, caseRows(gemmCases, 'GFLOP/s', (c, s) => c.units / s)).replace('throughput engine / PyTorch', 'GFLOP/s engine / PyTorch'));
  }
  const ipot = u.scenarios.ipot;
  if (ipot) {
    md.push('', '## IPOT (50 iterations, no gradient)', '');
    md.push(table(header, caseRows(ipot.cases, 'plans/s', (c, s) => c.units / s)).replace('throughput engine / PyTorch', 'plans/s engine / PyTorch'));
  }
  const memRows: string[][] = [];
  for (const c of [...(train?.cases ?? []), ...inferCases.slice(0, 1)]) {
    for (const [setting, bytes] of Object.entries(c.torch_peak_rss_bytes)) {
      const what = c.request.op === 'train' ? c.label : `inference (${inferCases.map((k) => k.label.replace('ITM inference ', '')).join(', ')})${ipot ? ' + IPOT' : ''}${gemmCases.length ? ' + GEMM' : ''}`;
      memRows.push([what, gib(c.engine_peak_rss_bytes), `${gib(bytes)} [${setting}]`, x(bytes / c.engine_peak_rss_bytes)]);
    }
  }
  const memory = u.memory;
  if (memRows.length || memory) {
    md.push('', '## Peak resident memory', '');
  }
  if (memRows.length) {
    md.push('Fresh processes per training task and for inference; the peak covers the warm-up and every timed request.');
    md.push('');
    md.push(table(['workload', 'engine', 'PyTorch', 'PyTorch / engine'], memRows));
  }
  if (memory) {
    md.push('');
    md.push(`One process training ${memory.steps.join(', ')} (${memory.tokens} tokens per micro-batch), as a pre-training process alternates tasks: resident memory after each step and the peak. Rows marked _experiment_ run the engine with other ONNX Runtime session options, not as shipped.`);
    md.push('');
    md.push(
      table(
        ['process', ...memory.steps.map((st, i) => `after ${i + 1}: ${st.replace(/ \d+x\d+$/, '')}`), 'peak RSS', 'note'],
        memory.runs.map((r) => [
          r.experiment ? `${r.label} (_experiment_)` : r.label,
          ...memory.steps.map((_, i) => (r.steps[i] ? gib(r.steps[i].rss_after_bytes) : '-')),
          `**${gib(r.peak_rss_bytes)}**`,
          r.stopped ? `stopped by the memory guard: ${r.stopped}` : '',
        ]),
      ),
    );
  }
  const scaling = u.scenarios.scaling;
  if (scaling) {
    md.push('', '## Scaling of the ITM+WRA training step', '');
    md.push(
      table(
        ['batch', 'tokens', 'engine s', 'PyTorch s', 'engine tokens/s', 'PyTorch tokens/s', 'speedup', 'CPU-s ratio', 'peak RSS engine / PyTorch'],
        scaling.cases.map((c) => {
          const t = fastestTorch(c);
          const tok = c.tokens ?? 0;
          return [
            c.label.replace('ITM+WRA step ', ''),
            String(tok),
            spread(c.engine.wall),
            spread(t.wall),
            (tok / c.engine.wall.median).toFixed(0),
            (tok / t.wall.median).toFixed(0),
            x(c.speedup),
            x(c.speedup_cpu),
            `${gib(c.engine_peak_rss_bytes)} / ${gib(c.torch_peak_rss_bytes[t.setting] ?? NaN)}`,
          ];
        }),
      ),
    );
    const regions = scaling.cases.map((c) => Number(/x(\d+)$/.exec(c.label)?.[1]));
    const baseRegions = Math.min(...regions);
    const byBatch = scaling.cases.filter((_, i) => regions[i] === baseRegions);
    const tokens = (c: CaseJson) => c.tokens ?? 0;
    charts['benchmarks-scaling.svg'] = lineChart(
      [
        { name: 'engine', points: byBatch.map((c) => [tokens(c), c.engine.wall.median] as const) },
        { name: 'PyTorch', points: byBatch.map((c) => [tokens(c), fastestTorch(c).wall.median] as const) },
      ],
      { title: `ITM+WRA training step vs batch size (${baseRegions} regions)`, xLabel: 'tokens per batch', yLabel: 'seconds per step (median)', yIncludesZero: true },
    );
    md.push('', '![ITM+WRA step time against tokens per batch](benchmarks-scaling.svg)');
  }
  if (u.data_loader) {
    md.push('', '## Data loading against the training step', '');
    md.push('`bench/data-loader.ts` (store read -> dataset -> collate, batches of up to 4096 tokens, same example shape) against the examples per second one engine training step consumes.');
    md.push('');
    md.push(
      table(
        ['task', 'source', 'loader examples/s', 'engine step examples/s', 'loader headroom'],
        u.data_loader.rows.map((r) => [r.task, r.source, r.loader_examples_per_s.toFixed(0), Number.isFinite(r.engine_step_examples_per_s) ? r.engine_step_examples_per_s.toFixed(2) : '-', Number.isFinite(r.headroom) ? `${r.headroom.toFixed(0)}x` : '-']),
      ),
    );
  }
  if (e) {
    md.push('', '## Engine micro-benchmark: BERT-base encoder stack (bench/engine)', '');
    md.push(`${e.workload.layers} layers, batch ${e.workload.batch} x ${e.workload.seq} tokens (run ${e.started}).`);
    md.push('');
    md.push(
      table(
        ['phase', 'engine s', 'PyTorch s [setting]', 'speedup (paired)', 'CPU-s ratio', 'target'],
        e.summary.map((s) => [s.phase, fmtS(s.engine_median_s), `${fmtS(s.torch_fastest_median_s)} [${s.torch_fastest_setting}]`, `${x(s.speedup)} (${x(s.speedup_paired_median)})`, x(s.speedup_cpu_seconds), `${s.target}x`]),
      ),
    );
  }

  // Chart: engine throughput relative to PyTorch for every timed case.
  const all = [...(train?.cases ?? []), ...(infer?.cases ?? []), ...(ipot?.cases ?? [])];
  if (all.length) {
    charts['benchmarks-speedup.svg'] = barChart(
      all.map((c) => ({
        label: c.label,
        values: [
          { series: 'PyTorch', value: 1 },
          { series: 'engine', value: c.speedup },
        ],
      })),
      { title: 'Throughput relative to PyTorch (median wall time; higher is faster)', yLabel: 'x PyTorch', valueDigits: 2 },
    );
  }
  if (memory || train) {
    const groups = [
      ...(train?.cases ?? []).map((c) => ({ label: c.label, engine: c.engine_peak_rss_bytes, torch: Math.min(...Object.values(c.torch_peak_rss_bytes)) })),
      ...(memory
        ? [
            {
              label: `one process: ${memory.steps.length} steps, MLM and ITM+WRA`,
              engine: memory.runs.find((r) => !r.experiment && r.label.startsWith('engine'))?.peak_rss_bytes ?? NaN,
              torch: Math.min(...memory.runs.filter((r) => r.label.startsWith('PyTorch')).map((r) => r.peak_rss_bytes)),
            },
          ]
        : []),
    ];
    charts['benchmarks-memory.svg'] = barChart(
      groups.map((g) => ({
        label: g.label,
        values: [
          { series: 'PyTorch', value: g.torch / GiB },
          { series: 'engine', value: g.engine / GiB },
        ],
      })),
      { title: 'Peak resident memory of training (GiB)', yLabel: 'GiB', valueDigits: 1 },
    );
  }
  const experiments = readJson<UniterResults>(path.join(resultsDir, 'uniter-experiments.json'));
  if (experiments) {
    md.push('', '## Experiments (not the shipped configuration)', '');
    md.push(`From \`${withoutOut(experiments.command ?? '')} --out bench/results/uniter-experiments.json\` (${experiments.started}, load ${experiments.machine.load_before.join(' / ')}): variants of the engine that the shipped code does not use, measured the same way against the same PyTorch baseline.`);
    const ex = [...(experiments.scenarios.infer?.cases ?? []), ...(experiments.scenarios.train?.cases ?? [])];
    if (ex.length) {
      md.push('');
      md.push(table(header, caseRows(ex, 'units/s', (c, sec) => c.units / sec)).replace('throughput engine / PyTorch', 'pairs or examples/s engine / PyTorch'));
    }
    const settings = new Set(ex.flatMap((c) => c.torch.map((t) => t.setting)));
    if (settings.size > 1) {
      md.push('', 'PyTorch thread settings (median seconds per request; AxB = torch threads x OpenBLAS threads):', '');
      md.push(table(['case', ...settings], ex.filter((c) => !c.request.baked).map((c) => [c.label, ...[...settings].map((st) => { const t = c.torch.find((k) => k.setting === st); return t ? fmtS(t.wall.median) : '-'; })])));
    }
  }
  const chartLinks = ['benchmarks-speedup.svg', 'benchmarks-memory.svg'].filter((c) => charts[c]);
  if (chartLinks.length) {
    md.push('', '## Charts', '');
    for (const c of chartLinks) md.push(`![${c.replace('.svg', '')}](${c})`, '');
  }

  md.push('', '## Reproduce', '');
  md.push('<!-- not-run: installs PyTorch and runs every benchmark (hours on 2 cores) -->');
  md.push('```bash');
  md.push('apt-get install -y python3-torch libopenblas0   # the PyTorch baseline (Debian packages; /usr/bin/python3)');
  md.push('npm install && npm run bench                      # = tsc -p . && node dist/bench/run-all.js: every benchmark, then this page');
  if (u.command) md.push(`${withoutOut(u.command)}   # the UNITER run above (writes bench/results/uniter.json)`);
  const engineCommand = readJson<{ commands?: Record<string, string> }>(path.join(resultsDir, 'run-all.json'))?.commands?.engine;
  if (e && engineCommand) md.push(`${withoutOut(engineCommand)} --out bench/results/engine.json   # the BERT encoder run above`);
  md.push('node dist/bench/uniter/profile.js --task itm --layers 12 --runs 1   # where the engine step spends its time (ORT profile)');
  md.push('node dist/bench/optimizer.js --max-norm 5   # clipping + AdamW at UNITER-base size, before/after the folded clipping (bench/results/optimizer/)');
  md.push('node dist/bench/uniter/ab-builds.js --a OLD/dist --b dist --precision int8   # one build against another, interleaved (int8 per row vs per tensor)');
  md.push('node dist/bench/uniter/int8-accuracy.js --checkpoint RUN/ckpt/step_3200 --per-layer   # int8 against float32 on held-out pairs, by layer');
  md.push('node dist/bench/report.js                         # rewrite this page from bench/results/*.json');
  md.push('```');
  void docsDir;
  return { markdown: md.join('\n') + '\n', charts };
}

export function writeBenchmarksDoc(resultsDir: string, docsDir: string): string[] {
  const { markdown, charts } = renderBenchmarks(resultsDir, docsDir);
  fs.mkdirSync(docsDir, { recursive: true });
  const written: string[] = [];
  for (const [name, svg] of Object.entries(charts)) {
    writeFileAtomic(path.join(docsDir, name), svg);
    written.push(path.join(docsDir, name));
  }
  writeFileAtomic(path.join(docsDir, 'benchmarks.md'), markdown);
  written.push(path.join(docsDir, 'benchmarks.md'));
  return written;
}

function main(): void {
  const root = repoRoot();
  const arg = (name: string, fallback: string) => {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 && process.argv[i + 1] ? path.resolve(process.argv[i + 1]) : fallback;
  };
  const written = writeBenchmarksDoc(arg('results', path.join(root, 'bench/results')), arg('docs', path.join(root, 'docs')));
  for (const f of written) console.log(`wrote ${path.relative(process.cwd(), f)}`);
}

// Run as a script (not when imported by run-all).
if (process.argv[1] && path.resolve(process.argv[1]) === new URL(import.meta.url).pathname) main();
