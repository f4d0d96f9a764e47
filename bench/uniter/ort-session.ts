/**
 * Benchmark-only hook on onnxruntime-node's InferenceSession.create in the current process:
 * extra session options on top of the engine's own (to measure, e.g., the engine without ONNX
 * Runtime's CPU memory arena, or with profiling) and a record of every session created, with
 * the wall time spent inside its run(). The engine code itself is untouched; only sessions this
 * process creates after the call are affected.
 */
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';

export interface SessionHook {
  readonly sessions: ort.InferenceSession[];
  /** Milliseconds spent inside session.run() since the last reset. */
  inRunMs: number;
}

export function parseSessionOptions(json: string, where: string): ort.InferenceSession.SessionOptions {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch (e) {
    throw new Error(`${where}: session options must be a JSON object, e.g. '{"enableCpuMemArena":false}' (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${where}: session options must be a JSON object, got ${json}`);
  return v as ort.InferenceSession.SessionOptions;
}

export function hookSessions(overrides: ort.InferenceSession.SessionOptions): SessionHook {
  const hook: SessionHook = { sessions: [], inRunMs: 0 };
  const create = ort.InferenceSession.create.bind(ort.InferenceSession) as (bytes: Uint8Array, o?: ort.InferenceSession.SessionOptions) => Promise<ort.InferenceSession>;
  (ort.InferenceSession as unknown as { create: unknown }).create = async (bytes: Uint8Array, o?: ort.InferenceSession.SessionOptions) => {
    const session = await create(bytes, { ...o, ...overrides });
    const run = session.run.bind(session);
    (session as unknown as { run: unknown }).run = async (...args: Parameters<typeof run>) => {
      const t = performance.now();
      try {
        return await run(...args);
      } finally {
        hook.inRunMs += performance.now() - t;
      }
    };
    hook.sessions.push(session);
    return session;
  };
  return hook;
}
