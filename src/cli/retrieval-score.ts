/**
 * `uniter retrieval-score`: the full caption x image score matrix of a retrieval split, in shards,
 * here or on any number of `uniter worker`s through Redis; then the official results and
 * R@1/5/10 both ways. See src/queue/retrieval-shards.ts and docs/scale.md.
 */
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { setDefaultThreads } from '../engine/runtime.js';
import { ProgressDisplay } from '../pretrain/progress.js';
import { runInProcess, runOnQueue, type RunOutcome, type ShardRun } from '../queue/queue.js';
import { checkRedis, parseRedisUrl, QueueUsageError } from '../queue/redis.js';
import {
  RETRIEVAL_JOB,
  RetrievalContext,
  RunStoreError,
  ShardStore,
  assembleMatrix,
  describeRun,
  retrievalJobs,
  shardGeometry,
  shardSpecs,
  writeRetrievalOutputs,
  type RetrievalInputs,
  type RetrievalShardData,
  type RetrievalShardResult,
} from '../queue/retrieval-shards.js';
import { UsageError, intFlag, parseArgs, progressLineIntervalMs, reportFailure } from './common.js';
import type { Command } from './main.js';

export const DEFAULT_QUEUE = 'uniter';

/** Job-id prefix of a run into one --out: two coordinators of the same run into different folders do not take each other's results. */
export function queueRunKey(runId: string, outDir: string): string {
  return crypto.createHash('sha256').update(`${runId}\0${path.resolve(outDir)}`).digest('hex').slice(0, 16);
}

const USAGE = `retrieval-score --model DIR --txt-db DIR --img-db DIR --out DIR [--redis URL [--queue NAME]] [options]
      Score every caption of a txt_db against every image it names (the official retrieval protocol:
      one forward pass per pair), in shards of images x captions, then write the matrix, the official
      results and R@1/5/10 both ways into --out.

  --model DIR          model folder (config.json + model.safetensors); without a retrieval head
                       (rank_output) the ITM head's "match" logit scores (zero-shot)
  --txt-db DIR         captions (each names its image in img_fname)
  --img-db DIR         region features of those images
  --out DIR            results: run.json, shards/, shards.log, scores.f32, score_ids.json,
                       retrieval_results.json
  --redis URL          redis://host:port[/db]: enqueue the shards on BullMQ for 'uniter worker's
                       (any number, any machine that sees --model, --txt-db and --img-db at the same
                       paths); results come back through Redis. Without it: computed in this process.
  --queue NAME         queue name (default ${DEFAULT_QUEUE})
  --shard-size N       pairs per shard (default 20000): whole groups of images x as many captions as fit
  --shard-images N     images per shard (overrides the one derived from --shard-size)
  --shard-captions N   captions per shard (idem)
  --batch-size N       pairs per forward pass (default 200)
  --images-per-group N images padded together (official inf_minibatch_size; default 100)
  --max-images N       only the first N images of the split and their captions
  --threads N          threads of the in-process scorer
  --overwrite          discard shards of another run found in --out
  --json               print one JSON line at the end (metrics, counts, seconds)
  --quiet              no progress display

  Resuming: each shard's scores are stored in --out/shards/ as they arrive; rerunning the same
  command computes (or enqueues) only the missing shards. With --redis, shards finished while no
  coordinator was watching are collected from the queue. A shard that fails 3 times is reported
  with its error; the others finish and the command exits 1 (rerun to retry the failed ones).
  Exit status: 0 done; 1 some shard failed or Redis was lost; 2 bad arguments; 130 interrupted.`;

export interface RetrievalScoreDeps {
  stderr?: { write(s: string): unknown; isTTY?: boolean; columns?: number };
  stdout?: { write(s: string): unknown };
  signal?: AbortSignal;
  /** Queue polling in ms (tests). */
  pollMs?: number;
}

/** Errors of the arguments (exit 2, with the synopsis): unreadable stores or model, another run in --out, Redis targets. */
const isUsage = (e: unknown): boolean => e instanceof QueueUsageError || e instanceof RunStoreError;

/** An optional integer flag >= 1. */
function intOpt(v: string | undefined, flag: string): number | undefined {
  return v === undefined ? undefined : intFlag(v, flag, 1);
}

export async function runRetrievalScore(argv: string[], deps: RetrievalScoreDeps = {}): Promise<number> {
  const err = deps.stderr ?? process.stderr;
  const out = deps.stdout ?? process.stdout;
  const say = (s: string) => err.write(s + '\n');
  const ctx = new RetrievalContext();
  let a;
  let inputs: RetrievalInputs;
  let store: ShardStore;
  let run;
  let plan;
  let specs;
  let target = null;
  let threads: number | undefined;
  let lineIntervalMs: number;
  try {
    try {
      lineIntervalMs = progressLineIntervalMs();
      a = parseArgs(argv, { string: ['model', 'txt-db', 'img-db', 'out', 'redis', 'queue', 'shard-size', 'shard-images', 'shard-captions', 'batch-size', 'images-per-group', 'max-images', 'threads'], boolean: ['overwrite', 'json', 'quiet'] }, USAGE);
      for (const f of ['model', 'txt-db', 'img-db', 'out']) if (!a.string[f]) throw new UsageError(`--${f} DIR is required`);
      if (a.positional.length) throw new UsageError(`unexpected argument '${a.positional[0]}'`);
      if (a.string.queue !== undefined && !a.string.redis) throw new UsageError('--queue needs --redis URL');
      if (a.string.queue !== undefined && !/^[A-Za-z0-9_-]+$/.test(a.string.queue)) throw new UsageError(`--queue ${a.string.queue}: use letters, digits, '-' and '_' only`);
      threads = intOpt(a.string.threads, '--threads');
      if (a.string.redis) target = parseRedisUrl(a.string.redis);
      inputs = { model: path.resolve(a.string.model!), txtDb: path.resolve(a.string['txt-db']!), imgDb: path.resolve(a.string['img-db']!), maxImages: intOpt(a.string['max-images'], '--max-images') };
      const geomOpts = {
        shardSize: intOpt(a.string['shard-size'], '--shard-size'),
        shardImages: intOpt(a.string['shard-images'], '--shard-images'),
        shardCaptions: intOpt(a.string['shard-captions'], '--shard-captions'),
        rowsPerBatch: intOpt(a.string['batch-size'], '--batch-size'),
        imagesPerGroup: intOpt(a.string['images-per-group'], '--images-per-group'),
      };
      const label = (flag: string, e: unknown) => new QueueUsageError(`${flag} ${(inputs as unknown as Record<string, string>)[flag === '--txt-db' ? 'txtDb' : 'imgDb']}: ${(e as Error).message}`);
      try {
        plan = ctx.plan(inputs);
      } catch (e) {
        throw label(/img_db|image/.test((e as Error).message) ? '--img-db' : '--txt-db', e);
      }
      try {
        ctx.model(inputs.model);
      } catch (e) {
        throw new QueueUsageError((e as Error).message.startsWith('--model') ? (e as Error).message : `--model ${inputs.model}: ${(e as Error).message}`);
      }
      const geometry = shardGeometry(plan, geomOpts);
      specs = shardSpecs(plan, geometry);
      run = describeRun(inputs, plan, geometry);
      store = new ShardStore(path.resolve(a.string.out!), run, { overwrite: a.boolean.overwrite === true });
      if (target) await checkRedis(target);
    } catch (e) {
      return reportFailure('retrieval-score', USAGE, e, isUsage, { stdout: out, stderr: err });
    }
    if (threads !== undefined) setDefaultThreads(threads);
    const quiet = a.boolean.quiet === true;
    const where = target ? `queue '${a.string.queue ?? DEFAULT_QUEUE}' at ${target.display}` : 'this process';
    if (!quiet) say(`retrieval-score: ${run.captions} captions x ${run.images} images = ${run.captions * run.images} pairs in ${specs.length} shards of up to ${run.geometry.shardCaptions} x ${run.geometry.shardImages}, on ${where} (run ${run.runId})`);
    const bySpec = new Map(specs.map((s) => [s.id, s]));
    let display: ProgressDisplay | null = null;
    let duplicates = 0;
    let storedPairs = 0;
    const total = specs.length;
    const shardRun: ShardRun<RetrievalShardData, RetrievalShardResult> = {
      jobs: retrievalJobs(run, specs),
      isDone: (id) => store.has(id),
      accept: (id, r, info) => {
        const spec = bySpec.get(id)!;
        if (store.put(spec, r, info.worker)) storedPairs += (spec.c1 - spec.c0) * (spec.i1 - spec.i0);
        else duplicates++;
      },
      onProgress: (p) => {
        if (quiet) return;
        if (!display && p.done < total) display = new ProgressDisplay({ total, startStep: p.done, stream: err, unit: 'shards', lineIntervalMs });
        (display as ProgressDisplay | null)?.update({ step: p.done + p.failed });
      },
      say: (line) => ((display as ProgressDisplay | null) ? (display as unknown as ProgressDisplay).log(line) : say(line)),
    };
    const ac = new AbortController();
    shardRun.signal = deps.signal ?? ac.signal;
    const onSigint = () => {
      say('\nuniter retrieval-score: stopping (the shards stored so far are kept; queued shards stay on the queue); rerun the same command to resume');
      ac.abort();
    };
    if (!deps.signal) process.on('SIGINT', onSigint);
    let outcome: RunOutcome;
    try {
      outcome = target
        ? await runOnQueue(shardRun, { target, queueName: a.string.queue ?? DEFAULT_QUEUE, runKey: queueRunKey(run.runId, store.dir), pollMs: deps.pollMs })
        : await runInProcess(shardRun, { [RETRIEVAL_JOB]: (d: RetrievalShardData) => ctx.score(d) });
    } catch (e) {
      say(`uniter retrieval-score: ${(e as Error).message}`);
      return 1;
    } finally {
      if (!deps.signal) process.off('SIGINT', onSigint);
      (display as ProgressDisplay | null)?.done();
    }
    if (outcome.aborted) return 130;
    for (const f of outcome.failed) say(`uniter retrieval-score: shard ${f.id} failed after ${f.attempts} attempts: ${f.error}`);
    if (outcome.failed.length) {
      say(`uniter retrieval-score: ${outcome.failed.length} of ${total} shards failed (the other ${total - outcome.failed.length} are stored in ${store.shardDir}); rerun the same command to retry them`);
      if (a.boolean.json) out.write(JSON.stringify({ complete: false, exitCode: 1, runId: run.runId, shards: total, failed: outcome.failed, stored: outcome.stored, resumed: outcome.resumed }) + '\n');
      return 1;
    }
    const pairs = run.captions * run.images;
    const scores = assembleMatrix(plan, specs, store);
    const { metrics, files } = writeRetrievalOutputs(store.dir, plan, scores, { shards: total, run: run.runId });
    const m = (k: keyof typeof metrics) => (100 * metrics[k]).toFixed(2);
    if (!quiet) {
      say(`image retrieval R@1 ${m('img_r1')}  R@5 ${m('img_r5')}  R@10 ${m('img_r10')}`);
      say(`text retrieval  R@1 ${m('txt_r1')}  R@5 ${m('txt_r5')}  R@10 ${m('txt_r10')}   (R mean ${m('r_mean')})`);
      say(`${outcome.stored} shards computed, ${outcome.resumed} from an earlier run, in ${outcome.seconds.toFixed(1)} s; results in ${files[2]}`);
    }
    if (a.boolean.json) {
      out.write(JSON.stringify({ complete: true, exitCode: 0, runId: run.runId, metrics, captions: run.captions, images: run.images, pairs, shards: total, stored: outcome.stored, resumed: outcome.resumed, duplicates, seconds: outcome.seconds, pairsPerSecond: storedPairs / Math.max(outcome.seconds, 1e-9), files }) + '\n');
    }
    return 0;
  } finally {
    ctx.close();
  }
}

export const command: Command = {
  name: 'retrieval-score',
  summary: 'score a whole retrieval split in shards (here or on uniter workers via Redis); results and R@1/5/10',
  usage: USAGE,
  run: (argv) => runRetrievalScore(argv),
};
