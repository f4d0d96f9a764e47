/**
 * From finished cells (one variant, one seed) to the ablation table: per-seed Meta-Sum, mean and
 * spread over seeds, the results JSON, a markdown table and SVG bar charts.
 */
import * as path from 'node:path';
import { barChart, type BarGroup } from '../report/svg.js';
import { writeFileAtomic } from '../util/atomic.js';
import { SCORE_COLUMNS, type DownstreamName, type Variant } from './variants.js';

/** Cost of one phase of a cell: wall time and this process's CPU time (all threads). */
export interface PhaseTime {
  steps: number;
  seconds: number;
  cpu_seconds: number;
}

/** What one (variant, seed) cell produced; written as cells/VARIANT/seed-N/cell.json. */
export interface CellResult {
  variant: string;
  seed: number;
  /** Score per column key, in percent. */
  scores: Record<string, number>;
  /** Sum of `scores` (the paper's Meta-Sum). */
  meta_sum: number;
  /** Test-split metrics of each fine-tuned task, as the task reports them. */
  metrics: Record<string, Record<string, number>>;
  /** Held-out pre-training metrics after the last step (null: no pre-training). */
  pretrain_validation: Record<string, Record<string, number>> | null;
  timing: { pretrain: PhaseTime | null; finetune: Record<string, PhaseTime> };
}

export interface Stat {
  mean: number;
  /** Sample standard deviation over seeds (n - 1); null with a single seed. */
  std: number | null;
  values: number[];
}

export interface VariantSummary {
  variant: string;
  label: string;
  seeds: number[];
  scores: Record<string, Stat>;
  meta_sum: Stat;
}

export interface AblationReport {
  title: string;
  settings: Record<string, unknown>;
  columns: Array<{ key: string; label: string; task: DownstreamName; metric: string }>;
  variants: VariantSummary[];
  cells: CellResult[];
  /** Mean cost per phase over the cells that ran it (for sizing a run). */
  timing: Record<string, { runs: number; steps: number; seconds: number; cpu_seconds: number }>;
}

export function stat(values: readonly number[]): Stat {
  if (values.length === 0) throw new Error('stat: no values');
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const std = values.length > 1 ? Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / (values.length - 1)) : null;
  return { mean, std, values: [...values] };
}

/** Scores (percent) and Meta-Sum of one cell from its tasks' test metrics. */
export function cellScores(metrics: Record<string, Record<string, number>>): { scores: Record<string, number>; meta_sum: number } {
  const scores: Record<string, number> = {};
  for (const c of SCORE_COLUMNS) {
    const v = metrics[c.task]?.[c.metric];
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`ablation: task '${c.task}' reported no test metric '${c.metric}' (got ${JSON.stringify(metrics[c.task] ?? null)})`);
    scores[c.key] = 100 * v;
  }
  return { scores, meta_sum: SCORE_COLUMNS.reduce((a, c) => a + scores[c.key], 0) };
}

export function summarise(variants: readonly Variant[], cells: readonly CellResult[], settings: Record<string, unknown>): AblationReport {
  const rows: VariantSummary[] = [];
  for (const v of variants) {
    const mine = cells.filter((c) => c.variant === v.name).sort((a, b) => a.seed - b.seed);
    if (mine.length === 0) continue;
    const scores: Record<string, Stat> = {};
    for (const c of SCORE_COLUMNS) scores[c.key] = stat(mine.map((m) => m.scores[c.key]));
    rows.push({ variant: v.name, label: v.label, seeds: mine.map((m) => m.seed), scores, meta_sum: stat(mine.map((m) => m.meta_sum)) });
  }
  const timing: AblationReport['timing'] = {};
  const add = (phase: string, t: PhaseTime | null) => {
    if (!t) return;
    const e = (timing[phase] ??= { runs: 0, steps: 0, seconds: 0, cpu_seconds: 0 });
    e.runs++;
    e.steps += t.steps;
    e.seconds += t.seconds;
    e.cpu_seconds += t.cpu_seconds;
  };
  for (const c of cells) {
    add('pretrain', c.timing.pretrain);
    for (const [task, t] of Object.entries(c.timing.finetune)) add(`finetune ${task}`, t);
  }
  for (const e of Object.values(timing)) {
    e.steps /= e.runs;
    e.seconds /= e.runs;
    e.cpu_seconds /= e.runs;
  }
  return {
    title: 'UNITER pre-training ablation on the synthetic world (paper Table 2)',
    settings,
    columns: SCORE_COLUMNS.map((c) => ({ ...c })),
    variants: rows,
    cells: [...cells].sort((a, b) => variants.findIndex((v) => v.name === a.variant) - variants.findIndex((v) => v.name === b.variant) || a.seed - b.seed),
    timing,
  };
}

const fmt = (s: Stat): string => (s.std === null ? s.mean.toFixed(2) : `${s.mean.toFixed(2)} ± ${s.std.toFixed(2)}`);

export function markdownTable(r: AblationReport): string {
  const head = ['Pre-training tasks', ...r.columns.map((c) => c.label), 'Meta-Sum'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`];
  for (const v of r.variants) lines.push(`| ${v.label} | ${r.columns.map((c) => fmt(v.scores[c.key])).join(' | ')} | ${fmt(v.meta_sum)} |`);
  return lines.join('\n');
}

/** The comparison the issue asks for, stated as measured (never assumed). */
export function finding(r: AblationReport): string {
  const none = r.variants.find((v) => v.variant === 'none');
  const pre = r.variants.filter((v) => v.variant !== 'none');
  if (!none || pre.length === 0) return 'No comparison with no pre-training: this run did not include both the `none` variant and a pre-trained one.';
  const best = pre.reduce((a, b) => (b.meta_sum.mean > a.meta_sum.mean ? b : a));
  const beating = pre.filter((v) => v.meta_sum.mean > none.meta_sum.mean);
  const verdict = beating.length === 0 ? 'No pre-trained variant beats no pre-training on mean Meta-Sum' : `${beating.length} of ${pre.length} pre-trained variants beat no pre-training on mean Meta-Sum`;
  const diff = best.meta_sum.mean - none.meta_sum.mean;
  // A gap smaller than the seeds' spread is not evidence either way; say so rather than rank.
  const spread = Math.max(best.meta_sum.std ?? 0, none.meta_sum.std ?? 0);
  const caveat = best.meta_sum.std === null ? ' With one seed there is no spread to judge the difference by.' : Math.abs(diff) <= spread ? ' The difference is within one standard deviation over seeds.' : '';
  return `${verdict}. Best: ${best.label} at ${fmt(best.meta_sum)} against ${fmt(none.meta_sum)} without pre-training (difference ${diff.toFixed(2)}).${caveat}`;
}

export function markdownReport(r: AblationReport, files: { chart: string; metaChart: string }): string {
  const s = r.settings;
  const seeds = [...new Set(r.cells.map((c) => c.seed))].sort((a, b) => a - b);
  const out: string[] = [];
  out.push(`# ${r.title}`, '');
  out.push(
    `Each cell pre-trains a tiny UNITER on the synthetic world (${String(s.pretrainSteps)} steps; none for the no-pre-training row), then fine-tunes it on each task ` +
      `(${Object.entries(s.finetuneSteps as Record<string, number>).map(([t, n]) => `${t} ${n}`).join(', ')} steps) and scores the final model on the held-out test split. ` +
      `Scores are percent (VQA score, retrieval recall@1 for image (IR) and text (TR) retrieval, NLVR2 accuracy, referring-expression accuracy on detected boxes); ` +
      `Meta-Sum is their sum, as in the paper. Mean ± sample standard deviation over seeds ${seeds.join(', ')} (each seed: its own world and initialization).`,
    '',
  );
  out.push(markdownTable(r), '');
  out.push(finding(r), '');
  out.push(`![task scores](${files.chart})`, '', `![Meta-Sum](${files.metaChart})`, '');
  const ptKeys = [...new Set(r.cells.flatMap((c) => Object.entries(c.pretrain_validation ?? {}).flatMap(([t, m]) => Object.keys(m).filter((k) => k.endsWith('_acc')).map((k) => `${t}.${k}`))))].sort();
  if (ptKeys.length) {
    out.push('## Held-out pre-training metrics (mean over seeds)', '');
    out.push(`| Pre-training tasks | ${ptKeys.join(' | ')} |`, `|---|${ptKeys.map(() => '---:').join('|')}|`);
    for (const v of r.variants) {
      const cells = r.cells.filter((c) => c.variant === v.variant && c.pretrain_validation);
      if (!cells.length) continue;
      const vals = ptKeys.map((k) => {
        const [t, m] = k.split('.');
        const xs = cells.map((c) => c.pretrain_validation![t]?.[m]).filter((x): x is number => typeof x === 'number');
        return xs.length ? (xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(3) : '';
      });
      out.push(`| ${v.label} | ${vals.join(' | ')} |`);
    }
    out.push('');
  }
  out.push('## Cost per phase (mean per run)', '', '| phase | runs | steps | wall s | CPU s |', '|---|---:|---:|---:|---:|');
  for (const [k, t] of Object.entries(r.timing)) out.push(`| ${k} | ${t.runs} | ${Math.round(t.steps)} | ${t.seconds.toFixed(1)} | ${t.cpu_seconds.toFixed(1)} |`);
  out.push('');
  return out.join('\n');
}

export function taskChart(r: AblationReport): string {
  const groups: BarGroup[] = r.columns.map((c) => ({
    label: c.label,
    values: r.variants.map((v) => ({ series: v.label, value: v.scores[c.key].mean, error: v.scores[c.key].std ?? undefined })),
  }));
  return barChart(groups, { title: 'Downstream scores by pre-training tasks (mean ± std over seeds)', yLabel: 'score (%)', width: 1100, height: 440, valueLabels: false });
}

export function metaSumChart(r: AblationReport): string {
  const groups: BarGroup[] = r.variants.map((v) => ({ label: v.label, values: [{ series: 'Meta-Sum', value: v.meta_sum.mean, error: v.meta_sum.std ?? undefined }] }));
  return barChart(groups, { title: 'Meta-Sum by pre-training tasks (mean ± std over seeds)', yLabel: 'Meta-Sum', width: 960, height: 420 });
}

export const OUTPUT_FILES = { json: 'ablation.json', markdown: 'ablation.md', chart: 'ablation.svg', metaChart: 'ablation-metasum.svg' } as const;

/** Write the results JSON, markdown and charts, each atomically; returns their paths. */
export function writeReport(outDir: string, r: AblationReport): Record<keyof typeof OUTPUT_FILES, string> {
  const p = (f: string) => path.join(outDir, f);
  writeFileAtomic(p(OUTPUT_FILES.chart), taskChart(r));
  writeFileAtomic(p(OUTPUT_FILES.metaChart), metaSumChart(r));
  writeFileAtomic(p(OUTPUT_FILES.markdown), markdownReport(r, { chart: OUTPUT_FILES.chart, metaChart: OUTPUT_FILES.metaChart }));
  writeFileAtomic(p(OUTPUT_FILES.json), JSON.stringify(r, null, 1) + '\n');
  return { json: p(OUTPUT_FILES.json), markdown: p(OUTPUT_FILES.markdown), chart: p(OUTPUT_FILES.chart), metaChart: p(OUTPUT_FILES.metaChart) };
}
