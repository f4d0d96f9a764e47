/**
 * HTML report of a training run from its JSON Lines log (pretrain/progress.ts JsonlLogger):
 *   {type: "train", step, task, loss, lr?, grad_norm?, tokens?, time?, ...}   one per optimizer step
 *     (grad_norm only when clipping is on; time: seconds by part of the step, pretrain/step-time.ts)
 *   {type: "val", step, task, <metric>: number, ...}           one per task per validation
 * Draws the training loss per task, the learning rate and gradient norm when logged, and one
 * curve per validation metric of every task, plus summary tables.
 */
import * as path from 'node:path';
import { LogRecord, readJsonl } from '../pretrain/progress.js';
import { HtmlReport, ReportSection, ReportTable, writeHtmlReport } from './html.js';
import { PRETRAIN_TASKS } from '../pretrain/config.js';
import { LINE_DASHES, LineDash, LineSeries, lineChart, seriesColor } from './svg.js';

export interface TrainingReportOptions {
  title?: string;
  subtitle?: string;
  /** Series longer than this are averaged into this many x buckets (default 150). */
  maxPointsPerSeries?: number;
}

/** What was drawn: one entry per chart, in page order. */
export interface TrainingReportSummary {
  charts: Array<{ title: string; series: string[] }>;
  trainRecords: number;
  valRecords: number;
}

/** Fields of a validation record that are not quality metrics. */
const NON_METRIC = /(^type$|^step$|^task$|_per_s$|^time$|^elapsed|seconds$)/;

export function writeTrainingReport(jsonlFile: string, outHtml: string, options: TrainingReportOptions = {}): TrainingReportSummary {
  const records = readJsonl(jsonlFile);
  const { report, summary } = buildTrainingReport(records, { ...options, subtitle: options.subtitle ?? `from ${path.basename(jsonlFile)}` });
  writeHtmlReport(outHtml, report);
  return summary;
}

export function buildTrainingReport(records: readonly LogRecord[], options: TrainingReportOptions = {}): { report: HtmlReport; summary: TrainingReportSummary } {
  const maxPoints = options.maxPointsPerSeries ?? 150;
  const train = records.filter((r) => r.type === 'train' && isNum(r.step));
  const val = records.filter((r) => r.type === 'val' && isNum(r.step));
  const charts: TrainingReportSummary['charts'] = [];
  const sections: ReportSection[] = [];
  const chart = (title: string, series: LineSeries[], opts: Parameters<typeof lineChart>[1]): string => {
    charts.push({ title, series: series.map((s) => s.name) });
    return lineChart(series, { title, ...opts });
  };
  const style = new SeriesStyle([...train, ...val].map((r) => String(r.task ?? 'all')));

  // Training curves: one series per <task>_<dataset>, coloured by task, dashed by dataset.
  const trainByTask = sortedGroups(train, style);
  const lossSeries: LineSeries[] = [...trainByTask].map(([name, rs]) => ({ name, points: downsampleMean(pointsOf(rs, 'loss'), maxPoints), ...style.of(name) }));
  const trainCharts: string[] = [];
  if (train.length) {
    trainCharts.push(chart('Training loss by task', lossSeries, { xLabel: 'optimizer step', yLabel: 'loss', yScale: 'auto', height: 400 }));
    const lr = dedupeByStep(pointsOf(train, 'lr'));
    if (lr.length) trainCharts.push(chart('Learning rate', [{ name: 'lr', points: downsampleMean(lr, 400) }], { xLabel: 'optimizer step', yLabel: 'learning rate', yIncludesZero: true, height: 260 }));
    const gn = dedupeByStep(pointsOf(train, 'grad_norm'));
    if (gn.length) trainCharts.push(chart('Gradient norm (before clipping)', [{ name: 'grad_norm', points: downsampleMean(gn, maxPoints) }], { xLabel: 'optimizer step', yLabel: 'global L2 norm', yScale: 'auto', height: 260 }));
  }
  const steps = [...train, ...val].map((r) => r.step as number);
  const summaryRows: ReportTable['rows'] = [...trainByTask].map(([name, rs]) => {
    const losses = pointsOf(rs, 'loss').map((p) => p[1]);
    const tail = losses.slice(-Math.max(1, Math.round(losses.length * 0.05)));
    return [name, rs.length, losses.length ? losses[0] : null, tail.length ? mean(tail) : null];
  });
  sections.push({
    heading: 'Training',
    paragraphs: train.length
      ? [`${train.length} optimizer steps logged (steps ${Math.min(...steps)} to ${Math.max(...steps)}). Each curve averages the log into at most ${maxPoints} points.`]
      : ['The log holds no training records.'],
    tables: train.length ? [{ caption: 'Steps drawn per task', columns: ['task', 'steps', 'first loss', 'final loss (last 5%)'], rows: summaryRows }] : [],
    charts: trainCharts,
  });

  // Validation curves: for each task, one chart per metric with one series per dataset.
  const valByName = sortedGroups(val, style);
  const byTask = new Map<string, Array<[string, LogRecord[]]>>();
  for (const [name, rs] of valByName) {
    const task = style.taskOf(name);
    const list = byTask.get(task) ?? [];
    list.push([name, rs]);
    byTask.set(task, list);
  }
  const allMetrics: string[] = [];
  for (const rs of valByName.values()) for (const m of metricNames(rs)) if (!allMetrics.includes(m)) allMetrics.push(m);
  const perTask = [...byTask].map(([task, entries]) => ({ task, entries, metrics: allMetrics.filter((m) => entries.some(([, rs]) => rs.some((r) => isNum(r[m])))) }));
  const columns = Math.min(3, Math.max(1, ...perTask.map((t) => t.metrics.length)));
  const valCharts: string[] = [];
  for (const { task, entries, metrics } of perTask) {
    const row = metrics.map((m) =>
      chart(
        `${task}: ${m}`,
        entries.map(([name, rs]) => ({ name: style.datasetOf(name) || name, points: dedupeByStep(pointsOf(rs, m)), ...style.of(name) })),
        { xLabel: 'optimizer step', height: 260, width: columns === 1 ? 720 : 520 },
      ),
    );
    // Pad so that every task starts a new row of the grid.
    for (let i = 0; i < row.length; i += columns) valCharts.push(...row.slice(i, i + columns), ...Array<string>(Math.max(0, i + columns - row.length)).fill(''));
  }
  const finalRows: ReportTable['rows'] = [...valByName].map(([name, rs]) => {
    const last = rs.reduce((a, b) => ((b.step as number) >= (a.step as number) ? b : a));
    return [name, last.step as number, ...allMetrics.map((m) => (isNum(last[m]) ? (last[m] as number) : null))];
  });
  sections.push({
    heading: 'Validation',
    paragraphs: val.length ? [] : ['The log holds no validation records.'],
    tables: val.length ? [{ caption: 'Latest validation results', columns: ['task', 'step', ...allMetrics], rows: finalRows }] : [],
    charts: valCharts,
    columns,
  });

  const report: HtmlReport = { title: options.title ?? 'Training report', subtitle: options.subtitle, sections };
  return { report, summary: { charts, trainRecords: train.length, valRecords: val.length } };
}

/**
 * Consistent styling of `<task>_<dataset>` names across charts: colour by task (in the
 * canonical task order), line pattern by dataset (alphabetical).
 */
class SeriesStyle {
  private readonly tasks: string[] = [...PRETRAIN_TASKS];
  private readonly datasets: string[] = [];

  constructor(names: readonly string[]) {
    for (const n of names) {
      const t = this.taskOf(n);
      if (!this.tasks.includes(t)) this.tasks.push(t);
      const d = this.datasetOf(n);
      if (!this.datasets.includes(d)) this.datasets.push(d);
    }
    this.datasets.sort();
  }

  taskOf(name: string): string {
    const i = name.indexOf('_');
    return i > 0 ? name.slice(0, i) : name;
  }

  datasetOf(name: string): string {
    const i = name.indexOf('_');
    return i > 0 ? name.slice(i + 1) : '';
  }

  of(name: string): { color: string; dash: LineDash } {
    return { color: seriesColor(this.tasks.indexOf(this.taskOf(name))), dash: LINE_DASHES[this.datasets.indexOf(this.datasetOf(name)) % LINE_DASHES.length] };
  }

  /** Sort key: task in canonical order, then dataset. */
  compare(a: string, b: string): number {
    return this.tasks.indexOf(this.taskOf(a)) - this.tasks.indexOf(this.taskOf(b)) || this.datasets.indexOf(this.datasetOf(a)) - this.datasets.indexOf(this.datasetOf(b)) || (a < b ? -1 : a > b ? 1 : 0);
  }
}

function sortedGroups(rs: readonly LogRecord[], style: SeriesStyle): Map<string, LogRecord[]> {
  const g = groupBy(rs, (r) => String(r.task ?? 'all'));
  return new Map([...g].sort(([a], [b]) => style.compare(a, b)));
}

/**
 * At most `maxPoints` points: the x range is cut into equal-width buckets and each non-empty
 * bucket becomes the mean of its points (which also smooths noisy per-step losses).
 */
export function downsampleMean(points: ReadonlyArray<readonly [number, number]>, maxPoints: number): Array<[number, number]> {
  const sorted = [...points].filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)).sort((a, b) => a[0] - b[0]);
  if (sorted.length <= maxPoints) return sorted.map(([x, y]) => [x, y]);
  const lo = sorted[0][0];
  const span = sorted[sorted.length - 1][0] - lo || 1;
  const sx = new Float64Array(maxPoints);
  const sy = new Float64Array(maxPoints);
  const n = new Uint32Array(maxPoints);
  for (const [x, y] of sorted) {
    const b = Math.min(maxPoints - 1, Math.floor(((x - lo) / span) * maxPoints));
    sx[b] += x;
    sy[b] += y;
    n[b]++;
  }
  const out: Array<[number, number]> = [];
  for (let b = 0; b < maxPoints; b++) if (n[b]) out.push([sx[b] / n[b], sy[b] / n[b]]);
  return out;
}

function isNum(x: unknown): x is number {
  return typeof x === 'number' && Number.isFinite(x);
}

function pointsOf(rs: readonly LogRecord[], key: string): Array<[number, number]> {
  return rs.filter((r) => isNum(r[key])).map((r) => [r.step as number, r[key] as number]);
}

/** Keep the last value logged for each step (a value logged once per step may repeat across records). */
function dedupeByStep(points: Array<[number, number]>): Array<[number, number]> {
  const m = new Map<number, number>();
  for (const [x, y] of points) m.set(x, y);
  return [...m].sort((a, b) => a[0] - b[0]);
}

function metricNames(rs: readonly LogRecord[]): string[] {
  const names: string[] = [];
  for (const r of rs) for (const [k, v] of Object.entries(r)) if (!NON_METRIC.test(k) && isNum(v) && !names.includes(k)) names.push(k);
  return names;
}

function groupBy<T>(xs: readonly T[], key: (x: T) => string): Map<string, T[]> {
  const m = new Map<string, T[]>();
  for (const x of xs) {
    const k = key(x);
    const list = m.get(k);
    if (list) list.push(x);
    else m.set(k, [x]);
  }
  return m;
}

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}
