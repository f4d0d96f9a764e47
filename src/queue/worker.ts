/**
 * The worker side of sharded runs: a BullMQ Worker that takes jobs from a queue and runs them
 * with the handlers of this process (its own model sessions, its own stores). Any number of
 * workers on any number of machines may serve one queue; the job data names files by path, so
 * every worker must see the same paths (the same files on each machine, or a shared mount).
 *
 * Locks: a job's lock is renewed every lockMs/2 while it runs; a worker killed mid-job stops
 * renewing, and after lockMs the stalled check (run by every live worker every stalledMs) moves
 * the job back to the wait list for another worker. A job may stall `maxStalled` times before
 * BullMQ fails it.
 */
import * as os from 'node:os';
import { Worker, type Job } from 'bullmq';
import type { RedisTarget } from './redis.js';
import type { Handlers } from './queue.js';

export interface WorkerOptions {
  target: RedisTarget;
  queueName: string;
  concurrency?: number;
  /** Lock duration in ms (default 30 s). */
  lockMs?: number;
  /** Stalled-job check interval in ms (default: lockMs, at most 30 s). */
  stalledMs?: number;
  maxStalled?: number;
  handlers: Handlers;
  /** Event lines (job started, done, failed). */
  log?: (line: string) => void;
}

export interface RunningWorker {
  worker: Worker;
  /** Stop taking jobs, let the jobs in flight finish, disconnect. */
  close(): Promise<void>;
  /** Jobs completed and failed attempts so far. */
  counts(): { completed: number; failed: number };
}

export const WORKER_NAME = `${os.hostname()}/${process.pid}`;

export async function startWorker(opts: WorkerOptions): Promise<RunningWorker> {
  const log = opts.log ?? (() => undefined);
  const lockMs = opts.lockMs ?? 30_000;
  let completed = 0;
  let failed = 0;
  const processor = async (job: Job) => {
    const handler = opts.handlers[job.name] as ((d: unknown) => Promise<unknown>) | undefined;
    if (!handler) throw new Error(`this worker has no handler for jobs named '${job.name}' (it knows ${Object.keys(opts.handlers).join(', ')})`);
    const t0 = performance.now();
    log(`job ${job.id} (${job.name}, attempt ${job.attemptsMade + 1}) started`);
    const result = await handler(job.data);
    log(`job ${job.id} done in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    return result;
  };
  const worker = new Worker(opts.queueName, processor, {
    connection: { ...opts.target.options },
    concurrency: opts.concurrency ?? 1,
    lockDuration: lockMs,
    stalledInterval: opts.stalledMs ?? Math.min(lockMs, 30_000),
    maxStalledCount: opts.maxStalled ?? 2,
    autorun: false,
  });
  worker.on('completed', () => completed++);
  worker.on('failed', (job, err) => {
    failed++;
    log(`job ${job?.id ?? '?'} failed (attempt ${job?.attemptsMade ?? '?'}): ${err.message}`);
  });
  worker.on('error', (e) => log(`queue error: ${e.message}`));
  void worker.run();
  await worker.waitUntilReady();
  return {
    worker,
    close: () => worker.close(),
    counts: () => ({ completed, failed }),
  };
}
