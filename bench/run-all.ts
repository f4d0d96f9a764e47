/**
 * Every benchmark, one after the other, then docs/benchmarks.md (`npm run bench`):
 *
 *   engine     bench/engine/run.ts          BERT-base encoder stack, engine vs PyTorch
 *   uniter     bench/uniter/run.ts          UNITER-base training / inference / IPOT / memory /
 *                                           scaling vs PyTorch, and bench/data-loader.ts
 *   retrieval  bench/retrieval-scaling.ts   full retrieval evaluation cost against gallery size
 *
 *   node dist/bench/run-all.js [--only engine,uniter,retrieval] [--quick] [--results DIR] [--docs DIR]
 *
 * Results go to bench/results/<name>.json (and run-all.json: the commands, times and exit
 * codes), the page to docs/. `--quick` is a smoke test of the whole chain (2 layers, one round,
 * fewer sizes) that writes to a temporary directory unless --results/--docs are given, so the
 * real results are never replaced by quick numbers. A benchmark that fails does not stop the
 * others; the exit code is 1 if any failed.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeFileAtomic } from '../src/util/atomic.js';
import { repoRoot } from './harness.js';
import { writeBenchmarksDoc } from './report.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BENCHES = ['engine', 'uniter', 'retrieval'] as const;
type BenchName = (typeof BENCHES)[number];

function benchArgs(name: BenchName, results: string, quick: boolean): string[] {
  switch (name) {
    case 'engine':
      return [path.join(HERE, 'engine/run.js'), '--out', path.join(results, 'engine.json'), ...(quick ? ['--layers', '2', '--rounds', '1', '--warmup', '1', '--torch-settings', '1x2'] : [])];
    case 'uniter':
      return [
        path.join(HERE, 'uniter/run.js'),
        '--out',
        path.join(results, 'uniter.json'),
        ...(quick ? ['--layers', '2', '--rounds', '1', '--train-examples', '16', '--infer-batches', '1,8', '--scaling-batches', '4,8', '--scaling-examples', '4', '--scaling-rounds', '1'] : []),
      ];
    case 'retrieval':
      return [path.join(HERE, 'retrieval-scaling.js'), '--out', path.join(results, 'retrieval-scaling.json'), ...(quick ? ['--sizes', '20,40', '--preset', 'tiny'] : [])];
  }
}

function run(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: 'inherit' });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

async function main(): Promise<void> {
  const root = repoRoot();
  const argv = process.argv.slice(2);
  const value = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    if (i < 0) return undefined;
    const v = argv[i + 1];
    if (!v || v.startsWith('--')) throw new Error(`run-all: ${flag} needs a value`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--quick') continue;
    if (['--only', '--results', '--docs'].includes(argv[i])) {
      i++;
      continue;
    }
    throw new Error(`run-all: unknown option '${argv[i]}' (expected --only, --quick, --results, --docs)`);
  }
  const quick = argv.includes('--quick');
  const only = value('--only')?.split(',') ?? [...BENCHES];
  const unknown = only.filter((n) => !(BENCHES as readonly string[]).includes(n));
  if (unknown.length) throw new Error(`run-all: --only takes ${BENCHES.join(', ')}; got '${unknown.join(',')}'`);
  const scratch = quick ? fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-bench-quick-')) : null;
  const results = path.resolve(value('--results') ?? scratch ?? path.join(root, 'bench/results'));
  const docs = path.resolve(value('--docs') ?? scratch ?? path.join(root, 'docs'));
  fs.mkdirSync(results, { recursive: true });

  const summaryFile = path.join(results, 'run-all.json');
  const previous = (fs.existsSync(summaryFile) ? JSON.parse(fs.readFileSync(summaryFile, 'utf8')) : {}) as { commands?: Record<string, string> };
  const record: { commands: Record<string, string>; runs: Array<{ bench: string; started: string; seconds: number; exit_code: number }> } = {
    commands: { ...(previous.commands ?? {}) },
    runs: [],
  };
  const failed: string[] = [];
  for (const name of BENCHES.filter((n) => only.includes(n))) {
    const args = benchArgs(name, results, quick);
    const command = ['node', ...args.map((a) => path.relative(root, a) || a)].join(' ');
    console.log(`\n=== ${name}: ${command}`);
    const started = new Date();
    const code = await run(args);
    record.runs.push({ bench: name, started: started.toISOString(), seconds: (Date.now() - started.getTime()) / 1000, exit_code: code });
    if (code === 0) record.commands[name] = command;
    else failed.push(`${name} (exit code ${code})`);
  }
  writeFileAtomic(summaryFile, `${JSON.stringify(record, null, 2)}\n`);
  for (const f of writeBenchmarksDoc(results, docs)) console.log(`wrote ${path.relative(process.cwd(), f) || f}`);
  if (failed.length) {
    console.error(`run-all: failed: ${failed.join(', ')}`);
    process.exit(1);
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : String(e));
  process.exit(1);
});
