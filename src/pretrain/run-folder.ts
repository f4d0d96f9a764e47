/**
 * A run folder belongs to one run. A new run refuses a folder that already holds a run's
 * output (log.jsonl, ckpt/, model/, run.json, report.html) unless told to replace it
 * (`--overwrite`: the old output is moved aside in one rename per entry and then deleted);
 * `--resume` continues the run that is there, and only when the run's identity (model, data,
 * seed, schedule) is unchanged, or the changed fields are named (`--allow-changed lr,steps`).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../util/atomic.js';

export const RUN_FILE = 'run.json';
/** What makes a folder a run's folder. */
export const RUN_ENTRIES = ['log.jsonl', 'ckpt', 'model', RUN_FILE, 'report.html'] as const;

export class RunFolderError extends Error {
  override name = 'RunFolderError';
}

/** The run-output entries present in `outDir` (empty when it is absent or holds none). */
export function runEntries(outDir: string): string[] {
  if (!fs.existsSync(outDir)) return [];
  if (!fs.statSync(outDir).isDirectory()) throw new RunFolderError(`${outDir} is a file, not a folder; choose another output folder`);
  return RUN_ENTRIES.filter((e) => fs.existsSync(path.join(outDir, e)));
}

export interface ClaimOptions {
  resume?: boolean;
  overwrite?: boolean;
  identity: Record<string, unknown>;
  /** Identity fields allowed to differ on resume. */
  allowChanged?: readonly string[];
  say?: (message: string) => void;
}

/**
 * Take `outDir` for a run. Returns the identity recorded by run.json (null for a new run, or an
 * old folder without one). A fresh run writes run.json.
 */
export function claimRunFolder(outDir: string, opts: ClaimOptions): Record<string, unknown> | null {
  const present = runEntries(outDir);
  if (!opts.resume) {
    if (present.length && !opts.overwrite) {
      throw new RunFolderError(`${outDir} already holds a run (${present.join(', ')}); pass --resume to continue it, --overwrite to replace it, or choose another output folder`);
    }
    if (present.length) {
      const trash = path.join(outDir, `.replaced-${process.pid}-${Date.now()}`);
      fs.mkdirSync(trash);
      for (const e of present) fs.renameSync(path.join(outDir, e), path.join(trash, e));
      fs.rmSync(trash, { recursive: true, force: true });
      opts.say?.(`--overwrite: replaced the previous run in ${outDir} (${present.join(', ')})`);
    }
    writeRunFile(outDir, opts.identity, []);
    return null;
  }
  const file = path.join(outDir, RUN_FILE);
  if (!fs.existsSync(file)) {
    if (!present.length) writeRunFile(outDir, opts.identity, []);
    return null;
  }
  let stored: { identity?: Record<string, unknown> };
  try {
    stored = JSON.parse(fs.readFileSync(file, 'utf8')) as { identity?: Record<string, unknown> };
  } catch (e) {
    throw new RunFolderError(`${file}: cannot read the run's identity (${(e as Error).message})`);
  }
  return stored.identity ?? null;
}

/** The identity fields whose values differ (compared as JSON), in a stable order. */
export function identityChanges(stored: Record<string, unknown>, current: Record<string, unknown>): Array<{ field: string; was: unknown; now: unknown }> {
  const fields = [...new Set([...Object.keys(stored), ...Object.keys(current)])].sort();
  return fields.filter((f) => JSON.stringify(stored[f]) !== JSON.stringify(current[f])).map((f) => ({ field: f, was: stored[f], now: current[f] }));
}

/**
 * Refuse a resume whose identity differs from the recorded one, unless every changed field is
 * allowed; an allowed change is recorded in run.json. `source` names where `stored` came from.
 */
export function checkIdentity(outDir: string, source: string, stored: Record<string, unknown>, opts: ClaimOptions): void {
  const changes = identityChanges(stored, opts.identity);
  if (!changes.length) return;
  const allowed = new Set(opts.allowChanged ?? []);
  const show = (v: unknown) => {
    const t = JSON.stringify(v) ?? 'absent';
    return t.length > 60 ? `${t.slice(0, 57)}...` : t;
  };
  const refused = changes.filter((c) => !allowed.has(c.field));
  if (refused.length) {
    throw new RunFolderError(
      `cannot resume ${outDir}: the run was started with different settings (${refused.map((c) => `${c.field}: ${show(c.was)} -> ${show(c.now)}`).join('; ')}, recorded in ${source}); ` +
        `pass --allow-changed ${refused.map((c) => c.field).join(',')} to resume anyway, or start a new run in another folder`,
    );
  }
  opts.say?.(`resuming with changed settings (allowed): ${changes.map((c) => `${c.field}: ${show(c.was)} -> ${show(c.now)}`).join('; ')}`);
  writeRunFile(outDir, opts.identity, changes.map((c) => c.field));
}

function writeRunFile(outDir: string, identity: Record<string, unknown>, changed: string[]): void {
  writeFileAtomic(path.join(outDir, RUN_FILE), JSON.stringify({ format: 'uniter-ts/run', identity, changedOnResume: changed, updatedAt: new Date().toISOString() }, null, 1) + '\n');
}
