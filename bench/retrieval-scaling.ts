/**
 * How the cost of full retrieval evaluation grows with the gallery: every caption is scored
 * against every image by a full forward pass of the single-stream model, so with a fixed number
 * of captions per image the pairs grow as images^2 (n images, c*n captions: c*n^2 pairs).
 *
 * For each gallery size (images of the synthetic world's train split, all their captions) the
 * bench scores the caption x image matrix with the evaluation code (`scoreGallery`: images
 * sorted by region count and grouped, each group's features padded once and tiled per caption).
 * Sizes whose pair count exceeds --full-pairs are timed on an evenly spaced subset of captions
 * against the whole gallery and the full time is extrapolated linearly in captions (each
 * caption costs the same against the same gallery); the output marks those rows.
 *
 * A second measurement compares batching strategies on the smallest gallery at the same rows
 * per pass: `naive` (every pair collated as its own row: features copied per pair into fresh
 * arrays) against `blocked` (the evaluator's strategy).
 *
 * Prints a table and writes a JSON file. Not run by CI; random weights (timing only).
 *
 *   node dist/bench/retrieval-scaling.js [--sizes 50,100,200,400] [--captions-per-image 5]
 *        [--preset tiny|base] [--threads 2] [--full-pairs 40000] [--group 100] [--rows 200]
 *        [--out runs/bench/retrieval-scaling.json]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { collateRows } from '../src/data/collate.js';
import { loadImage } from '../src/data/datasets.js';
import { BERT_BASE_CASED_IDS } from '../src/data/masking.js';
import { generateWorld } from '../src/data/world.js';
import { PRESETS, type UniterConfig } from '../src/model/config.js';
import { allSpecs, initParams } from '../src/model/params.js';
import { UniterRunner } from '../src/model/runner.js';
import { buildGallery, scoreGallery, type Gallery } from '../src/finetune/retrieval.js';
import { writeFileAtomic } from '../src/util/atomic.js';

interface Options {
  sizes: number[];
  captionsPerImage: number;
  preset: 'tiny' | 'base';
  threads: number;
  fullPairs: number;
  group: number;
  rows: number;
  out: string;
}

function parse(argv: string[]): Options {
  const o: Options = { sizes: [50, 100, 200, 400], captionsPerImage: 5, preset: 'tiny', threads: Math.min(2, os.availableParallelism()), fullPairs: 40_000, group: 100, rows: 200, out: path.resolve('runs/bench/retrieval-scaling.json') };
  const int = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`retrieval-scaling: ${flag} needs a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, v] = [argv[i], argv[i + 1]];
    switch (flag) {
      case '--sizes':
        o.sizes = (v ?? '').split(',').map((s) => int('--sizes', s));
        break;
      case '--captions-per-image':
        o.captionsPerImage = int(flag, v);
        break;
      case '--preset':
        if (v !== 'tiny' && v !== 'base') throw new Error(`retrieval-scaling: --preset must be tiny or base, got ${JSON.stringify(v)}`);
        o.preset = v;
        break;
      case '--threads':
        o.threads = int(flag, v);
        break;
      case '--full-pairs':
        o.fullPairs = int(flag, v);
        break;
      case '--group':
        o.group = int(flag, v);
        break;
      case '--rows':
        o.rows = int(flag, v);
        break;
      case '--out':
        if (!v) throw new Error('retrieval-scaling: --out needs a path');
        o.out = path.resolve(v);
        break;
      default:
        throw new Error(`retrieval-scaling: unknown option ${flag}`);
    }
    i++;
  }
  o.sizes.sort((a, b) => a - b);
  return o;
}

interface SizeResult {
  images: number;
  captions: number;
  pairs: number;
  /** Pairs actually scored (all of them, or captions sampled x all images). */
  scoredPairs: number;
  measuredSeconds: number;
  pairsPerSecond: number;
  /** Seconds for the whole matrix: measured, or extrapolated from the sampled captions. */
  fullSeconds: number;
  extrapolated: boolean;
  forwardPasses: number;
}

/** The gallery restricted to every k-th caption (all images kept; each image keeps >= 0 captions). */
function sampleCaptions(g: Gallery, n: number): Gallery {
  const step = g.txtIds.length / n;
  const txtIds = Array.from({ length: n }, (_, k) => g.txtIds[Math.floor(k * step)]);
  return { ...g, txtIds };
}

async function naivePairsPerSecond(runner: UniterRunner, g: Gallery, rows: number, captions: number): Promise<number> {
  const t0 = performance.now();
  let pairs = 0;
  const { cls, sep } = BERT_BASE_CASED_IDS;
  for (const t of g.txtIds.slice(0, captions)) {
    const ids = [cls, ...g.txt.get(t).input_ids, sep];
    for (let j0 = 0; j0 < g.imgIds.length; j0 += rows) {
      const seqRows = g.imgIds.slice(j0, j0 + rows).map((f) => {
        const im = loadImage(g.img, f, { task: 'bench', id: t, field: 'img_fname' });
        return { inputIds: ids, imgFeat: im.feat, imgPosFeat: im.pos, nbb: im.nbb };
      });
      await runner.run('retrieval', collateRows(seqRows).batch, { training: false, grads: false, inference: true });
      pairs += seqRows.length;
    }
  }
  return pairs / ((performance.now() - t0) / 1000);
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const maxImages = o.sizes[o.sizes.length - 1];
  // Train split = 80% of the images; every image decoded once and kept (no re-synthesis cost in the timing).
  const world = generateWorld({ preset: 'default', numImages: Math.ceil(maxImages / 0.8) + 4, captionsPerImage: o.captionsPerImage, cacheSize: maxImages + 16 });
  const txt = world.textDb('itm_world_train');
  const cfg: UniterConfig = { ...PRESETS[o.preset], img_dim: world.options.imgDim };
  const runner = new UniterRunner(cfg, initParams(allSpecs(cfg, 'retrieval'), cfg.initializer_range, 1), o.threads);
  const scoring = { imagesPerGroup: o.group, rowsPerBatch: o.rows };
  // Warm-up: session creation and first-touch allocations stay out of the timings.
  await scoreGallery(runner, sampleCaptions(buildGallery({ txt, img: world.images }, { maxImages: 8 }), 4), scoring);

  const results: SizeResult[] = [];
  for (const n of o.sizes) {
    const g = buildGallery({ txt, img: world.images }, { maxImages: n });
    if (g.imgIds.length < n) throw new Error(`retrieval-scaling: the world has only ${g.imgIds.length} training images, fewer than ${n}`);
    const pairs = g.txtIds.length * g.imgIds.length;
    const sampled = pairs > o.fullPairs ? Math.max(1, Math.floor(o.fullPairs / g.imgIds.length)) : g.txtIds.length;
    const m = await scoreGallery(runner, sampled < g.txtIds.length ? sampleCaptions(g, sampled) : g, scoring);
    const fullSeconds = (m.seconds * g.txtIds.length) / sampled;
    results.push({ images: n, captions: g.txtIds.length, pairs, scoredPairs: m.pairs, measuredSeconds: m.seconds, pairsPerSecond: m.pairs / m.seconds, fullSeconds, extrapolated: sampled < g.txtIds.length, forwardPasses: m.forwardPasses });
    process.stderr.write(`  ${n} images: ${m.pairs} pairs in ${m.seconds.toFixed(1)} s\n`);
  }

  // Growth exponent of the full time in the gallery size (least squares on log-log).
  const xs = results.map((r) => Math.log(r.images));
  const ys = results.map((r) => Math.log(r.fullSeconds));
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  const exponent = xs.length > 1 ? xs.reduce((a, x, i) => a + (x - mx) * (ys[i] - my), 0) / xs.reduce((a, x) => a + (x - mx) ** 2, 0) : NaN;

  const small = buildGallery({ txt, img: world.images }, { maxImages: o.sizes[0] });
  const strategyCaptions = Math.max(1, Math.min(small.txtIds.length, Math.floor(o.fullPairs / 4 / small.imgIds.length)));
  const blocked = await scoreGallery(runner, sampleCaptions(small, strategyCaptions), scoring);
  const naive = await naivePairsPerSecond(runner, small, o.rows, strategyCaptions);

  const report = {
    bench: 'retrieval-scaling',
    date: new Date().toISOString(),
    machine: { cpus: os.availableParallelism(), threads: o.threads, loadAverage: os.loadavg() },
    model: { preset: o.preset, hidden: cfg.hidden_size, layers: cfg.num_hidden_layers, imgDim: cfg.img_dim },
    captionsPerImage: o.captionsPerImage,
    scoring,
    sizes: results,
    growthExponent: exponent,
    strategies: { images: small.imgIds.length, captions: strategyCaptions, blockedPairsPerSecond: blocked.pairs / blocked.seconds, naivePairsPerSecond: naive },
  };
  fs.mkdirSync(path.dirname(o.out), { recursive: true });
  writeFileAtomic(o.out, JSON.stringify(report, null, 1) + '\n');

  const pad = (s: string | number, w: number) => String(s).padStart(w);
  console.log(`retrieval scoring cost vs gallery size (${o.preset} model, ${o.threads} threads, ${o.captionsPerImage} captions/image)`);
  console.log(`${pad('images', 7)} ${pad('captions', 9)} ${pad('pairs', 10)} ${pad('pairs/s', 9)} ${pad('full s', 9)}  note`);
  for (const r of results) {
    console.log(`${pad(r.images, 7)} ${pad(r.captions, 9)} ${pad(r.pairs, 10)} ${pad(r.pairsPerSecond.toFixed(0), 9)} ${pad(r.fullSeconds.toFixed(1), 9)}  ${r.extrapolated ? `extrapolated from ${r.scoredPairs} scored pairs` : 'measured'}`);
  }
  console.log(`growth of the full time ~ images^${exponent.toFixed(2)} (pairs grow as images^2 at a fixed captions/image)`);
  console.log(`batching on ${small.imgIds.length} images: blocked ${report.strategies.blockedPairsPerSecond.toFixed(0)} pairs/s, naive per-pair collation ${naive.toFixed(0)} pairs/s`);
  console.log(`results: ${o.out}`);
}

main().catch((e) => {
  console.error((e as Error).message);
  process.exitCode = 1;
});
