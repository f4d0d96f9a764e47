/**
 * What every `uniter` command shares: the one argument parser, the usage / failure conventions and
 * the small formatting helpers.
 *
 * Conventions (every command):
 *  - exit status 0 success, 1 failure, 2 usage error (bad or missing arguments); a few commands add
 *    their own documented codes (130 interrupted);
 *  - every error goes to stderr as `uniter CMD: message`; a usage error adds the synopsis line once
 *    and points to `uniter help CMD`;
 *  - `uniter CMD --help` (= `uniter help CMD`) prints the full help, every option explained, to stdout;
 *  - `--json` prints exactly one JSON line on stdout; everything else then goes to stderr.
 */
import { ProgressDisplay, type ProgressStream } from '../pretrain/progress.js';
import type { PhaseProgress } from '../util/progress.js';

export interface ParsedArgs {
  positional: string[];
  string: Record<string, string | undefined>;
  boolean: Record<string, boolean>;
}

export interface ArgSpec {
  string?: string[];
  boolean?: string[];
}

/** Bad or missing arguments: exit status 2, with the synopsis. */
export class UsageError extends Error {}

/** `--help` / `-h` was given: the command prints `text` to stdout and exits 0. */
export class HelpRequested extends Error {
  constructor(readonly text: string) {
    super('help requested');
  }
}

/**
 * The strict parser of every command: `--name value`, `--name=value`, boolean `--name`; unknown
 * options and missing values are usage errors; `--help` / `-h` throws HelpRequested with the full
 * help (`usage` is the command's help text, starting with its synopsis line, without "uniter ").
 */
export function parseArgs(argv: string[], spec: ArgSpec, usage: string): ParsedArgs {
  const out: ParsedArgs = { positional: [], string: {}, boolean: {} };
  const strings = new Set(spec.string ?? []);
  const bools = new Set(spec.boolean ?? []);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      const undocumented = undocumentedOptions(usage, spec);
      // A programming error, caught by test/cli/help.test.ts: every option has a line of help.
      if (undocumented.length) throw new Error(`help text lacks a line for ${undocumented.map((o) => `--${o}`).join(', ')}`);
      throw new HelpRequested(`usage: uniter ${usage}`);
    }
    if (a.startsWith('--') && a.length > 2) {
      const eq = a.indexOf('=');
      const key = a.slice(2, eq > 0 ? eq : undefined);
      if (bools.has(key)) {
        if (eq > 0) throw new UsageError(`option --${key} takes no value`);
        out.boolean[key] = true;
      } else if (strings.has(key)) {
        const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
        if (v === undefined) throw new UsageError(`option --${key} needs a value`);
        out.string[key] = v;
      } else {
        throw new UsageError(`unknown option --${key}`);
      }
    } else out.positional.push(a);
  }
  return out;
}

/** Options of `spec` that the help text does not explain on a line of their own (`  --name ...`). */
export function undocumentedOptions(usage: string, spec: ArgSpec): string[] {
  // A documenting line starts with the option (after indentation); the option column ends at the
  // first run of two spaces, and may name several options ("--seeds N | --seed-list S").
  const documented = new Set<string>();
  for (const line of usage.split('\n').slice(1)) {
    const t = line.trimStart();
    if (!t.startsWith('--') && !t.startsWith('[--')) continue;
    for (const m of t.split(/\s{2,}/)[0].matchAll(/--([\w-]+)/g)) documented.add(m[1]);
  }
  return [...(spec.string ?? []), ...(spec.boolean ?? [])].filter((n) => !documented.has(n));
}

/** An integer flag value >= min, or a usage error naming the flag. */
export function intFlag(s: string, flag: string, min: number): number {
  const n = Number(s);
  if (s.trim() === '' || !Number.isInteger(n) || n < min) throw new UsageError(`${flag} must be an integer >= ${min}, got '${s}'`);
  return n;
}

/** A finite number flag value, or a usage error naming the flag. */
export function numberFlag(s: string, flag: string): number {
  const n = Number(s);
  if (s.trim() === '' || !Number.isFinite(n)) throw new UsageError(`${flag} must be a number, got '${s}'`);
  return n;
}

/** One line per split: its metrics, then how many examples were scored. */
export function formatMetrics(metrics: Record<string, Record<string, number>>, examples: Record<string, number> = {}): string[] {
  return Object.entries(metrics).map(([split, m]) => {
    const values = Object.entries(m).map(([k, v]) => `${k} ${v.toFixed(4)}`);
    if (examples[split] !== undefined) values.push(`(${examples[split]} examples)`);
    return `  ${split.padEnd(5)} ${values.join('   ')}`;
  });
}

function stripPrefix(name: string, message: string): string {
  for (const p of [`uniter ${name}: `, `${name}: `]) if (message.startsWith(p)) return message.slice(p.length);
  return message;
}

/** The usage-error text: the message, the synopsis line once, and where the full help is. */
export function usageText(name: string, usage: string, message: string): string {
  return `uniter ${name}: ${stripPrefix(name, message)}\nusage: uniter ${usage.split('\n')[0].trim()}\n(every option: uniter help ${name.split(' ')[0]})`;
}

/** Where a command writes, when not the console (commands whose tests inject streams). */
export interface CommandStreams {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

/**
 * Print what a failed command reports and return its exit status: help -> stdout, 0; a usage
 * error (UsageError, or what `isUsage` accepts) -> 2; anything else -> `uniter NAME: message`, 1.
 */
export function reportFailure(name: string, usage: string, e: unknown, isUsage: (e: unknown) => boolean = () => false, streams?: CommandStreams): number {
  const out = (s: string) => (streams ? streams.stdout.write(s + '\n') : console.log(s));
  const err = (s: string) => (streams ? streams.stderr.write(s + '\n') : console.error(s));
  if (e instanceof HelpRequested) {
    out(e.text);
    return 0;
  }
  const message = e instanceof Error ? e.message : String(e);
  if (e instanceof UsageError || isUsage(e)) {
    err(usageText(name, usage, message));
    return 2;
  }
  err(`uniter ${name}: ${stripPrefix(name, message)}`);
  return 1;
}

/** Run a command body under the conventions above. */
export async function guard(name: string, usage: string, body: () => Promise<number | void> | number | void, isUsage?: (e: unknown) => boolean): Promise<number> {
  try {
    const code = await body();
    return typeof code === 'number' ? code : 0;
  } catch (e) {
    return reportFailure(name, usage, e, isUsage);
  }
}

/** Where a command's human-readable lines go: stderr when stdout carries the --json line. */
export function sayer(json: boolean, quiet = false): (m: string) => void {
  if (quiet) return () => undefined;
  return (m) => (json ? console.error(m) : console.log(m));
}

/** The one JSON line of `--json`. */
export function printJsonLine(value: unknown): void {
  console.log(JSON.stringify(value));
}

/** Environment variable: seconds between plain progress lines when stderr is not a terminal (default 10). */
export const PROGRESS_INTERVAL_ENV = 'UNITER_PROGRESS_INTERVAL';

/** The plain-line interval in ms: UNITER_PROGRESS_INTERVAL (seconds) when set, else 10 s. */
export function progressLineIntervalMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = env[PROGRESS_INTERVAL_ENV];
  if (v === undefined || v === '') return 10_000;
  const s = Number(v);
  if (v.trim() === '' || !Number.isFinite(s) || s < 0) throw new Error(`${PROGRESS_INTERVAL_ENV} must be a number of seconds >= 0, got '${v}'`);
  return s * 1000;
}

/**
 * Progress of a job with a known amount of work, on stderr: a live line with rate and ETA on a
 * terminal, a plain line every 10 s otherwise (UNITER_PROGRESS_INTERVAL; the first and last
 * always), nothing with --quiet.
 */
export class JobProgress {
  private display: ProgressDisplay | null = null;
  private done_ = 0;
  private readonly lineIntervalMs: number;
  constructor(
    private readonly opts: { unit: string; quiet?: boolean; stream?: ProgressStream; lineIntervalMs?: number },
    private total = 0,
  ) {
    // Read (and checked) before the job starts, not at its first progress.
    this.lineIntervalMs = opts.lineIntervalMs ?? progressLineIntervalMs();
  }

  /** Set (or raise) the total; the display starts at the first advance. */
  setTotal(total: number): void {
    this.total = Math.max(total, this.done_);
  }

  /** Start the clock of the rate and ETA now (else at the first advance); draws nothing yet. */
  start(): void {
    if (this.opts.quiet || this.display || this.total <= 0) return;
    this.display = new ProgressDisplay({ total: this.total, stream: this.opts.stream ?? process.stderr, unit: this.opts.unit, lineIntervalMs: this.lineIntervalMs });
  }

  advance(by = 1): void {
    this.done_ += by;
    if (this.opts.quiet) return;
    if (this.done_ > this.total) this.total = this.done_;
    this.start();
    this.display?.update({ step: Math.min(this.done_, this.total) });
  }

  get count(): number {
    return this.done_;
  }

  /** A message line that does not garble the live line. */
  log(line: string): void {
    if (this.display) this.display.log(line);
    else (this.opts.stream ?? process.stderr).write(line + '\n');
  }

  finish(): void {
    this.display?.done();
    this.display = null;
  }
}

/**
 * Progress of a job in named phases (a library PhaseProgress), one display per phase: its name
 * on a line when it starts, then its count. Counts in the unit 'bytes' are shown in MiB (KiB
 * for phases under 1 MiB).
 */
export class PhasedProgress {
  private phase: string | null = null;
  private current: JobProgress | null = null;
  /** Bytes per shown unit in the current phase (1 for item counts). */
  private scale = 1;
  constructor(private readonly opts: { unit: string; quiet?: boolean; stream?: ProgressStream; lineIntervalMs?: number }) {
    this.opts = { ...opts, lineIntervalMs: opts.lineIntervalMs ?? progressLineIntervalMs() }; // checked before the job starts
  }

  /** A PhaseProgress: `unit` overrides the default unit given at construction. */
  update(phase: string, done: number, total: number, unit = this.opts.unit): void {
    if (this.opts.quiet || total <= 0) return;
    if (phase !== this.phase) {
      this.current?.finish();
      this.phase = phase;
      const bytes = unit === 'bytes';
      this.scale = bytes ? (total >= 2 ** 20 ? 2 ** 20 : 2 ** 10) : 1;
      (this.opts.stream ?? process.stderr).write(`${phase}...\n`);
      this.current = new JobProgress({ ...this.opts, unit: bytes ? (this.scale === 2 ** 20 ? 'MiB' : 'KiB') : unit }, 0);
    }
    const shownTotal = Math.max(1, Math.round(total / this.scale));
    const shownDone = Math.min(shownTotal, Math.round(done / this.scale));
    this.current!.setTotal(shownTotal);
    this.current!.start();
    if (shownDone > this.current!.count) this.current!.advance(shownDone - this.current!.count);
  }

  /** The update method as a standalone callback, for library options. */
  get callback(): PhaseProgress {
    return (phase, done, total, unit) => this.update(phase, done, total, unit);
  }

  finish(): void {
    this.current?.finish();
    this.current = null;
    this.phase = null;
  }
}
