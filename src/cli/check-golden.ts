/** `uniter check-golden DIR --out FILE.safetensors [--json]`: parity with the official code's numbers. */
import { writeSafetensors } from '../engine/safetensors.js';
import { checkGolden } from '../model/golden.js';
import { checkDetectorGolden, isDetectorFixture } from '../detector/golden.js';
import type { Command } from './main.js';
import { parseArgs } from './args.js';

export const command: Command = {
  name: 'check-golden',
  summary: 'compare every task, head and IPOT against a golden fixture directory from the official code',
  async run(argv) {
    const a = parseArgs(argv, { string: ['out', 'threads'], boolean: ['json', 'verbose'] }, 'check-golden DIR --out FILE.safetensors [--json] [--verbose]');
    const dir = a.positional[0];
    if (!dir) throw new Error('check-golden: missing fixture directory (usage: uniter check-golden DIR --out FILE.safetensors)');
    const out = a.string.out;
    if (!out) throw new Error('check-golden: --out FILE.safetensors is required');
    const threads = a.string.threads ? Number(a.string.threads) : undefined;
    // A detector fixture (its manifest or config says so) is traced stage by stage instead.
    const report = isDetectorFixture(dir) ? await checkDetectorGolden(dir, { threads }) : await checkGolden(dir, { threads });
    writeSafetensors(out, report.computed);
    if (a.boolean.json) {
      console.log(JSON.stringify({ failures: report.failures, tensors: report.rows.length, rows: report.rows }));
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
      console.log(`\n${report.rows.length - batches.length} tensors checked${batchNote}; ${report.failures} failures. Wrote ${report.computed.size} tensors to ${out}`);
    }
    return report.failures ? 1 : 0;
  },
};

function fmt(x: number): string {
  return Number.isNaN(x) ? '-' : x === 0 ? '0' : x.toExponential(2);
}
