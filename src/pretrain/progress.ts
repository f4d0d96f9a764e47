/**
 * Training progress: a live one-line display (redrawn in place on a terminal, plain periodic
 * lines otherwise, silent when quiet) and the JSON Lines training log (one record per line,
 * written through to the file as it is logged, so a crash loses nothing already logged).
 */
import * as fs from 'node:fs';
import { writeFileAtomic } from '../util/atomic.js';

export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** Total optimizer steps of the run. */
  total: number;
  /** Step the run starts from (a resumed run); rates and ETA count only this session's steps. */
  startStep?: number;
  /** Where to draw; default process.stdout. */
  stream?: ProgressStream;
  /** Print nothing at all. */
  quiet?: boolean;
  /** Force terminal (in-place) or plain-line mode; default: the stream's isTTY. */
  tty?: boolean;
  /** Plain-line mode: at most one line per this many ms (the first update and the last step always print). Default 30 s. */
  lineIntervalMs?: number;
  /** Terminal mode: at most one redraw per this many ms. Default 100 ms. */
  redrawIntervalMs?: number;
  /** Clock in ms (tests inject one). */
  now?: () => number;
  /** What is counted, when not optimizer steps: the line reads "<unit> N/M" and shows "<x> <unit>/s". */
  unit?: string;
}

export interface ProgressUpdate {
  /** Optimizer steps completed. */
  step: number;
  /** `<task>_<dataset>` of the step. */
  task?: string;
  loss?: number;
  lr?: number;
  /** Tokens (padding included) processed by this step, for the throughput. */
  tokens?: number;
}

/** Number of recent updates the throughput and ETA are averaged over. */
const RATE_WINDOW = 50;

export class ProgressDisplay {
  private readonly stream: ProgressStream;
  private readonly quiet: boolean;
  private readonly tty: boolean;
  private readonly now: () => number;
  private readonly lineIntervalMs: number;
  private readonly redrawIntervalMs: number;
  private readonly window: Array<{ t: number; step: number; tokens: number }> = [];
  private totalTokens = 0;
  private lastDraw = -Infinity;
  private last: ProgressUpdate | null = null;
  private lineOpen = false;

  constructor(private readonly options: ProgressOptions) {
    if (!(Number.isInteger(options.total) && options.total > 0)) throw new RangeError(`ProgressDisplay: total must be a positive integer, got ${options.total}`);
    this.stream = options.stream ?? process.stdout;
    this.quiet = options.quiet ?? false;
    this.tty = options.tty ?? Boolean(this.stream.isTTY);
    this.now = options.now ?? (() => performance.now());
    this.lineIntervalMs = options.lineIntervalMs ?? 30_000;
    this.redrawIntervalMs = options.redrawIntervalMs ?? 100;
    this.window.push({ t: this.now(), step: options.startStep ?? 0, tokens: 0 });
  }

  update(u: ProgressUpdate): void {
    this.totalTokens += u.tokens ?? 0;
    this.window.push({ t: this.now(), step: u.step, tokens: this.totalTokens });
    if (this.window.length > RATE_WINDOW + 1) this.window.shift();
    this.last = u;
    if (this.quiet) return;
    const t = this.now();
    // The first update and the last step always draw: a job shows it started, and how it ended.
    const isEdge = u.step >= this.options.total || this.lastDraw === -Infinity;
    if (!isEdge && t - this.lastDraw < (this.tty ? this.redrawIntervalMs : this.lineIntervalMs)) return;
    this.lastDraw = t;
    this.draw();
  }

  /** Print a message line (validation results, checkpoint saved) without garbling the live line. */
  log(message: string): void {
    if (this.quiet) return;
    if (this.tty && this.lineOpen) {
      this.stream.write(`\r\x1b[K${message}\n`);
      if (this.last) this.draw();
    } else this.stream.write(message + '\n');
  }

  /** Finish the live line (terminal mode) or print the last state (plain mode) once. */
  done(): void {
    if (this.quiet || !this.last) return;
    if (this.tty) {
      this.draw();
      this.stream.write('\n');
      this.lineOpen = false;
    } else if (this.lastDraw < this.window[this.window.length - 1].t) this.draw();
  }

  /** Tokens per second and seconds per step over the recent window (null until two points exist). */
  rates(): { tokensPerSecond: number; secondsPerStep: number } | null {
    const a = this.window[0];
    const b = this.window[this.window.length - 1];
    const dt = (b.t - a.t) / 1000;
    if (this.window.length < 2 || dt <= 0 || b.step <= a.step) return null;
    return { tokensPerSecond: (b.tokens - a.tokens) / dt, secondsPerStep: dt / (b.step - a.step) };
  }

  /** The current status text (without terminal control characters). */
  statusLine(width = Infinity): string {
    const u = this.last;
    const total = this.options.total;
    const step = u?.step ?? this.options.startStep ?? 0;
    const pct = ((100 * step) / total).toFixed(1).padStart(5);
    const unit = this.options.unit;
    const parts = [`${unit ?? 'step'} ${String(step).padStart(String(total).length)}/${total} ${pct}%`];
    if (u?.task) parts.push(u.task);
    if (u?.loss !== undefined) parts.push(`loss ${formatLoss(u.loss)}`);
    if (u?.lr !== undefined) parts.push(`lr ${u.lr.toExponential(2)}`);
    const r = this.rates();
    if (r && this.totalTokens > 0) parts.push(`${formatCount(r.tokensPerSecond)} tok/s`);
    if (r && unit !== undefined) parts.push(`${formatRate(1 / r.secondsPerStep)} ${unit}/s`);
    if (r) parts.push(`ETA ${formatDuration(Math.max(0, total - step) * r.secondsPerStep)}`);
    let text = parts.join(' | ');
    if (this.tty && Number.isFinite(width)) {
      const barWidth = Math.min(30, width - text.length - 3);
      if (barWidth >= 10) text = `${bar(step / total, barWidth)} ${text}`;
    }
    return text.length > width ? text.slice(0, Math.max(0, width - 1)) + '…' : text;
  }

  private draw(): void {
    if (this.tty) {
      const width = (this.stream.columns || 100) - 1; // a pseudo-terminal may report 0 columns
      this.stream.write(`\r\x1b[K${this.statusLine(width)}`);
      this.lineOpen = true;
    } else this.stream.write(this.statusLine() + '\n');
  }
}

function bar(fraction: number, width: number): string {
  const cells = Math.max(0, Math.min(1, fraction)) * (width - 2);
  const full = Math.floor(cells);
  return `[${'#'.repeat(full)}${'.'.repeat(width - 2 - full)}]`;
}

function formatLoss(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 100 ? x.toFixed(1) : x.toFixed(4);
}

/** 950 -> "950", 12345 -> "12.3k", 4.2e6 -> "4.20M". */
export function formatCount(x: number): string {
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)}M`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(1)}k`;
  return x.toFixed(0);
}

/** 0.123 -> "0.12", 4.56 -> "4.56", 123.4 -> "123", 12345 -> "12.3k". */
export function formatRate(x: number): string {
  return x >= 100 ? formatCount(x) : x.toFixed(2);
}

/** Seconds as "42s", "3m05s", "2h07m", "3d04h". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`;
}

// ---------------------------------------------------------------------------------------------

export type LogRecord = Record<string, unknown>;

/**
 * JSON Lines log: `log()` writes one record per line straight to the file descriptor (no
 * buffering in this process). Non-finite numbers are written as the strings "NaN",
 * "Infinity", "-Infinity" (JSON has no literal for them).
 */
export class JsonlLogger {
  private fd: number | null;

  /**
   * Open `file` for appending. With `resumeFromStep`, records whose `step` is greater are
   * removed first (they belong to steps a resumed run will redo), so curves are not doubled.
   */
  constructor(
    readonly file: string,
    options: { resumeFromStep?: number; /** Also remove these records (ones the resumed run writes again). */ redo?: (r: LogRecord) => boolean } = {},
  ) {
    if (options.resumeFromStep !== undefined && fs.existsSync(file)) {
      const kept = readJsonl(file).filter((r) => !(typeof r.step === 'number' && r.step > options.resumeFromStep!) && !options.redo?.(r));
      writeFileAtomic(file, kept.map((r) => serializeRecord(r) + '\n').join(''));
    }
    this.fd = fs.openSync(file, 'a+');
    dropPartialLastLine(this.fd, file);
  }

  log(record: LogRecord): void {
    if (this.fd === null) throw new Error(`${this.file}: log is closed`);
    fs.writeSync(this.fd, serializeRecord(record) + '\n');
  }

  close(): void {
    if (this.fd === null) return;
    try {
      fs.fsyncSync(this.fd);
    } finally {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }
}

/** A writer killed mid-line leaves a fragment; cut it so the next record starts on its own line. */
function dropPartialLastLine(fd: number, file: string): void {
  const size = fs.fstatSync(fd).size;
  if (size === 0) return;
  const tail = Buffer.alloc(Math.min(size, 1 << 16));
  fs.readSync(fd, tail, 0, tail.length, size - tail.length);
  if (tail[tail.length - 1] === 0x0a) return;
  const lastNewline = tail.lastIndexOf(0x0a);
  if (lastNewline < 0 && size > tail.length) throw new Error(`${file}: last line is over ${tail.length} bytes and unterminated; not a JSON Lines log?`);
  fs.ftruncateSync(fd, lastNewline < 0 ? 0 : size - tail.length + lastNewline + 1);
}

function serializeRecord(record: LogRecord): string {
  return JSON.stringify(record, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v));
}

/**
 * Read a JSON Lines log. Blank lines are skipped; an unparsable LAST line is dropped (a writer
 * killed mid-line); any other bad line is an error naming the file and line.
 */
export function readJsonl(file: string): LogRecord[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`${file}: cannot read log (${(e as Error).message})`);
  }
  const lines = text.split('\n');
  const out: LogRecord[] = [];
  let lastNonEmpty = lines.length - 1;
  while (lastNonEmpty >= 0 && lines[lastNonEmpty].trim() === '') lastNonEmpty--;
  for (let i = 0; i <= lastNonEmpty; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      if (i === lastNonEmpty && !text.endsWith('\n')) break;
      throw new Error(`${file}:${i + 1}: not a JSON record (${(e as Error).message})`);
    }
    if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) throw new Error(`${file}:${i + 1}: expected a JSON object, got ${line.slice(0, 60)}`);
    out.push(rec as LogRecord);
  }
  return out;
}
