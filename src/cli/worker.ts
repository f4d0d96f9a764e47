/**
 * `uniter worker --redis URL`: serve the shards of `uniter retrieval-score --redis` and
 * `uniter extract --redis` from a BullMQ queue, with this process's own model sessions.
 */
import { setDefaultThreads } from '../engine/runtime.js';
import { parseRedisUrl, checkRedis, QueueUsageError } from '../queue/redis.js';
import { RETRIEVAL_JOB, RetrievalContext, type RetrievalShardData } from '../queue/retrieval-shards.js';
import { EXTRACT_JOB, ExtractContext, type ExtractBatchData } from '../queue/extract-shards.js';
import { startWorker, WORKER_NAME } from '../queue/worker.js';
import { DEFAULT_QUEUE } from './retrieval-score.js';
import { UsageError, intFlag, parseArgs, reportFailure } from './common.js';
import type { Command } from './main.js';

const USAGE = `worker --redis URL [--queue NAME] [--concurrency N] [--threads N] [--lock-ms MS] [--quiet]
      Take shards from the queue and compute them: retrieval score blocks (uniter retrieval-score
      --redis) and region extraction batches (uniter extract --redis). Start any number, on any
      machines that reach Redis and see the model, store, detector and image files at the paths the
      jobs name. Results go back through Redis. Stops on SIGINT/SIGTERM after the jobs in flight.

  --redis URL        redis://host:port[/db]
  --queue NAME       queue name (default ${DEFAULT_QUEUE})
  --concurrency N    jobs run at once by this process (default 1)
  --threads N        threads of each model session (default: the runtime's choice; 1 when several
                     workers share a machine)
  --lock-ms MS       job lock (default 30000): a worker that dies holding a job gives it up after
                     this long, and another worker takes it
  --quiet            no per-job lines`;

/** An optional integer flag >= min. */
function intOpt(v: string | undefined, flag: string, min = 1): number | undefined {
  return v === undefined ? undefined : intFlag(v, flag, min);
}

export async function runWorker(argv: string[]): Promise<number> {
  const say = (s: string) => process.stderr.write(s + '\n');
  let a;
  let target;
  let concurrency: number | undefined;
  let threads: number | undefined;
  let lockMs: number | undefined;
  try {
    a = parseArgs(argv, { string: ['redis', 'queue', 'concurrency', 'threads', 'lock-ms'], boolean: ['quiet'] }, USAGE);
    if (!a.string.redis) throw new UsageError('--redis URL is required');
    if (a.positional.length) throw new UsageError(`unexpected argument '${a.positional[0]}'`);
    if (a.string.queue !== undefined && !/^[A-Za-z0-9_-]+$/.test(a.string.queue)) throw new UsageError(`--queue ${a.string.queue}: use letters, digits, '-' and '_' only`);
    target = parseRedisUrl(a.string.redis);
    concurrency = intOpt(a.string.concurrency, '--concurrency');
    threads = intOpt(a.string.threads, '--threads');
    lockMs = intOpt(a.string['lock-ms'], '--lock-ms', 500);
    await checkRedis(target);
  } catch (e) {
    // Redis targets that are malformed or unreachable are argument errors too.
    return reportFailure('worker', USAGE, e, (x) => x instanceof QueueUsageError);
  }
  if (threads !== undefined) setDefaultThreads(threads);
  const queueName = a.string.queue ?? DEFAULT_QUEUE;
  const retrieval = new RetrievalContext(threads);
  const extract = new ExtractContext(threads);
  const log = a.boolean.quiet ? undefined : (line: string) => say(`[${new Date().toISOString()} ${WORKER_NAME}] ${line}`);
  const w = await startWorker({
    target,
    queueName,
    concurrency,
    lockMs,
    log,
    handlers: {
      [RETRIEVAL_JOB]: async (d: RetrievalShardData) => ({ ...(await retrieval.score(d)), worker: WORKER_NAME }),
      [EXTRACT_JOB]: async (d: ExtractBatchData) => ({ ...(await extract.run(d)), worker: WORKER_NAME }),
    },
  });
  say(`uniter worker ${WORKER_NAME}: serving queue '${queueName}' at ${target.display} (concurrency ${concurrency ?? 1}${threads ? `, ${threads} threads` : ''})`);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (sig: string) => {
      if (stopping) process.exit(130);
      stopping = true;
      say(`uniter worker: ${sig}: finishing the jobs in flight (again to quit now)`);
      void w.close().then(resolve, resolve);
    };
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
  });
  retrieval.close();
  const c = w.counts();
  say(`uniter worker: stopped after ${c.completed} jobs (${c.failed} failed attempts)`);
  return 0;
}

export const command: Command = {
  name: 'worker',
  summary: 'take retrieval-score / extract shards from a Redis (BullMQ) queue and compute them',
  usage: USAGE,
  run: (argv) => runWorker(argv),
};
