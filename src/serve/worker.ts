/**
 * A `uniter serve` worker thread: holds the model's pipelines (ONNX Runtime sessions) so that
 * inference never runs on the server's event loop. Jobs that arrive while a run is in progress
 * wait here; the next run takes every waiting job of the same task at once (up to maxBatch) as
 * one batch, so concurrent requests share a session run instead of queueing behind each other.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { InputError, Pipeline, PipelineTask, pipeline } from '../api/pipeline.js';

export interface WorkerConfig {
  modelDir: string;
  detectorDir?: string;
  threads: number;
  maxBatch: number;
}

export type Job = { id: number; kind: 'run'; task: PipelineTask; input: unknown } | { id: number; kind: 'align'; task: PipelineTask; input: unknown };

export type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; status: number; error: string; field?: string };

/** Tasks whose inputs batch into one session run (retrieval batches its own gallery). */
const BATCHED = new Set<PipelineTask>(['itm', 'vqa', 've', 'nlvr2', 'refexp']);

const cfg = workerData as WorkerConfig;
const pipelines = new Map<PipelineTask, Promise<Pipeline<PipelineTask>>>();

function pipe(task: PipelineTask): Promise<Pipeline<PipelineTask>> {
  let p = pipelines.get(task);
  if (!p) {
    p = pipeline(task, cfg.modelDir, { threads: cfg.threads, detector: cfg.detectorDir });
    pipelines.set(task, p);
    // A failed load is reported to this request and retried by the next one.
    p.catch(() => pipelines.delete(task));
  }
  return p;
}

function failure(id: number, e: unknown): Reply {
  if (e instanceof InputError) return { id, ok: false, status: 400, error: e.message, field: e.field };
  const message = (e as Error)?.message ?? String(e);
  // A model that cannot do the task (no such head) is the request's problem, not the server's.
  if (/holds no .*head|needs a model loaded for/.test(message)) return { id, ok: false, status: 422, error: message };
  return { id, ok: false, status: 500, error: message };
}

const queue: Job[] = [];
let running = false;

async function runBatch(jobs: Job[]): Promise<void> {
  const first = jobs[0];
  try {
    const p = await pipe(first.task);
    if (first.kind === 'align') {
      parentPort!.postMessage({ id: first.id, ok: true, result: await p.align(first.input as never) } satisfies Reply);
      return;
    }
    if (jobs.length === 1) {
      parentPort!.postMessage({ id: first.id, ok: true, result: await p(first.input as never) } satisfies Reply);
      return;
    }
    let results: unknown[];
    try {
      results = (await p(jobs.map((j) => j.input) as never)) as unknown as unknown[];
    } catch {
      // One bad input must not fail its neighbours: score them one by one.
      for (const j of jobs) await runBatch([j]);
      return;
    }
    jobs.forEach((j, i) => parentPort!.postMessage({ id: j.id, ok: true, result: results[i] } satisfies Reply));
  } catch (e) {
    for (const j of jobs) parentPort!.postMessage(failure(j.id, e));
  }
}

async function drain(): Promise<void> {
  if (running) return;
  running = true;
  try {
    while (queue.length) {
      const head = queue.shift()!;
      const jobs = [head];
      if (head.kind === 'run' && BATCHED.has(head.task)) {
        for (let i = 0; i < queue.length && jobs.length < cfg.maxBatch; ) {
          if (queue[i].kind === 'run' && queue[i].task === head.task) jobs.push(...queue.splice(i, 1));
          else i++;
        }
      }
      await runBatch(jobs);
    }
  } finally {
    running = false;
  }
}

parentPort!.on('message', (msg: Job | { kind: 'warm'; task: PipelineTask }) => {
  if (msg.kind === 'warm') {
    // Load (and so compile) a task's pipeline before the first request needs it.
    pipe(msg.task).then(
      () => parentPort!.postMessage({ warm: msg.task, ok: true }),
      (e: Error) => parentPort!.postMessage({ warm: msg.task, ok: false, error: e.message }),
    );
    return;
  }
  queue.push(msg);
  void drain();
});
