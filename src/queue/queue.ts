/**
 * Sharded runs on a BullMQ queue (Redis), or in this process: the coordinator side.
 *
 * A run is a fixed list of shards (jobs with a stable id). The caller says which shards already
 * have a stored result (`isDone`) and stores each new result (`accept`, called at most once per
 * shard, by this process only). The same handlers compute a shard in-process and on workers, so
 * both ways give the same results.
 *
 * On the queue:
 * - job id = `${runKey}.${shardId}`; BullMQ ignores an add whose id exists, so a rerun (or two
 *   coordinators) never enqueues a shard twice while its job lives;
 * - results travel back as the job's return value; the coordinator stores them (atomically,
 *   write-once) and then removes the job, so a shared filesystem is not needed;
 * - a worker that dies mid-shard loses its lock; BullMQ's stalled check moves the job back to
 *   the wait list and another worker computes it (the dead one never returns a value, so the
 *   result is stored once);
 * - a job that throws is retried (`attempts`, default 3); one that fails every attempt stays
 *   in BullMQ's failed set and is reported with its error once every other shard has finished;
 *   a rerun of the coordinator re-enqueues it;
 * - a rerun first looks at each missing shard's job: completed -> its value is taken, failed ->
 *   enqueued afresh, waiting or active -> left to the workers, absent -> enqueued;
 * - lost Redis connections are retried for `redisWaitMs` (Redis restarted with AOF keeps the
 *   queue); past that the run stops and can be resumed by rerunning it.
 */
import { Queue, QueueEvents, type Job } from 'bullmq';
import type { RedisTarget } from './redis.js';

export interface ShardJob<D> {
  /** Stable id of the shard within its run (letters, digits, '-', '_'). */
  id: string;
  /** Handler name (the BullMQ job name). */
  name: string;
  data: D;
}

export interface ShardRun<D, R> {
  jobs: ReadonlyArray<ShardJob<D>>;
  /** Whether the shard's result is already stored (an earlier run). */
  isDone(id: string): boolean;
  /** Store a result (validate it; throw to count it as a failure). Called at most once per shard. */
  accept(id: string, result: R, info: { worker?: string }): void;
  onProgress?(p: RunProgress): void;
  /** Messages for the user (lost connections, no workers, ...). */
  say?(line: string): void;
  signal?: AbortSignal;
}

export interface RunProgress {
  total: number;
  /** Stored, earlier runs included. */
  done: number;
  failed: number;
}

export interface FailedShard {
  id: string;
  error: string;
  attempts: number;
}

export interface RunOutcome {
  total: number;
  /** Stored before this run started. */
  resumed: number;
  /** Stored by this run. */
  stored: number;
  failed: FailedShard[];
  aborted: boolean;
  seconds: number;
}

export const DEFAULT_ATTEMPTS = 3;
const ID_RE = /^[A-Za-z0-9_-]+$/;

function checkIds(jobs: ReadonlyArray<ShardJob<unknown>>): void {
  const seen = new Set<string>();
  for (const j of jobs) {
    if (!ID_RE.test(j.id)) throw new Error(`shard id '${j.id}' must use letters, digits, '-' and '_' only`);
    if (seen.has(j.id)) throw new Error(`shard id '${j.id}' appears twice`);
    seen.add(j.id);
  }
}

/** What a shard's computation needs: a handler per job name. */
export type Handlers = Record<string, (data: never) => Promise<unknown>>;

/** Run every missing shard here, one after another, `attempts` tries each. */
export async function runInProcess<D, R>(run: ShardRun<D, R>, handlers: Handlers, opts: { attempts?: number } = {}): Promise<RunOutcome> {
  const t0 = performance.now();
  checkIds(run.jobs);
  const attempts = opts.attempts ?? DEFAULT_ATTEMPTS;
  const todo = run.jobs.filter((j) => !run.isDone(j.id));
  const resumed = run.jobs.length - todo.length;
  const failed: FailedShard[] = [];
  let stored = 0;
  let aborted = false;
  const progress = () => run.onProgress?.({ total: run.jobs.length, done: resumed + stored, failed: failed.length });
  progress();
  for (const job of todo) {
    if (run.signal?.aborted) {
      aborted = true;
      break;
    }
    const handler = handlers[job.name] as ((d: D) => Promise<R>) | undefined;
    if (!handler) throw new Error(`no handler for job '${job.name}'`);
    let error = '';
    let ok = false;
    for (let a = 1; a <= attempts && !ok; a++) {
      try {
        const r = await handler(job.data);
        run.accept(job.id, r, { worker: 'in-process' });
        ok = true;
      } catch (e) {
        error = (e as Error).message;
      }
    }
    if (ok) stored++;
    else failed.push({ id: job.id, error, attempts });
    progress();
  }
  return { total: run.jobs.length, resumed, stored, failed, aborted, seconds: (performance.now() - t0) / 1000 };
}

export interface QueueRunOptions {
  target: RedisTarget;
  queueName: string;
  /** Prefix of the job ids: one per run (e.g. a hash of what the run computes). */
  runKey: string;
  attempts?: number;
  /** How often the coordinator looks at the queue (default 250 ms). */
  pollMs?: number;
  /** How often every pending job's state is checked, besides the completion events (default 5 s). */
  reconcileMs?: number;
  /** Give up after Redis has been unreachable this long (default 5 min). */
  redisWaitMs?: number;
  /** Backoff between attempts of a failing job (default 1 s). */
  backoffMs?: number;
}

/** Job data and options as enqueued (exported for tests and the bench). */
export function jobOptions(opts: Pick<QueueRunOptions, 'attempts' | 'backoffMs'>, jobId: string) {
  return { jobId, attempts: opts.attempts ?? DEFAULT_ATTEMPTS, backoff: { type: 'fixed', delay: opts.backoffMs ?? 1000 }, removeOnComplete: false, removeOnFail: false };
}

/** Run every missing shard on the queue's workers; see the file comment. */
export async function runOnQueue<D, R>(run: ShardRun<D, R>, opts: QueueRunOptions): Promise<RunOutcome> {
  const t0 = performance.now();
  checkIds(run.jobs);
  if (!ID_RE.test(opts.runKey)) throw new Error(`run key '${opts.runKey}' must use letters, digits, '-' and '_' only`);
  const say = run.say ?? (() => undefined);
  const pollMs = opts.pollMs ?? 250;
  const reconcileMs = opts.reconcileMs ?? 5000;
  const redisWaitMs = opts.redisWaitMs ?? 300_000;
  const jobId = (id: string) => `${opts.runKey}.${id}`;
  const byJobId = new Map(run.jobs.map((j) => [jobId(j.id), j]));

  const queue = new Queue(opts.queueName, { connection: { ...opts.target.options, maxRetriesPerRequest: 1 } });
  const events = new QueueEvents(opts.queueName, { connection: { ...opts.target.options } });
  let redisDown: number | null = null;
  const onError = (e: Error) => {
    if (redisDown === null) {
      redisDown = performance.now();
      say(`lost the connection to Redis at ${opts.target.display} (${e.message}); retrying for up to ${Math.round(redisWaitMs / 1000)} s`);
    }
  };
  queue.on('error', onError);
  events.on('error', onError);
  const flagged = new Set<string>();
  const flag = ({ jobId: id }: { jobId: string }) => {
    if (byJobId.has(id)) flagged.add(id);
  };
  events.on('completed', flag);
  events.on('failed', flag);

  const pending = new Set<string>();
  const failed: FailedShard[] = [];
  let stored = 0;
  let resumed = 0;
  let aborted = false;
  const progress = () => run.onProgress?.({ total: run.jobs.length, done: resumed + stored, failed: failed.length });

  /**
   * Look at one pending shard's job. `startup`: a failed job is from an earlier run and is
   * enqueued afresh; later it is this run's final failure. A job that is not there (never
   * enqueued, removed by someone else, or lost with a Redis that kept no data) is 'missing' and
   * gets enqueued again: computing a shard twice is harmless, it is stored once.
   */
  const inspect = async (jid: string, job: Job | undefined, startup: boolean): Promise<'gone' | 'pending' | 'missing'> => {
    const shard = byJobId.get(jid)!;
    if (!job) return 'missing';
    const state = await job.getState();
    if (state === 'completed') {
      if (pending.has(jid)) {
        pending.delete(jid);
        // A Job object read before the job completed carries no return value: read it afresh.
        const done = job.returnvalue == null ? ((await queue.getJob(jid)) ?? job) : job;
        try {
          run.accept(shard.id, done.returnvalue as R, { worker: (done.returnvalue as { worker?: string } | null)?.worker });
          stored++;
        } catch (e) {
          failed.push({ id: shard.id, error: `its result was refused: ${(e as Error).message}`, attempts: job.attemptsMade });
        }
      }
      await job.remove();
      return 'gone';
    }
    if (state === 'failed') {
      if (startup) {
        // A final failure of an earlier run: try again from scratch.
        await job.remove();
        return 'missing';
      }
      if (pending.delete(jid)) failed.push({ id: shard.id, error: job.failedReason || '(no error message)', attempts: job.attemptsMade });
      return 'gone';
    }
    return state === 'unknown' ? 'missing' : 'pending';
  };

  const retrying = async <T>(what: () => Promise<T>): Promise<T> => {
    for (;;) {
      try {
        const v = await what();
        if (redisDown !== null) {
          say(`Redis at ${opts.target.display} is back after ${((performance.now() - redisDown) / 1000).toFixed(1)} s`);
          redisDown = null;
        }
        return v;
      } catch (e) {
        onError(e as Error);
        if (performance.now() - (redisDown ?? performance.now()) > redisWaitMs) {
          throw new Error(`Redis at ${opts.target.display} has been unreachable for ${Math.round(redisWaitMs / 1000)} s (${(e as Error).message}); the shards stored so far are kept: rerun the same command to resume`);
        }
        await sleep(Math.min(1000, pollMs * 4));
      }
    }
  };

  /** Check pending jobs (in parallel, 64 at a time); returns those to enqueue. */
  const sweep = async (ids: string[], startup: boolean): Promise<string[]> => {
    const missing: string[] = [];
    for (let k = 0; k < ids.length; k += 64) {
      const chunk = ids.slice(k, k + 64);
      const jobs = await Promise.all(chunk.map((id) => queue.getJob(id) as Promise<Job | undefined>));
      const states = await Promise.all(chunk.map((id, n) => inspect(id, jobs[n], startup)));
      states.forEach((s, n) => s === 'missing' && missing.push(chunk[n]));
    }
    return missing;
  };

  try {
    await retrying(() => queue.waitUntilReady());
    for (const j of run.jobs) {
      if (run.isDone(j.id)) resumed++;
      else pending.add(jobId(j.id));
    }
    progress();
    // Harvest what finished while no coordinator watched; enqueue what is not on the queue.
    const enqueue = async (missing: string[]) => {
      for (let k = 0; k < missing.length; k += 500) {
        const chunk = missing.slice(k, k + 500).map((jid) => {
          const s = byJobId.get(jid)!;
          return { name: s.name, data: s.data, opts: jobOptions(opts, jid) };
        });
        await retrying(() => queue.addBulk(chunk));
      }
    };
    await enqueue(await retrying(() => sweep([...pending], true)));
    progress();
    let lastReconcile = performance.now();
    let lastWorkerCheck = performance.now();
    let warnedNoWorker = false;
    while (pending.size > 0) {
      if (run.signal?.aborted) {
        aborted = true;
        break;
      }
      await sleep(pollMs);
      const now = performance.now();
      const full = now - lastReconcile >= reconcileMs;
      const ids = full ? [...pending] : [...flagged].filter((id) => pending.has(id));
      flagged.clear();
      if (ids.length) {
        const lost = await retrying(() => sweep(ids, false));
        if (lost.length) say(`${lost.length} queued shards are no longer on the queue (Redis restarted without persistence, or removed); enqueued again`);
        await enqueue(lost);
      }
      if (full) lastReconcile = now;
      if (now - lastWorkerCheck >= 10_000 && pending.size > 0) {
        lastWorkerCheck = now;
        const workers = await retrying(() => queue.getWorkersCount());
        if (workers === 0 && !warnedNoWorker) {
          say(`waiting: no worker is connected to queue '${opts.queueName}' (start one with: uniter worker --redis ${opts.target.display} --queue ${opts.queueName})`);
          warnedNoWorker = true;
        } else if (workers > 0) warnedNoWorker = false;
      }
      progress();
    }
  } finally {
    await Promise.allSettled([events.close(), queue.close()]);
  }
  return { total: run.jobs.length, resumed, stored, failed, aborted, seconds: (performance.now() - t0) / 1000 };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
