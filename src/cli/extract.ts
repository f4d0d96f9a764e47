/** `uniter extract`: region features of raw images with the BUTD detector, into an img_db. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { detectorIdentity, extractRegions, ExtractError, listImages, REPORT_FILE, type ExtractEvent, type ExtractReport, type RegionDetector } from '../detector/extract.js';
import { ProgressDisplay } from '../pretrain/progress.js';
import { distributedExtractor } from '../queue/extract-shards.js';
import { checkRedis, parseRedisUrl, QueueUsageError, type RedisTarget } from '../queue/redis.js';
import { UsageError, intFlag, numberFlag, parseArgs, progressLineIntervalMs, reportFailure, type ParsedArgs } from './common.js';
import type { Command } from './main.js';

/** Where the public detector weights come from and how to turn them into a detector folder. */
export const WEIGHTS_HELP = `A detector folder holds config.json and model.safetensors, converted from the public
BUTD weights (none are downloaded by this tool):
  - the original Caffe model of the bottom-up-attention release (peteanderson80/bottom-up-attention):
    resnet101_faster_rcnn_final.caffemodel with models/vg/ResNet-101/faster_rcnn_end2end_final/test.prototxt
      uniter convert resnet101_faster_rcnn_final.caffemodel --prototxt test.prototxt DIR
  - the PyTorch state dict of the LXMERT demo's detector (unc-nlp/frcnn-vg-finetuned, pytorch_model.bin)
      uniter convert pytorch_model.bin DIR`;

const USAGE = `extract --detector DIR (IMAGES... | --images-dir DIR) --out STORE [options]
      Detect regions in JPEG, PNG or WebP images with the bottom-up-attention Faster R-CNN and write
      their features as an img_db (UNITER's layout, as scripts/convert_imgdir.py writes it) into STORE.
      Image key = file name without extension + ".npz" (foo.jpg -> foo.npz), as txt_db records name it.

  --detector DIR     detector folder (config.json + model.safetensors; see below)
  IMAGES...          image files, stored in the order given
  --images-dir DIR   every .jpg/.jpeg/.png/.webp (and other image extensions, reported if unsupported)
                     file in DIR, not recursive, sorted by name
  --out STORE        img_db directory to write: feat_th{T}_max{MAX}_min{MIN}[_compressed]/ (LMDB),
                     nbb_th{T}_max{MAX}_min{MIN}.json and extract-report.json
  --conf-th T        confidence threshold of the box-count rule (default 0.2)
  --min-bb N         at least N boxes per image (default 10)
  --max-bb N         at most N boxes per image (default 100)
                     nbb = clamp(count(conf > T), MIN, MAX), conf compared in float16
  --compress         store values as compressed npz (the _compressed variant) instead of msgpack
  --npz DIR          also write one BUTD npz per image into DIR (float16 features [n,D], norm_bb [n,6],
                     conf [n,1], soft_labels [n,K+1]), for \`uniter data build --images DIR\`
  --threads N        threads of the detector (default: the runtime's choice)
  --overwrite        replace a complete store in STORE (every image is extracted again), or discard
                     an unfinished extraction made with another detector
  --json             print one JSON line at the end (counts, store, seconds, images/s)
  --quiet            no progress display (failed images are still listed on stderr)
  --redis URL        extract on 'uniter worker's through this Redis (redis://host:port[/db]) instead
                     of here: batches of images are queued, results come back through Redis into
                     STORE/.extract-cache/, and the img_db is built here. Workers must read the
                     detector folder and the images at the same (absolute) paths. See docs/scale.md.
  --queue NAME       queue name with --redis (default uniter)
  --batch-images N   images per queued job with --redis (default 8)

  Resuming: each image's result is kept in STORE/.extract-cache/ as soon as it is done; rerunning
  the same command after an interruption (Ctrl-C stops after the image in flight) or after failures
  extracts only the images not done yet, then rebuilds the img_db from all of them.
  Images are refused, listed on stderr and in STORE/extract-report.json, and skipped when they are
  unreadable, corrupt or truncated, not JPEG/PNG/WebP, under 10 px on the shorter side, or over
  20000 px a side or 100 megapixels.
  Exit status: 0 every image extracted; 1 some image failed (the store holds the others) or the
  detector could not be loaded; 2 bad arguments, no detector folder, or a store in the way;
  130 interrupted (rerun to resume).

${WEIGHTS_HELP}`;

export interface ExtractDeps {
  /** Loads the detector (tests inject one); default: Detector.fromPretrained from src/detector/detector.ts. */
  loadDetector?: (dir: string, threads: number | undefined) => Promise<RegionDetector>;
  stderr?: { write(s: string): unknown; isTTY?: boolean; columns?: number };
  stdout?: { write(s: string): unknown };
  /** Abort signal in place of SIGINT handling (tests). */
  signal?: AbortSignal;
  /** Queue polling in ms with --redis (tests). */
  pollMs?: number;
}

/** Errors of the arguments (exit 2, with the synopsis): bad stores, Redis targets and extraction requests too. */
const isUsage = (e: unknown): boolean => e instanceof ExtractError || e instanceof QueueUsageError;

async function defaultLoadDetector(dir: string, threads: number | undefined): Promise<RegionDetector> {
  // Resolved at run time: the detector network lives in its own module (loaded only by this command).
  const spec = new URL('../detector/detector.js', import.meta.url).href;
  let mod: { Detector?: { fromPretrained(d: string, o?: { threads?: number }): Promise<RegionDetector> } };
  try {
    mod = (await import(spec)) as typeof mod;
  } catch (e) {
    throw new Error(`this build has no detector network (${spec}: ${(e as Error).message})`);
  }
  if (!mod.Detector) throw new Error(`${spec} exports no Detector`);
  return mod.Detector.fromPretrained(dir, threads === undefined ? {} : { threads });
}

/** Problems with the detector folder that the weights help answers, or null. */
function detectorFolderProblem(dir: string): string | null {
  if (!fs.existsSync(dir)) return `--detector ${dir}: no such folder`;
  if (!fs.statSync(dir).isDirectory()) return `--detector ${dir}: not a folder`;
  const names = fs.readdirSync(dir);
  if (!names.includes('config.json')) return `--detector ${dir}: no config.json in the folder`;
  if (!names.includes('model.safetensors')) return `--detector ${dir}: no weights (model.safetensors) in the folder`;
  return null;
}

function summary(r: ExtractReport): string {
  const parts = [`${r.counts.done} of ${r.counts.images} images in ${r.imgDb ?? '(no store: no image succeeded)'}`];
  if (r.counts.resumed) parts.push(`${r.counts.resumed} from an earlier run`);
  parts.push(`${r.counts.extracted} extracted in ${r.seconds.toFixed(1)} s (${r.imagesPerSecond.toFixed(2)} images/s)`);
  if (r.counts.failed) parts.push(`${r.counts.failed} failed (listed in ${path.join(r.store, REPORT_FILE)}; rerun to retry them)`);
  if (r.counts.ignored) parts.push(`${r.counts.ignored} non-image files ignored`);
  return parts.join('; ');
}

export async function runExtract(argv: string[], deps: ExtractDeps = {}): Promise<number> {
  const err = deps.stderr ?? process.stderr;
  const out = deps.stdout ?? process.stdout;
  const say = (s: string) => err.write(s + '\n');
  const fail = (e: unknown) => reportFailure('extract', USAGE, e, isUsage, { stdout: out, stderr: err });
  /** A usage error about the detector folder, then where the public weights are. */
  const detectorProblem = (message: string) => {
    const code = fail(new UsageError(message));
    say(`\n${WEIGHTS_HELP}`);
    return code;
  };
  let a: ParsedArgs;
  let lineIntervalMs: number;
  let rule: { confTh?: number; minBb?: number; maxBb?: number };
  let threads: number | undefined;
  let images: string[];
  let ignored: string[] = [];
  let redis: RedisTarget | null = null;
  let batchImages: number | undefined;
  try {
    lineIntervalMs = progressLineIntervalMs();
    a = parseArgs(argv, { string: ['detector', 'images-dir', 'out', 'conf-th', 'min-bb', 'max-bb', 'npz', 'threads', 'redis', 'queue', 'batch-images'], boolean: ['compress', 'json', 'overwrite', 'quiet'] }, USAGE);
    if (a.string.redis) redis = parseRedisUrl(a.string.redis);
    else if (a.string.queue !== undefined || a.string['batch-images'] !== undefined) throw new UsageError(`--${a.string.queue !== undefined ? 'queue' : 'batch-images'} needs --redis URL`);
    const int = (flag: string, min: number) => (a.string[flag] === undefined ? undefined : intFlag(a.string[flag]!, `--${flag}`, min));
    batchImages = int('batch-images', 1);
    rule = { confTh: a.string['conf-th'] === undefined ? undefined : numberFlag(a.string['conf-th'], '--conf-th'), minBb: int('min-bb', 0), maxBb: int('max-bb', 1) };
    threads = int('threads', 1);
    if (!a.string.out) throw new UsageError('--out STORE is required');
    const dir = a.string['images-dir'];
    if (dir !== undefined && a.positional.length) throw new UsageError('give image files or --images-dir, not both');
    if (dir !== undefined) {
      ({ images, ignored } = listImages(dir));
      if (!images.length) throw new UsageError(`--images-dir ${dir}: no image files (${ignored.length} other files)`);
    } else images = a.positional;
    if (!images.length) throw new UsageError('no images: give image files or --images-dir DIR');
    if (!a.string.detector) return detectorProblem('--detector DIR is required');
  } catch (e) {
    return fail(e);
  }
  const detDir = a.string.detector;
  const problem = detectorFolderProblem(detDir);
  if (problem) return detectorProblem(problem);
  let detector: RegionDetector | undefined;
  if (redis) {
    try {
      await checkRedis(redis);
    } catch (e) {
      return fail(e);
    }
    // Workers open the files by the paths in the jobs.
    images = images.map((f) => path.resolve(f));
  } else {
    try {
      detector = await (deps.loadDetector ?? defaultLoadDetector)(detDir, threads);
    } catch (e) {
      say(`uniter extract: cannot load the detector from ${detDir}: ${(e as Error).message}\n\n${WEIGHTS_HELP}`);
      return 1;
    }
  }

  const quiet = a.boolean.quiet === true;
  let display: ProgressDisplay | null = null;
  const onStart = (info: { total: number; already: number }) => {
    if (!quiet && info.already < info.total) display = new ProgressDisplay({ total: info.total, startStep: info.already, stream: err, unit: 'images', lineIntervalMs });
  };
  const onImage = (e: ExtractEvent) => {
    if (e.status === 'cached') return;
    if (e.status === 'failed') {
      const line = `${e.file}: ${e.reason}`;
      if (display) display.log(line);
      else say(line);
    }
    display?.update({ step: e.index });
  };

  const ac = new AbortController();
  const signal = deps.signal ?? ac.signal;
  let interrupts = 0;
  const onSigint = () => {
    interrupts++;
    if (interrupts > 1) process.exit(130);
    say('\nuniter extract: stopping after the image in flight (Ctrl-C again to quit now); rerun the same command to resume');
    ac.abort();
  };
  if (!deps.signal) process.on('SIGINT', onSigint);
  let report: ExtractReport;
  try {
    report = await extractRegions({
      detector,
      remote: redis ? distributedExtractor({ detectorDir: path.resolve(detDir), runTag: path.resolve(a.string.out), batchImages, queue: { target: redis, queueName: a.string.queue ?? 'uniter', pollMs: deps.pollMs }, say: (l) => (display ? (display as ProgressDisplay).log(l) : say(l)) }) : undefined,
      detectorId: detectorIdentity(detDir),
      images,
      ignored,
      out: a.string.out,
      rule,
      compress: a.boolean.compress === true,
      npzDir: a.string.npz,
      overwrite: a.boolean.overwrite === true,
      signal,
      onImage,
      onStart,
    });
  } catch (e) {
    return fail(e);
  } finally {
    if (!deps.signal) process.off('SIGINT', onSigint);
    (display as ProgressDisplay | null)?.done();
  }
  const code = report.aborted ? 130 : report.complete ? 0 : 1;
  if (report.aborted) say(`uniter extract: interrupted with ${report.counts.done} of ${report.counts.images} images done (kept in ${path.join(report.store, '.extract-cache')}); rerun the same command to resume`);
  else say(`uniter extract: ${summary(report)}`);
  if (a.boolean.json) {
    out.write(
      JSON.stringify({
        complete: report.complete,
        aborted: report.aborted,
        exitCode: code,
        store: report.store,
        imgDb: report.imgDb,
        nbbJson: report.nbbJson,
        npzDir: report.npzDir,
        report: report.aborted ? null : path.join(report.store, REPORT_FILE),
        ...report.counts,
        seconds: report.seconds,
        imagesPerSecond: report.imagesPerSecond,
      }) + '\n',
    );
  }
  return code;
}

export const command: Command = {
  name: 'extract',
  summary: 'detect regions in images (BUTD Faster R-CNN) and write their features as an img_db',
  usage: USAGE,
  run: (argv) => runExtract(argv),
};
