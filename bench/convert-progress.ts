/**
 * Progress of `uniter convert` on a UNITER-base-sized checkpoint (random weights with the
 * official shapes, torch.save zip, ~431 MiB): when the progress lines arrive (each phase's
 * first and last count line, timed from the child's start as the parent reads them), and what
 * showing progress costs: the same conversion with --quiet (baseline) and with a line for every
 * 8 MiB chunk (UNITER_PROGRESS_INTERVAL=0, the worst case), alternated so that load from other
 * processes falls on both alike. Writes bench/results/convert-progress.json. Not run by CI.
 *
 *   node dist/bench/convert-progress.js [--runs 3] [--to-torch]
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PRESETS } from '../src/model/config.js';
import { allSpecs, initParams } from '../src/model/params.js';
import { serializeTorchZip, stateDictFromHost } from '../src/interop/torch-writer.js';
import { formatTable, loadAverage, machineInfo, repoRoot, summarize } from './harness.js';

interface Run {
  seconds: number;
  /** Per phase: count lines, and seconds from the start to its first and last line. */
  phases: Array<{ phase: string; lines: number; first: number; last: number }>;
}

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const v = Number(process.argv[i + 1]);
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} must be an integer >= 1, got '${process.argv[i + 1]}'`);
  return v;
}

/** One conversion as a child process; stderr lines are timed as they arrive. */
function convert(bin: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [bin, 'convert', ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    const phases: Run['phases'] = [];
    let pending = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      const t = (performance.now() - t0) / 1000;
      err += d.toString();
      pending += d.toString();
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        if (line.endsWith('...')) phases.push({ phase: line.slice(0, -3), lines: 0, first: NaN, last: NaN });
        else if (/^(KiB|MiB) +\d+\/\d+ /.test(line) && phases.length) {
          const p = phases[phases.length - 1];
          if (p.lines++ === 0) p.first = t;
          p.last = t;
        }
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve({ seconds: (performance.now() - t0) / 1000, phases }) : reject(new Error(`convert exited with ${code}:\n${err.slice(-2000)}`))));
  });
}

async function main(): Promise<void> {
  const root = repoRoot();
  const runs = option('runs', 3);
  const toTorch = process.argv.includes('--to-torch');
  const machine = machineInfo(root);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-bench-convert-'));
  try {
    const input = path.join(tmp, 'uniter-base-shaped.pt');
    const params = initParams(allSpecs({ ...PRESETS.base }, 'pretrain'), 0.02, 1);
    fs.writeFileSync(input, serializeTorchZip(stateDictFromHost(params)));
    const inputMiB = fs.statSync(input).size / 2 ** 20;
    const bin = path.join(root, 'bin', 'uniter.js');
    const folder = path.join(tmp, 'folder');
    const args = (out: string) => (toTorch ? ['--to-torch', folder, out] : [input, out, '--num-heads', '12']);
    if (toTorch) await convert(bin, [input, folder, '--num-heads', '12', '--quiet'], process.env);
    const quiet: Run[] = [];
    const shown: Run[] = [];
    for (let i = 0; i < runs; i++) {
      // Alternate which side goes first, so a trend in the machine's load does not favour one.
      for (const side of i % 2 ? ['shown', 'quiet'] : ['quiet', 'shown']) {
        const out = path.join(tmp, toTorch ? `out-${side}-${i}.pt` : `out-${side}-${i}`);
        if (side === 'quiet') quiet.push(await convert(bin, [...args(out), '--quiet'], process.env));
        else shown.push(await convert(bin, args(out), { ...process.env, UNITER_PROGRESS_INTERVAL: '0' }));
        fs.rmSync(out, { recursive: true, force: true });
      }
    }
    const q = summarize(quiet.map((r) => r.seconds));
    const s = summarize(shown.map((r) => r.seconds));
    const ratios = summarize(shown.map((r, i) => r.seconds / quiet[i].seconds));
    const example = shown[shown.length >> 1];
    const result = {
      bench: 'convert-progress',
      direction: toTorch ? 'model folder -> torch.save zip (--to-torch)' : 'torch.save zip -> model folder',
      input_mib: Number(inputMiB.toFixed(1)),
      runs,
      quiet_seconds: q,
      progress_seconds: s,
      progress_over_quiet: ratios,
      phases_of_one_run: example.phases.map((p) => ({ ...p, first: Number(p.first.toFixed(2)), last: Number(p.last.toFixed(2)) })),
      machine,
      load_after: loadAverage(),
    };
    console.log(formatTable([['phase', 'count lines', 'first at s', 'last at s'], ...result.phases_of_one_run.map((p) => [p.phase, String(p.lines), p.first.toFixed(2), p.last.toFixed(2)])]));
    console.log(`\n${result.direction}, ${result.input_mib} MiB, ${runs} runs each: --quiet median ${q.median.toFixed(2)} s [${q.min.toFixed(2)}..${q.max.toFixed(2)}], progress every chunk ${s.median.toFixed(2)} s [${s.min.toFixed(2)}..${s.max.toFixed(2)}], ratio median ${ratios.median.toFixed(3)} [${ratios.min.toFixed(3)}..${ratios.max.toFixed(3)}]; load ${machine.load_before.join(' ')} -> ${result.load_after.join(' ')}`);
    const file = path.join(root, 'bench', 'results', `convert-progress${toTorch ? '-to-torch' : ''}.json`);
    fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
    console.log(`wrote ${path.relative(root, file)}`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
