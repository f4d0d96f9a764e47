/**
 * `uniter ablate`: the paper's pre-training ablation (Table 2) on the synthetic world. Pre-trains
 * each variant, fine-tunes it on VQA, retrieval, NLVR2 and referring expressions, and writes the
 * table (mean ± std over seeds, Meta-Sum), a chart and the results JSON. Rerunning with the same
 * --out resumes: finished cells and phases are read back, not recomputed.
 */
import * as path from 'node:path';
import { setDefaultThreads } from '../engine/runtime.js';
import { runAblation, type AblationResult } from '../ablate/ablation.js';
import { finding, markdownTable } from '../ablate/table.js';
import { DOWNSTREAM_TASKS, VARIANTS, parseVariantList, type DownstreamName } from '../ablate/variants.js';
import type { WorldPreset } from '../data/world.js';
import { UsageError, guard, intFlag, parseArgs, printJsonLine, sayer } from './common.js';
import type { Command } from './main.js';

/**
 * Defaults: 1000 pre-training steps, enough for MLM to ground words in regions on the main job's
 * world (ITM starts only after 2000-3000 steps, which 21 cells cannot afford here). Measured with
 * three seed processes and the main job sharing 2 cores (mean CPU seconds per run, tiny model):
 * pre-training 229 s, fine-tuning VQA 12, retrieval 19, NLVR2 12, RE 14 (val and test evaluation
 * included). Per seed: 6 pre-trainings and 28 fine-tunings, about 26 CPU-minutes; the whole default
 * run took about 65 minutes of wall time that way.
 */
export const ABLATION_DEFAULTS = {
  seeds: 3,
  pretrainSteps: 1000,
  finetuneSteps: { vqa: 40, retrieval: 15, nlvr2: 30, re: 30 } as Record<DownstreamName, number>,
  out: path.join('runs', 'ablation'),
};

const USAGE = `ablate [--seeds N | --seed-list S,...] [--variants LIST] [--pretrain-steps N] [--finetune-steps N|TASK=N,...] [--out DIR] [--threads N] [--world default|tiny] [--json] [--quiet]
      --seeds N            seeds 1..N (default ${ABLATION_DEFAULTS.seeds}); each seed has its own world and initialization
      --seed-list S,...    exactly these seeds (e.g. '3' in a second process sharing --out, so seeds run in parallel)
      --variants LIST      comma-separated, in table order (default: all):
                           ${VARIANTS.map((v) => v.name).join(', ')}
      --pretrain-steps N   pre-training steps of every pre-trained variant (default ${ABLATION_DEFAULTS.pretrainSteps})
      --finetune-steps S   fine-tuning steps: one number for every task, or TASK=N pairs for some
                           (tasks ${DOWNSTREAM_TASKS.join(', ')}; default ${Object.entries(ABLATION_DEFAULTS.finetuneSteps).map(([t, n]) => `${t}=${n}`).join(',')})
      --out DIR            output directory (default ${ABLATION_DEFAULTS.out}); a rerun with the same DIR resumes
      --world PRESET       synthetic world preset (default 'default'; 'tiny' for a quick check)
      --threads N          ONNX Runtime threads of each run (default: the runtime's choice)
      --json               print one JSON line at the end (out, files, variants, cells run and reused); the rest goes to stderr
      --quiet              no progress lines and no table`;

/** '3' or '2,3': distinct seeds >= 1, in the order given. */
export function parseSeedList(s: string): number[] {
  const seeds = s.split(',').map((part) => intFlag(part.trim(), '--seed-list', 1));
  const dup = seeds.find((x, i) => seeds.indexOf(x) !== i);
  if (dup !== undefined) throw new UsageError(`--seed-list: seed ${dup} is listed twice`);
  return seeds;
}

/** `N` for every task, or `task=N,...` over the defaults. */
export function parseFinetuneSteps(s: string): Record<DownstreamName, number> {
  if (/^\d+$/.test(s.trim())) {
    const n = intFlag(s.trim(), '--finetune-steps', 1);
    return Object.fromEntries(DOWNSTREAM_TASKS.map((t) => [t, n])) as Record<DownstreamName, number>;
  }
  const out = { ...ABLATION_DEFAULTS.finetuneSteps };
  for (const part of s.split(',')) {
    const m = /^\s*([a-z0-9]+)\s*=\s*(\S+)\s*$/.exec(part);
    if (!m) throw new UsageError(`--finetune-steps: expected N or TASK=N pairs separated by commas, got '${part}'`);
    if (!(DOWNSTREAM_TASKS as readonly string[]).includes(m[1])) throw new UsageError(`--finetune-steps: unknown task '${m[1]}' (expected ${DOWNSTREAM_TASKS.join(', ')})`);
    out[m[1] as DownstreamName] = intFlag(m[2], `--finetune-steps ${m[1]}`, 1);
  }
  return out;
}

function asUsage<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export async function runAblateCli(argv: string[], say: (m: string) => void = (m) => process.stderr.write(m + '\n')): Promise<AblationResult> {
  const a = parseArgs(argv, { string: ['seeds', 'seed-list', 'variants', 'pretrain-steps', 'finetune-steps', 'out', 'threads', 'world'], boolean: ['json', 'quiet'] }, USAGE);
  if (a.positional.length) throw new UsageError(`unexpected argument '${a.positional[0]}'`);
  if (a.string.seeds !== undefined && a.string['seed-list'] !== undefined) throw new UsageError('give --seeds or --seed-list, not both');
  const seedCount = a.string.seeds !== undefined ? intFlag(a.string.seeds, '--seeds', 1) : ABLATION_DEFAULTS.seeds;
  const variants = a.string.variants !== undefined ? asUsage(() => parseVariantList(a.string.variants!)) : [...VARIANTS];
  const pretrainSteps = a.string['pretrain-steps'] !== undefined ? intFlag(a.string['pretrain-steps'], '--pretrain-steps', 1) : ABLATION_DEFAULTS.pretrainSteps;
  const finetuneSteps = a.string['finetune-steps'] !== undefined ? parseFinetuneSteps(a.string['finetune-steps']) : { ...ABLATION_DEFAULTS.finetuneSteps };
  const threads = a.string.threads !== undefined ? intFlag(a.string.threads, '--threads', 1) : undefined;
  const world = (a.string.world ?? 'default') as WorldPreset;
  if (world !== 'default' && world !== 'tiny') throw new UsageError(`--world must be 'default' or 'tiny', got '${a.string.world}'`);
  if (threads !== undefined) setDefaultThreads(threads);
  const outDir = path.resolve(a.string.out ?? ABLATION_DEFAULTS.out);
  const tell = a.boolean.quiet ? () => undefined : say;
  const seeds = a.string['seed-list'] !== undefined ? parseSeedList(a.string['seed-list']) : Array.from({ length: seedCount }, (_, i) => i + 1);
  tell(`uniter ablate: ${variants.length} variants x ${seeds.length} seeds; pre-training ${pretrainSteps} steps, fine-tuning ${Object.entries(finetuneSteps).map(([t, n]) => `${t} ${n}`).join(', ')} steps; output in ${outDir}`);
  return runAblation({ outDir, seeds, variants, pretrainSteps, finetuneSteps, world, threads, log: tell });
}

export const command: Command = {
  name: 'ablate',
  summary: 'pre-training ablation (paper Table 2) on the synthetic world: task scores and Meta-Sum over seeds',
  usage: USAGE,
  run: (argv) =>
    guard('ablate', USAGE, async () => {
      const json = argv.includes('--json');
      const say = sayer(json);
      const r = await runAblateCli(argv, (m) => process.stderr.write(m + '\n'));
      if (!argv.includes('--quiet')) {
        say(`\n${markdownTable(r.report)}\n\n${finding(r.report)}\n`);
        say(`cells: ${r.ran} run now, ${r.reused} read from earlier runs`);
        for (const [k, f] of Object.entries(r.files)) say(`${k}: ${f}`);
      }
      if (json) printJsonLine({ out: path.dirname(r.files.json), files: r.files, variants: r.report.variants, ran: r.ran, reused: r.reused });
      return 0;
    }),
};
