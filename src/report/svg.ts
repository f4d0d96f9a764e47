/**
 * Dependency-free SVG charts: a line chart (several series, linear or log y axis, legend) and a
 * bar chart (grouped bars with optional error bars). Both return a standalone `<svg>` string
 * with a viewBox, so they scale inside HTML and can be written to .svg files as they are.
 */

/** Colour-blind-friendly categorical palette (Okabe-Ito order, then Tableau tones). */
export const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#8C564B', '#7F7F7F', '#BCBD22', '#17BECF', '#4E79A7', '#F28E2B'];

export function seriesColor(index: number): string {
  return PALETTE[index % PALETTE.length];
}

export interface LineSeries {
  name: string;
  /** [x, y] pairs; a non-finite y breaks the line. */
  points: ReadonlyArray<readonly [number, number]>;
  color?: string;
  /** Line pattern (default solid). */
  dash?: LineDash;
}

export type LineDash = 'solid' | 'dashed' | 'dotted' | 'dashdot';
export const LINE_DASHES: readonly LineDash[] = ['solid', 'dashed', 'dotted', 'dashdot'];
const DASH_ARRAY: Record<LineDash, string | null> = { solid: null, dashed: '7 4', dotted: '1.5 3.5', dashdot: '8 3 1.5 3' };

export interface ChartFrame {
  title?: string;
  xLabel?: string;
  yLabel?: string;
  width?: number;
  height?: number;
}

export interface LineChartOptions extends ChartFrame {
  /** 'auto' picks log when all y > 0 and they span more than 30x. Default 'linear'. */
  yScale?: 'linear' | 'log' | 'auto';
  /** Draw a dot at every point; default: when every series has at most 40 points. */
  markers?: boolean;
  /** Force the y range to include 0. */
  yIncludesZero?: boolean;
}

export interface BarValue {
  series: string;
  value: number;
  /** Half-length of the error bar (e.g. a standard deviation); omitted = none. */
  error?: number;
}

export interface BarGroup {
  label: string;
  values: BarValue[];
}

export interface BarChartOptions extends ChartFrame {
  /** Order (and set) of the series within every group; default: first-seen order. */
  seriesOrder?: string[];
  /** Print each bar's value above it. Default true when there are at most 24 bars. */
  valueLabels?: boolean;
  /** Digits after the decimal point of value labels (default: from the tick step). */
  valueDigits?: number;
}

// --- scales and ticks ------------------------------------------------------------------------

/** A "nice" number near x: 1, 2, 2.5, 5 or 10 times a power of ten (rounded or ceiling). */
function niceNumber(x: number, round: boolean): number {
  const exp = Math.floor(Math.log10(x));
  const f = x / 10 ** exp;
  let nf: number;
  if (round) nf = f < 1.5 ? 1 : f < 2.25 ? 2 : f < 3.5 ? 2.5 : f < 7.5 ? 5 : 10;
  else nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
  return nf * 10 ** exp;
}

/**
 * Tick values covering [min, max] with about `count` ticks at a 1/2/2.5/5 x 10^k step; the
 * first and last ticks enclose the data.
 */
export function niceTicks(min: number, max: number, count = 6): { ticks: number[]; step: number } {
  if (!Number.isFinite(min) || !Number.isFinite(max)) throw new RangeError(`niceTicks: range [${min}, ${max}] is not finite`);
  if (max < min) [min, max] = [max, min];
  if (max === min) {
    const pad = min === 0 ? 1 : Math.abs(min) * 0.1;
    min -= pad;
    max += pad;
  }
  const step = niceNumber(niceNumber(max - min, false) / Math.max(1, count - 1), true);
  const lo = Math.floor(min / step + 1e-9) * step;
  const hi = Math.ceil(max / step - 1e-9) * step;
  const ticks: number[] = [];
  for (let i = 0, v = lo; v <= hi + step * 1e-6; i++, v = lo + i * step) ticks.push(cleanFloat(v, step));
  return { ticks, step };
}

/**
 * Log-axis domain and ticks for data in [min, max]: the domain is the data range padded by 4%
 * of its log span; ticks are the 1-2-5 (or 1-3, or powers-of-ten) values inside it, the
 * densest set that stays under about 8 ticks and, where possible, has at least 3.
 */
export function logTicks(min: number, max: number): { ticks: number[]; lo: number; hi: number } {
  if (!(min > 0 && max > 0)) throw new RangeError(`logTicks: range [${min}, ${max}] must be positive`);
  let a = Math.log10(min);
  let b = Math.log10(max);
  if (b - a < 0.1) {
    const mid = (a + b) / 2;
    a = mid - 0.05;
    b = mid + 0.05;
  }
  const pad = (b - a) * 0.04;
  const lo = 10 ** (a - pad);
  const hi = 10 ** (b + pad);
  const candidates = [[1], [1, 3], [1, 2, 5], [1, 1.5, 2, 3, 5, 7]].map((mults) => {
    const out: number[] = [];
    for (let e = Math.floor(a - pad) - 1; e <= Math.ceil(b + pad); e++) {
      for (const m of mults) {
        const v = m * 10 ** e;
        if (v >= lo && v <= hi) out.push(cleanFloat(v, 10 ** (e - 3)));
      }
    }
    return out;
  });
  const fitting = candidates.filter((t) => t.length <= 8);
  const best = fitting.find((t) => t.length >= 3) ?? fitting[fitting.length - 1] ?? candidates[0];
  return { ticks: best, lo, hi };
}

/** Round away float noise (0.30000000000000004 -> 0.3) relative to the tick step. */
function cleanFloat(v: number, step: number): number {
  const digits = Math.max(0, Math.min(15, -Math.floor(Math.log10(step)) + 2));
  return Number(v.toFixed(digits));
}

/** Tick label: thousands as k/M, tiny values in exponent form, otherwise as many decimals as the step needs. */
export function formatTick(v: number, step: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6 && step >= 1e5) return `${trimZeros((v / 1e6).toFixed(decimalsFor(step / 1e6)))}M`;
  if (a >= 1e4 && step >= 1e3) return `${trimZeros((v / 1e3).toFixed(decimalsFor(step / 1e3)))}k`;
  if (a < 1e-3) {
    // Mantissa digits enough to tell neighbouring ticks apart: 2e-5, 2.5e-5.
    const mantissaDigits = decimalsFor(step / 10 ** Math.floor(Math.log10(a)));
    return v.toExponential(mantissaDigits).replace(/\.?0+e/, 'e');
  }
  return trimZeros(v.toFixed(decimalsFor(step)));
}

function decimalsFor(step: number): number {
  if (!(step > 0)) return 0;
  return Math.max(0, Math.min(10, -Math.floor(Math.log10(step) + 1e-9) + (niceMantissa(step) === 2.5 ? 1 : 0)));
}

function niceMantissa(step: number): number {
  const e = Math.floor(Math.log10(step) + 1e-9);
  return Math.round((step / 10 ** e) * 100) / 100;
}

function trimZeros(s: string): string {
  return s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

/** Label of a log-axis tick. */
function formatLogTick(v: number): string {
  if (v >= 1e4 || v < 1e-3) return v.toExponential(1).replace(/\.0e/, 'e').replace('e+', 'e');
  return String(Number(v.toPrecision(3)));
}

function decimalsOf(text: string): number {
  const dot = text.indexOf('.');
  return dot < 0 ? 0 : text.length - dot - 1;
}

/** Bar value label: 3 significant digits below 100, one decimal up to 1000, integers above. */
export function formatValue(v: number, digits?: number): string {
  if (digits !== undefined) return v.toFixed(digits);
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  if (a !== 0 && a < 1e-3) return v.toExponential(2);
  return String(Number(v.toPrecision(3)));
}

// --- drawing helpers -------------------------------------------------------------------------

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

const FONT = `font-family="system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"`;
const AXIS_COLOR = '#444';
const GRID_COLOR = '#e3e3e3';
const TEXT_COLOR = '#222';

/** Rough text width in px for the sans-serif font at a size (for layout only). */
function textWidth(s: string, size: number): number {
  return s.length * size * 0.56;
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

interface Layout {
  width: number;
  height: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
}

function svgOpen(width: number, height: number, title: string | undefined, kind: string, seriesCount: number): string {
  const label = title ? ` aria-label="${escapeXml(title)}"` : '';
  return `<svg xmlns="http://www.w3.org/2000/svg" class="chart ${kind}" data-series="${seriesCount}" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img"${label} ${FONT}>\n<rect x="0" y="0" width="${width}" height="${height}" fill="#fff"/>\n`;
}

function titleAndLabels(frame: ChartFrame, l: Layout): string {
  let out = '';
  if (frame.title) out += `<text x="${fmt(l.left)}" y="22" font-size="15" font-weight="600" fill="${TEXT_COLOR}">${escapeXml(frame.title)}</text>\n`;
  if (frame.xLabel) out += `<text x="${fmt((l.left + l.width - l.right) / 2)}" y="${fmt(l.height - 8)}" font-size="12" text-anchor="middle" fill="${AXIS_COLOR}">${escapeXml(frame.xLabel)}</text>\n`;
  if (frame.yLabel) {
    const cy = (l.top + l.height - l.bottom) / 2;
    out += `<text transform="translate(14 ${fmt(cy)}) rotate(-90)" font-size="12" text-anchor="middle" fill="${AXIS_COLOR}">${escapeXml(frame.yLabel)}</text>\n`;
  }
  return out;
}

/**
 * Split a label into at most `maxLines` lines of about `maxWidth` px (at font `size`), breaking
 * at spaces; text that still does not fit ends with an ellipsis.
 */
export function wrapLabel(label: string, maxWidth: number, size: number, maxLines: number): string[] {
  const maxChars = Math.max(3, Math.floor(maxWidth / (size * 0.56)));
  const lines: string[] = [];
  let current = '';
  for (const word of label.split(/\s+/).filter(Boolean)) {
    const candidate = current ? `${current} ${word}` : word;
    if (candidate.length <= maxChars || !current) current = candidate;
    else {
      lines.push(current);
      current = word;
    }
  }
  if (current) lines.push(current);
  const out = lines.slice(0, maxLines);
  const truncated = lines.length > maxLines;
  return out.map((line, i) => {
    const last = i === out.length - 1;
    if (line.length > maxChars || (last && truncated)) return `${line.slice(0, Math.max(1, maxChars - 1)).trimEnd()}…`;
    return line;
  });
}

/** Vertical legend in the right margin; returns the markup. */
function legend(entries: Array<{ name: string; color: string; dash?: LineDash; kind: 'line' | 'box' }>, x: number, y: number): string {
  let out = `<g class="legend">\n`;
  entries.forEach((e, i) => {
    const cy = y + i * 20;
    const sample =
      e.kind === 'line'
        ? `<line x1="${fmt(x)}" y1="${fmt(cy)}" x2="${fmt(x + 24)}" y2="${fmt(cy)}" stroke="${e.color}" stroke-width="3"${dashAttr(e.dash)}/>`
        : `<rect x="${fmt(x + 6)}" y="${fmt(cy - 6)}" width="12" height="12" rx="2" fill="${e.color}"/>`;
    out += `<g class="legend-entry">${sample}<text x="${fmt(x + 30)}" y="${fmt(cy + 4)}" font-size="12" fill="${TEXT_COLOR}">${escapeXml(e.name)}</text></g>\n`;
  });
  return out + '</g>\n';
}

function dashAttr(dash: LineDash | undefined): string {
  const a = DASH_ARRAY[dash ?? 'solid'];
  return a ? ` stroke-dasharray="${a}"` : '';
}

function legendWidth(names: string[]): number {
  return names.length ? Math.min(220, Math.max(...names.map((n) => textWidth(n, 12))) + 46) : 0;
}

// --- line chart ------------------------------------------------------------------------------

/** Line chart of several series sharing x and y axes. */
export function lineChart(series: readonly LineSeries[], options: LineChartOptions = {}): string {
  const width = options.width ?? 720;
  const height = options.height ?? 360;
  const showLegend = series.length > 1;
  const l: Layout = {
    width,
    height,
    left: 62 + (options.yLabel ? 12 : 0),
    right: 18 + (showLegend ? legendWidth(series.map((s) => s.name)) : 0),
    top: options.title ? 38 : 16,
    bottom: 30 + (options.xLabel ? 20 : 0),
  };
  const plotW = width - l.left - l.right;
  const plotH = height - l.top - l.bottom;

  const finite = series.flatMap((s) => s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
  let out = svgOpen(width, height, options.title, 'line-chart', series.length);
  out += titleAndLabels(options, l);
  if (finite.length === 0) {
    out += `<text x="${fmt(l.left + plotW / 2)}" y="${fmt(l.top + plotH / 2)}" font-size="13" text-anchor="middle" fill="#888">no data</text>\n</svg>`;
    return out;
  }
  const ys = finite.map((p) => p[1]);
  const xs = finite.map((p) => p[0]);
  const positive = ys.every((y) => y > 0);
  const yMin0 = Math.min(...ys);
  const yMax0 = Math.max(...ys);
  const wantLog = options.yScale === 'log' || (options.yScale === 'auto' && positive && yMax0 / yMin0 > 30);
  const useLog = wantLog && positive;

  const { ticks: xTicks, step: xStep } = niceTicks(Math.min(...xs), Math.max(...xs), Math.max(3, Math.round(plotW / 90)));
  // Extend the x axis to the enclosing ticks when that adds little (steps 1..3000 -> 0..3000).
  const [dataXLo, dataXHi] = [Math.min(...xs), Math.max(...xs)];
  const xSlack = 0.06 * (dataXHi - dataXLo);
  const xLo = dataXLo === dataXHi || dataXLo - xTicks[0] <= xSlack ? xTicks[0] : dataXLo;
  const xHi = dataXLo === dataXHi || xTicks[xTicks.length - 1] - dataXHi <= xSlack ? xTicks[xTicks.length - 1] : dataXHi;
  const sx = (x: number): number => l.left + ((x - xLo) / (xHi - xLo)) * plotW;

  let yTicks: number[];
  let sy: (y: number) => number;
  let yLabel: (v: number) => string;
  if (useLog) {
    const t = logTicks(yMin0, yMax0);
    yTicks = t.ticks;
    const lo = Math.log10(t.lo);
    const hi = Math.log10(t.hi);
    sy = (y) => l.top + plotH - ((Math.log10(y) - lo) / (hi - lo)) * plotH;
    yLabel = formatLogTick;
  } else {
    const lo = options.yIncludesZero ? Math.min(0, yMin0) : yMin0;
    const hi = options.yIncludesZero ? Math.max(0, yMax0) : yMax0;
    const t = niceTicks(lo, hi, Math.max(3, Math.round(plotH / 55)));
    yTicks = t.ticks;
    const a = yTicks[0];
    const b = yTicks[yTicks.length - 1];
    sy = (y) => l.top + plotH - ((y - a) / (b - a)) * plotH;
    yLabel = (v) => formatTick(v, t.step);
  }

  // Grid and axes.
  out += `<g class="grid" stroke="${GRID_COLOR}" stroke-width="1">\n`;
  for (const t of yTicks) out += `<line x1="${fmt(l.left)}" y1="${fmt(sy(t))}" x2="${fmt(l.left + plotW)}" y2="${fmt(sy(t))}"/>\n`;
  out += '</g>\n';
  out += `<g class="y-axis" font-size="11" fill="${AXIS_COLOR}" text-anchor="end">\n`;
  for (const t of yTicks) out += `<text x="${fmt(l.left - 7)}" y="${fmt(sy(t) + 4)}">${escapeXml(yLabel(t))}</text>\n`;
  out += '</g>\n';
  out += `<g class="x-axis" font-size="11" fill="${AXIS_COLOR}" text-anchor="middle">\n`;
  out += `<line x1="${fmt(l.left)}" y1="${fmt(l.top + plotH)}" x2="${fmt(l.left + plotW)}" y2="${fmt(l.top + plotH)}" stroke="${AXIS_COLOR}"/>\n`;
  for (const t of xTicks) {
    if (t < xLo - 1e-9 * Math.abs(xHi - xLo) || t > xHi + 1e-9 * Math.abs(xHi - xLo)) continue;
    const x = sx(t);
    out += `<line x1="${fmt(x)}" y1="${fmt(l.top + plotH)}" x2="${fmt(x)}" y2="${fmt(l.top + plotH + 5)}" stroke="${AXIS_COLOR}"/><text x="${fmt(x)}" y="${fmt(l.top + plotH + 19)}">${escapeXml(formatTick(t, xStep))}</text>\n`;
  }
  out += '</g>\n';

  // Series.
  const markers = options.markers ?? series.every((s) => s.points.length <= 40);
  series.forEach((s, i) => {
    const color = s.color ?? seriesColor(i);
    let d = '';
    let penDown = false;
    const dots: string[] = [];
    for (const [x, y] of s.points) {
      if (!Number.isFinite(x) || !Number.isFinite(y) || (useLog && y <= 0)) {
        penDown = false;
        continue;
      }
      d += `${penDown ? 'L' : 'M'}${fmt(sx(x))} ${fmt(sy(y))}`;
      penDown = true;
      if (markers) dots.push(`<circle cx="${fmt(sx(x))}" cy="${fmt(sy(y))}" r="2.6"/>`);
    }
    out += `<g class="series" data-name="${escapeXml(s.name)}"><title>${escapeXml(s.name)}</title>`;
    out += `<path d="${d}" fill="none" stroke="${color}" stroke-width="2" stroke-linejoin="round" stroke-linecap="${s.dash === 'dotted' ? 'round' : 'butt'}"${dashAttr(s.dash)}/>`;
    if (dots.length) out += `<g fill="${color}">${dots.join('')}</g>`;
    out += '</g>\n';
  });

  if (showLegend) out += legend(series.map((s, i) => ({ name: s.name, color: s.color ?? seriesColor(i), dash: s.dash, kind: 'line' as const })), width - l.right + 16, l.top + 8);
  return out + '</svg>';
}

// --- bar chart -------------------------------------------------------------------------------

/** Grouped bar chart: one cluster per group, one coloured bar per series, optional error bars. */
export function barChart(groups: readonly BarGroup[], options: BarChartOptions = {}): string {
  const width = options.width ?? 720;
  const height = options.height ?? 380;
  const order = options.seriesOrder ?? [...new Set(groups.flatMap((g) => g.values.map((v) => v.series)))];
  const showLegend = order.length > 1;
  const l: Layout = {
    width,
    height,
    left: 62 + (options.yLabel ? 12 : 0),
    right: 18 + (showLegend ? legendWidth(order) : 0),
    top: options.title ? 38 : 16,
    bottom: 0,
  };
  const plotW = width - l.left - l.right;
  const slot = groups.length ? plotW / groups.length : plotW;
  const wrapped = groups.map((g) => wrapLabel(g.label, slot - 8, 12, 3));
  const labelLines = Math.max(1, ...wrapped.map((w) => w.length));
  l.bottom = 20 + labelLines * 14 + (options.xLabel ? 18 : 0);
  const plotH = height - l.top - l.bottom;

  let out = svgOpen(width, height, options.title, 'bar-chart', order.length);
  out += titleAndLabels(options, l);
  const values = groups.flatMap((g) => g.values.filter((v) => Number.isFinite(v.value)));
  if (values.length === 0) {
    out += `<text x="${fmt(l.left + plotW / 2)}" y="${fmt(l.top + plotH / 2)}" font-size="13" text-anchor="middle" fill="#888">no data</text>\n</svg>`;
    return out;
  }
  const labelsOn = options.valueLabels ?? groups.length * order.length <= 24;
  const lo = Math.min(0, ...values.map((v) => v.value - (v.error ?? 0)));
  const hi = Math.max(0, ...values.map((v) => v.value + (v.error ?? 0)));
  const { ticks, step } = niceTicks(lo, hi, Math.max(3, Math.round(plotH / 55)));
  // The plotted range reaches past the outer ticks when value labels need headroom.
  const headroom = labelsOn ? (hi - lo) * 0.07 : 0;
  const a = Math.min(ticks[0], lo < 0 ? lo - headroom : lo);
  const b = Math.max(ticks[ticks.length - 1], hi > 0 ? hi + headroom : hi);
  const sy = (y: number): number => l.top + plotH - ((y - a) / (b - a)) * plotH;
  // One precision for all labels of the chart (73.0 next to 73.6), unless some need exponents.
  const auto = values.map((v) => formatValue(v.value));
  const digits = options.valueDigits ?? (auto.some((t) => /e/.test(t)) ? undefined : Math.min(4, Math.max(...auto.map(decimalsOf))));

  out += `<g class="grid" stroke="${GRID_COLOR}" stroke-width="1">\n`;
  for (const t of ticks) out += `<line x1="${fmt(l.left)}" y1="${fmt(sy(t))}" x2="${fmt(l.left + plotW)}" y2="${fmt(sy(t))}"/>\n`;
  out += '</g>\n';
  out += `<g class="y-axis" font-size="11" fill="${AXIS_COLOR}" text-anchor="end">\n`;
  for (const t of ticks) out += `<text x="${fmt(l.left - 7)}" y="${fmt(sy(t) + 4)}">${escapeXml(formatTick(t, step))}</text>\n`;
  out += '</g>\n';

  const inner = slot * 0.78;
  const barW = order.length ? inner / order.length : inner;
  const bars: string[] = Array.from({ length: order.length }, () => '');
  const labels: string[] = [];
  groups.forEach((g, gi) => {
    const x0 = l.left + gi * slot + (slot - inner) / 2;
    order.forEach((name, si) => {
      const v = g.values.find((x) => x.series === name);
      if (!v || !Number.isFinite(v.value)) return;
      const color = seriesColor(si);
      const x = x0 + si * barW + barW * 0.06;
      const w = barW * 0.88;
      const yTop = sy(Math.max(0, v.value));
      const yBot = sy(Math.min(0, v.value));
      bars[si] += `<rect x="${fmt(x)}" y="${fmt(yTop)}" width="${fmt(w)}" height="${fmt(Math.max(0.5, yBot - yTop))}" fill="${color}" rx="1.5"><title>${escapeXml(`${g.label} / ${name}: ${v.value}${v.error !== undefined ? ` ± ${v.error}` : ''}`)}</title></rect>`;
      let labelY = v.value >= 0 ? yTop - 4 : yBot + 12;
      if (v.error !== undefined && v.error > 0) {
        const cx = x + w / 2;
        const e1 = sy(v.value + v.error);
        const e2 = sy(v.value - v.error);
        const cap = Math.min(8, w * 0.5) / 2;
        bars[si] += `<g class="error-bar" stroke="#222" stroke-width="1.3"><line x1="${fmt(cx)}" y1="${fmt(e1)}" x2="${fmt(cx)}" y2="${fmt(e2)}"/><line x1="${fmt(cx - cap)}" y1="${fmt(e1)}" x2="${fmt(cx + cap)}" y2="${fmt(e1)}"/><line x1="${fmt(cx - cap)}" y1="${fmt(e2)}" x2="${fmt(cx + cap)}" y2="${fmt(e2)}"/></g>`;
        labelY = v.value >= 0 ? e1 - 4 : e2 + 12;
      }
      if (labelsOn) labels.push(`<text x="${fmt(x + w / 2)}" y="${fmt(labelY)}">${escapeXml(formatValue(v.value, digits))}</text>`);
    });
  });
  order.forEach((name, si) => {
    out += `<g class="series" data-name="${escapeXml(name)}">${bars[si]}</g>\n`;
  });
  if (labels.length) out += `<g class="value-labels" font-size="10.5" fill="${TEXT_COLOR}" text-anchor="middle">${labels.join('')}</g>\n`;

  // Zero line and group labels.
  out += `<line x1="${fmt(l.left)}" y1="${fmt(sy(0))}" x2="${fmt(l.left + plotW)}" y2="${fmt(sy(0))}" stroke="${AXIS_COLOR}"/>\n`;
  out += `<g class="x-axis" font-size="12" fill="${TEXT_COLOR}">\n`;
  groups.forEach((g, gi) => {
    const cx = l.left + (gi + 0.5) * slot;
    const y = l.top + plotH + 18;
    const lines = wrapped[gi].map((line, i) => `<tspan x="${fmt(cx)}" y="${fmt(y + i * 14)}">${escapeXml(line)}</tspan>`).join('');
    out += `<text text-anchor="middle"><title>${escapeXml(g.label)}</title>${lines}</text>\n`;
  });
  out += '</g>\n';
  if (showLegend) out += legend(order.map((name, i) => ({ name, color: seriesColor(i), kind: 'box' as const })), width - l.right + 16, l.top + 8);
  return out + '</svg>';
}
