/**
 * Self-contained HTML reports: a title, sections of prose, inline SVG charts and tables, with
 * embedded CSS (no scripts, no external files), written atomically.
 */
import { writeFileAtomic } from '../util/atomic.js';
import { escapeXml } from './svg.js';

export interface ReportTable {
  caption?: string;
  columns: string[];
  /** Cells are printed as given; numbers use `digits` significant decimals. */
  rows: Array<Array<string | number | null>>;
  digits?: number;
}

export interface ReportSection {
  heading: string;
  /** Plain text paragraphs (escaped). */
  paragraphs?: string[];
  tables?: ReportTable[];
  /** SVG strings from svg.ts, laid out in a grid; '' leaves a cell empty. */
  charts?: string[];
  /** Charts per row (default 1; 2 suits small multiples). */
  columns?: number;
}

export interface HtmlReport {
  title: string;
  subtitle?: string;
  sections: ReportSection[];
}

const STYLE = `
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222; background: #f6f7f9; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
.subtitle { color: #666; margin: 0 0 24px; }
section { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 18px 20px; margin: 0 0 20px; }
h2 { font-size: 18px; margin: 0 0 12px; }
p { line-height: 1.5; margin: 0 0 10px; }
.charts { display: grid; gap: 14px; }
.charts svg { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13.5px; }
caption { text-align: left; font-weight: 600; padding: 0 0 6px; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e6e6e6; text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f1f3f6; font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
`;

export function renderHtmlReport(report: HtmlReport): string {
  const parts: string[] = [];
  parts.push(`<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>${escapeXml(report.title)}</title>\n<style>${STYLE}</style>\n</head>\n<body>\n<main>\n`);
  parts.push(`<h1>${escapeXml(report.title)}</h1>\n`);
  if (report.subtitle) parts.push(`<p class="subtitle">${escapeXml(report.subtitle)}</p>\n`);
  for (const s of report.sections) {
    parts.push(`<section>\n<h2>${escapeXml(s.heading)}</h2>\n`);
    for (const p of s.paragraphs ?? []) parts.push(`<p>${escapeXml(p)}</p>\n`);
    for (const t of s.tables ?? []) parts.push(renderTable(t));
    if (s.charts?.length) {
      const cols = Math.max(1, s.columns ?? 1);
      const cells = s.charts.map((c) => (c === '' ? '<div></div>' : c));
      parts.push(`<div class="charts" style="grid-template-columns: repeat(${cols}, minmax(0, 1fr))">\n${cells.join('\n')}\n</div>\n`);
    }
    parts.push('</section>\n');
  }
  parts.push('</main>\n</body>\n</html>\n');
  return parts.join('');
}

export function writeHtmlReport(file: string, report: HtmlReport): void {
  writeFileAtomic(file, renderHtmlReport(report));
}

function renderTable(t: ReportTable): string {
  const cell = (c: string | number | null): string => {
    if (c === null) return '–';
    if (typeof c === 'number') return Number.isInteger(c) ? String(c) : formatNumber(c, t.digits ?? 4);
    return escapeXml(c);
  };
  let out = '<table>\n';
  if (t.caption) out += `<caption>${escapeXml(t.caption)}</caption>\n`;
  out += `<tr>${t.columns.map((c) => `<th>${escapeXml(c)}</th>`).join('')}</tr>\n`;
  for (const r of t.rows) out += `<tr>${r.map((c) => `<td>${cell(c)}</td>`).join('')}</tr>\n`;
  return out + '</table>\n';
}

/** A number with `digits` significant figures, in exponent form when very small or large. */
export function formatNumber(x: number, digits = 4): string {
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a < 1e-3 || a >= 1e7) return x.toExponential(Math.max(0, digits - 1)).replace(/\.?0+e/, 'e');
  return String(Number(x.toPrecision(digits)));
}
