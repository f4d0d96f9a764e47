/** `uniter check-golden DIR [--out FILE.safetensors] [--json]`: parity with the official code's numbers. */
import { writeSafetensors } from '../engine/safetensors.js';
import { checkGolden } from '../model/golden.js';
import { checkDetectorGolden, isDetectorFixture } from '../detector/golden.js';
import type { Command } from './main.js';
import { UsageError, guard, intFlag, parseArgs, printJsonLine } from './common.js';

const USAGE = `check-golden DIR [--out FILE.safetensors] [--json] [--verbose] [--threads N]
      Compare this library's numbers with a golden fixture directory produced by the official code: every
      pre-training task with all gradients, every downstream head, IPOT, the collated batches; for a detector
      fixture, every stage of the region detector. Exit 1 when any tensor is out of tolerance.
  --out FILE     also write every computed tensor to FILE (safetensors), e.g. to diff with PyTorch
  --json         print one JSON line (failures, tensors, rows) instead of the table
  --verbose      list every row, the collated batch fields included
  --threads N    ONNX Runtime threads (default: the runtime's choice)`;

export const command: Command = {
  name: 'check-golden',
  summary: 'compare every task, head and IPOT against a golden fixture directory from the official code',
  usage: USAGE,
  run: (argv) => guard('check-golden', USAGE, () => runCheckGolden(argv)),
};

async function runCheckGolden(argv: string[]): Promise<number> {
  {
    const a = parseArgs(argv, { string: ['out', 'threads'], boolean: ['json', 'verbose'] }, USAGE);
    const dir = a.positional[0];
    if (!dir) throw new UsageError('missing fixture directory DIR');
    if (a.positional.length > 1) throw new UsageError(`unexpected argument '${a.positional[1]}'`);
    const out = a.string.out;
    const threads = a.string.threads ? intFlag(a.string.threads, '--threads', 1) : undefined;
    // A detector fixture (its manifest or config says so) is traced stage by stage instead.
    const report = isDetectorFixture(dir) ? await checkDetectorGolden(dir, { threads }) : await checkGolden(dir, { threads });
    if (out) writeSafetensors(out, report.computed);
    if (a.boolean.json) {
      printJsonLine({ failures: report.failures, tensors: report.rows.length, out: out ?? null, rows: report.rows });
    } else {
      const kind = (r: (typeof report.rows)[number]) => ('kind' in r ? r.kind : 'forward');
      const shown = a.boolean.verbose ? report.rows : report.rows.filter((r) => !r.ok || kind(r) !== 'batch');
      console.log(`${'tensor'.padEnd(72)} ${'max abs err'.padStart(12)} ${'rel err'.padStart(10)} ${'tol'.padStart(10)}  status`);
      for (const r of shown) {
        const rel = r.scale > 0 ? r.maxAbs / Math.max(kind(r) === 'grad' ? r.scale : Math.max(1, r.scale), 1e-30) : r.maxAbs;
        console.log(`${r.name.padEnd(72)} ${fmt(r.maxAbs).padStart(12)} ${fmt(rel).padStart(10)} ${fmt(r.tolerance).padStart(10)}  ${r.ok ? 'ok' : 'FAIL'}${r.note ? ` (${r.note})` : ''}`);
      }
      const batches = report.rows.filter((r) => kind(r) === 'batch');
      const batchNote = batches.length ? `, ${batches.length} batch fields compared with the project's own collate` : '';
      console.log(`\n${report.rows.length - batches.length} tensors checked${batchNote}; ${report.failures} failures.${out ? ` Wrote ${report.computed.size} tensors to ${out}` : ''}`);
    }
    return report.failures ? 1 : 0;
  }
}

function fmt(x: number): string {
  return Number.isNaN(x) ? '-' : x === 0 ? '0' : x.toExponential(2);
}
