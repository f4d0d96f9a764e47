/**
 * bench/extract: region-feature extraction with the real-size BUTD Faster R-CNN (ResNet-101 C4,
 * VG 1600 objects / 400 attributes, test scale 600 / 1000, 300 proposals, 10..100 boxes): our
 * Detector (ONNX Runtime) against the reference port in PyTorch (bench/extract/reference.py), on
 * the same images, in the same run, on the same threads, float32 on the CPU.
 *
 *   npm run build && node dist/bench/extract/run.js --ref DIR
 *        [--fixture /work/fixtures/frcnn-real | --detector DIR] [--sizes 600x800,750x1000]
 *        [--rounds 3] [--warmup 1] [--threads 2] [--torch-threads 1,2] [--python /usr/bin/python3]
 *        [--out bench/results/extract.json]
 *
 * --ref: the folder holding the reference's modeling_frcnn.py, utils.py, processing_image.py (or
 * FRCNN_REF_DIR; see bench/extract/README.md). --fixture: a folder made by make_fixture.py; its
 * config.json and weights.safetensors become a detector folder (config.json written by
 * writeDetectorConfig, model.safetensors a link to the weights). --detector: an existing detector
 * folder instead. The test images are synthetic (raw sizes --sizes, each resized to 600 on the
 * short side, at most 1000 on the long one).
 *
 * Each side is a long-lived child process (our worker.js, reference.py serve) so its peak RSS
 * (VmHWM / ru_maxrss) is its own; requests alternate (ours first in even rounds, PyTorch first in
 * odd ones) so that load from other processes falls on both alike. With several --torch-threads
 * values PyTorch runs once per setting (each in its own process) and the comparison uses the
 * fastest. Results: bench/results/extract.json and bench/results/extract.md.
 *
 * This bench is not part of the test suite (npm test runs dist/test only).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { VG_CONFIG, parseDetectorConfig, writeDetectorConfig } from '../../src/detector/config.js';
import { writeFileAtomic } from '../../src/util/atomic.js';
import { GiB, Server, formatTable, loadAverage, machineInfo, median, repoRoot, summarize } from '../harness.js';
import { RgbImageData, synthImage, writeImages } from './images.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

interface Options {
  ref: string | null;
  fixture: string | null;
  detector: string | null;
  sizes: [number, number][];
  rounds: number;
  warmup: number;
  threads: number;
  torchThreads: number[];
  python: string;
  out: string;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    ref: process.env.FRCNN_REF_DIR ?? null,
    fixture: null,
    detector: null,
    sizes: [[600, 800], [750, 1000]],
    rounds: 3,
    warmup: 1,
    threads: 2,
    torchThreads: [1, 2],
    python: '/usr/bin/python3',
    out: 'bench/results/extract.json',
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = (): string => {
      if (i + 1 >= argv.length) throw new Error(`bench/extract: ${k} needs a value`);
      return argv[++i];
    };
    if (k === '--ref') o.ref = v();
    else if (k === '--fixture') o.fixture = v();
    else if (k === '--detector') o.detector = v();
    else if (k === '--sizes') o.sizes = v().split(',').map((s) => s.split('x').map(Number) as [number, number]);
    else if (k === '--rounds') o.rounds = Number(v());
    else if (k === '--warmup') o.warmup = Number(v());
    else if (k === '--threads') o.threads = Number(v());
    else if (k === '--torch-threads') o.torchThreads = v().split(',').map(Number);
    else if (k === '--python') o.python = v();
    else if (k === '--out') o.out = v();
    else throw new Error(`bench/extract: unknown option ${k}`);
  }
  if (!o.ref) throw new Error('bench/extract: --ref DIR (or FRCNN_REF_DIR) is required: the folder with the reference modeling_frcnn.py, utils.py, processing_image.py');
  if (!o.fixture && !o.detector) o.fixture = '/work/fixtures/frcnn-real';
  if (o.sizes.some((s) => s.length !== 2 || !s.every((d) => Number.isInteger(d) && d > 0))) throw new Error('bench/extract: --sizes is HxW,HxW,...');
  return o;
}

/** A detector folder from a fixture folder: config.json (our writer, the fixture's values) + model.safetensors (a link). */
function detectorFromFixture(fixture: string, work: string): string {
  const dir = path.join(work, 'detector');
  fs.mkdirSync(dir, { recursive: true });
  const cfg = parseDetectorConfig(JSON.parse(fs.readFileSync(path.join(fixture, 'config.json'), 'utf8')), path.join(fixture, 'config.json'));
  writeDetectorConfig(path.join(dir, 'config.json'), cfg);
  const target = path.resolve(fixture, 'weights.safetensors');
  fs.rmSync(path.join(dir, 'model.safetensors'), { force: true });
  fs.symlinkSync(target, path.join(dir, 'model.safetensors'));
  return dir;
}

/** The size after the reference's ResizeShortestEdge (600 / 1000 for the VG config). */
function resized(h: number, w: number, short = VG_CONFIG.input.min_size_test, max = VG_CONFIG.input.max_size_test): [number, number] {
  const scale = short / Math.min(h, w);
  let [nh, nw] = h < w ? [short, scale * w] : [scale * h, short];
  if (Math.max(nh, nw) > max) {
    const s = max / Math.max(nh, nw);
    nh *= s;
    nw *= s;
  }
  return [Math.trunc(nh + 0.5), Math.trunc(nw + 0.5)];
}

interface SideResult {
  label: string;
  threads: number;
  per_image: Record<string, { seconds: number[]; median_s: number; cpu_seconds_median: number; num_boxes: number }>;
  median_s_per_image: number;
  peak_rss_bytes: number | null;
  ready: Record<string, unknown>;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const root = repoRoot();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-extract-'));
  const detector = o.detector ?? detectorFromFixture(o.fixture!, work);
  const images = new Map<string, RgbImageData>();
  o.sizes.forEach(([h, w], i) => images.set(`img${i}`, synthImage(h, w, 700 + i)));
  const inputs = path.join(work, 'inputs.safetensors');
  writeImages(inputs, images);
  const names = [...images.keys()];
  console.error(`bench/extract: detector ${detector}; images ${o.sizes.map(([h, w]) => `${h}x${w} -> ${resized(h, w).join('x')}`).join(', ')}`);
  const machine = machineInfo(root);

  const sides: { label: string; threads: number; start: () => Promise<{ server: Server; ready: Record<string, unknown> }> }[] = [
    {
      label: 'ours',
      threads: o.threads,
      start: () => Server.start('ours', process.execPath, [path.join(HERE, 'worker.js'), '--detector', detector, '--inputs', inputs, '--threads', String(o.threads)]),
    },
    ...o.torchThreads.map((t) => ({
      label: `pytorch-t${t}`,
      threads: t,
      start: () =>
        Server.start(`pytorch-t${t}`, o.python, [path.join(root, 'bench/extract/reference.py'), 'serve', '--ref', o.ref!, '--detector', detector, '--inputs', inputs, '--threads', String(t)], {
          ...process.env,
          OPENBLAS_NUM_THREADS: String(t),
        }),
    })),
  ];

  // Ours against each PyTorch setting in turn: two live processes at a time, requests alternating.
  const results = new Map<string, SideResult>();
  const errors: Record<string, string> = {};
  const ours = await sides[0].start().catch((e: Error) => {
    errors.ours = e.message;
    return null;
  });
  for (const side of sides.slice(1)) {
    let torch: { server: Server; ready: Record<string, unknown> } | null = null;
    try {
      torch = await side.start();
    } catch (e) {
      errors[side.label] = (e as Error).message;
      continue;
    }
    const pair: [string, Server, Record<string, unknown>, number][] = [[side.label, torch.server, torch.ready, side.threads]];
    if (ours) pair.unshift(['ours', ours.server, ours.ready, o.threads]);
    for (const [label, server, ready, threads] of pair) {
      if (!results.has(label)) results.set(label, { label, threads, per_image: {}, median_s_per_image: NaN, peak_rss_bytes: null, ready });
      void server;
    }
    for (const name of names) {
      for (let w = 0; w < o.warmup; w++) for (const [, server] of pair) await server.request({ op: 'detect', name });
      for (let r = 0; r < o.rounds; r++) {
        const order = r % 2 === 0 ? pair : [...pair].reverse();
        for (const [label, server] of order) {
          // ours runs once per PyTorch setting: its samples from every pairing are pooled
          const t = await server.time({ op: 'detect', name });
          const res = results.get(label)!;
          const pi = (res.per_image[name] ??= { seconds: [], median_s: NaN, cpu_seconds_median: NaN, num_boxes: t.reply.num_boxes as number });
          pi.seconds.push(Number(t.wall.toFixed(4)));
          (pi as unknown as { cpu: number[] }).cpu = [...((pi as unknown as { cpu?: number[] }).cpu ?? []), t.cpu];
          console.error(`  ${label} ${name} round ${r}: ${t.wall.toFixed(2)} s (${t.reply.num_boxes} boxes), load ${loadAverage().join(' ')}`);
        }
      }
    }
    const rss = await torch.server.request('rss');
    results.get(side.label)!.peak_rss_bytes = rss.max_rss_bytes as number;
    await torch.server.quit();
  }
  if (ours) {
    results.get('ours') && (results.get('ours')!.peak_rss_bytes = (await ours.server.request('rss')).max_rss_bytes as number);
    await ours.server.quit();
  }
  for (const res of results.values()) {
    for (const pi of Object.values(res.per_image)) {
      pi.median_s = median(pi.seconds);
      const cpu = (pi as unknown as { cpu: number[] }).cpu;
      pi.cpu_seconds_median = median(cpu);
      delete (pi as unknown as { cpu?: number[] }).cpu;
    }
    res.median_s_per_image = median(Object.values(res.per_image).map((p) => p.median_s));
  }

  const torchResults = [...results.values()].filter((r) => r.label !== 'ours');
  const bestTorch = torchResults.length ? torchResults.reduce((a, b) => (b.median_s_per_image < a.median_s_per_image ? b : a)) : null;
  const oursRes = results.get('ours') ?? null;
  const verdict =
    oursRes && bestTorch
      ? {
          speedup_vs_fastest_torch: Number((bestTorch.median_s_per_image / oursRes.median_s_per_image).toFixed(3)),
          fastest_torch_setting: bestTorch.label,
          at_least_as_fast: oursRes.median_s_per_image <= bestTorch.median_s_per_image,
          under_3_gib: oursRes.peak_rss_bytes !== null && oursRes.peak_rss_bytes < 3 * GiB,
        }
      : null;
  const report = {
    bench: 'extract',
    date: new Date().toISOString(),
    machine,
    load_after: loadAverage(),
    detector,
    fixture: o.fixture,
    images: o.sizes.map(([h, w], i) => ({ name: `img${i}`, raw_hw: [h, w], resized_hw: resized(h, w) })),
    rounds: o.rounds,
    warmup: o.warmup,
    ours_threads: o.threads,
    torch_threads: o.torchThreads,
    results: [...results.values()].map((r) => ({ ...r, seconds_summary: summarize(Object.values(r.per_image).flatMap((p) => p.seconds)) })),
    verdict,
    errors,
  };
  const outFile = path.resolve(root, o.out);
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  writeFileAtomic(outFile, JSON.stringify(report, null, 1) + '\n');
  const gib = (b: number | null): string => (b === null ? '-' : (b / GiB).toFixed(2));
  const rows: string[][] = [['side', 'threads', 's/image (median)', ...names.map((n) => `${n} s`), 'peak RSS GiB', 'boxes']];
  for (const r of results.values()) {
    rows.push([r.label, String(r.threads), r.median_s_per_image.toFixed(2), ...names.map((n) => r.per_image[n]?.median_s.toFixed(2) ?? '-'), gib(r.peak_rss_bytes), names.map((n) => String(r.per_image[n]?.num_boxes ?? '-')).join('/')]);
  }
  const table = formatTable(rows);
  const md = [
    '# bench/extract: BUTD Faster R-CNN region features, ours vs PyTorch reference',
    '',
    `${report.date}; ${machine.cpu} x ${machine.cores} cores, ${machine.memory_gib} GiB; node ${machine.node}, onnxruntime-node ${machine.onnxruntime_node}.`,
    `Images: ${report.images.map((i) => `${i.raw_hw.join('x')} -> ${i.resized_hw.join('x')}`).join(', ')}; ${o.rounds} rounds after ${o.warmup} warm-up, alternating sides.`,
    '',
    '```',
    table,
    '```',
    '',
    verdict
      ? `Ours vs the fastest PyTorch setting (${verdict.fastest_torch_setting}): ${verdict.speedup_vs_fastest_torch}x speed; at least as fast: ${verdict.at_least_as_fast ? 'yes' : 'NO'}; ours under 3 GiB: ${verdict.under_3_gib ? 'yes' : 'NO'}.`
      : `Incomplete: ${JSON.stringify(errors)}`,
    '',
  ].join('\n');
  writeFileAtomic(outFile.replace(/\.json$/, '.md'), md);
  console.log(md);
  fs.rmSync(work, { recursive: true, force: true });
}

main().catch((e: unknown) => {
  console.error((e as Error).stack ?? String(e));
  process.exit(1);
});
