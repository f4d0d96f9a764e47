/**
 * Where the engine's time goes in one UNITER step: wall time of the whole call, of ONNX Runtime's
 * session.run inside it (the rest is JavaScript: dropout masks, feeds, output copies), of the
 * clip and AdamW that follow a training step, and an ONNX Runtime profile trace of the session
 * (summarised by bench/engine/profile.js: kernel time per op type, slowest nodes).
 *
 *   node dist/bench/uniter/profile.js [--op train|infer] [--task itm|mlm] [--examples 52]
 *        [--regions 36] [--layers 12] [--threads 2] [--runs 2] [--prefix /tmp/uniter-profile]
 *        [--ort-profile on|off] [--session-options '{"enableCpuMemArena":false}']
 *
 * Profiling is switched on by wrapping onnxruntime-node's InferenceSession.create in this
 * process only (./ort-session.ts), so the engine runs exactly as in the benchmark otherwise.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { PRESETS, UniterConfig } from '../../src/model/config.js';
import { TIES, allSpecs, initParams } from '../../src/model/params.js';
import { UniterRunner } from '../../src/model/runner.js';
import { DEFAULT_OT } from '../../src/model/task-graphs.js';
import { AdamW, clipScale, globalGradNorm } from '../../src/pretrain/optimizer.js';
import { runChild } from '../harness.js';
import { hookSessions, parseSessionOptions } from './ort-session.js';
import { ADAMW_OPTIONS, GRAD_CLIP, LEARNING_RATE, makeBatch } from './workload.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

function intOption(name: string, fallback: number): number {
  const v = Number(option(name, String(fallback)));
  if (!Number.isInteger(v) || v < 1) throw new Error(`profile: --${name} must be a positive integer`);
  return v;
}

async function main(): Promise<void> {
  const op = option('op', 'train');
  const task = option('task', 'itm');
  if (op !== 'train' && op !== 'infer') throw new Error(`profile: --op must be train or infer, got '${op}'`);
  if (task !== 'itm' && task !== 'mlm') throw new Error(`profile: --task must be itm or mlm, got '${task}'`);
  const examples = intOption('examples', 52);
  const regions = intOption('regions', 36);
  const runs = intOption('runs', 2);
  const threads = intOption('threads', 2);
  const prefix = option('prefix', '/tmp/uniter-profile');
  const cfg: UniterConfig = { ...PRESETS.base, num_hidden_layers: intOption('layers', 12) };
  const profiling = option('ort-profile', 'on') !== 'off';
  // Session options to try on top of the engine's own, e.g. '{"enableCpuMemArena":false}'.
  const overrides = parseSessionOptions(option('session-options', '{}'), 'profile --session-options');
  const hook = hookSessions({ ...overrides, ...(profiling ? { enableProfiling: true, profileFilePrefix: prefix } : {}) });

  const params = initParams(allSpecs(cfg, 'pretrain').filter((s) => !TIES[s.name]), cfg.initializer_range, 1);
  const runner = new UniterRunner(cfg, params, threads);
  const values = new Map([...params].map(([k, v]) => [k, v.data as Float32Array]));
  const optimizer = new AdamW(values, new Map([...params].map(([k, v]) => [k, v.shape])), ADAMW_OPTIONS);
  const batch = makeBatch(op === 'infer' ? 'pairs' : (task as 'itm' | 'mlm'), { examples, regions, wordpieces: 40 });
  const rows: Array<Record<string, number>> = [];
  for (let r = 0; r <= runs; r++) {
    hook.inRunMs = 0;
    const t0 = performance.now();
    const cpu = process.cpuUsage();
    const out =
      op === 'infer'
        ? await runner.run('itm', batch, { training: false, grads: false, inference: true })
        : await runner.run(task, batch, { training: true, grads: true, ot: task === 'itm' ? DEFAULT_OT : null, dropout: { seed: 1, step: r } });
    const t1 = performance.now();
    let t2 = t1;
    let t3 = t1;
    if (op === 'train') {
      const grads = new Map<string, Float32Array>();
      for (const [k, v] of out) if (k.startsWith('grad.')) grads.set(k.slice(5), v.data as Float32Array);
      // As the trainers: the norm, then the clipping factor applied inside the update.
      const clip = clipScale(globalGradNorm(grads), GRAD_CLIP);
      t2 = performance.now();
      optimizer.step(grads, LEARNING_RATE, clip);
      t3 = performance.now();
    }
    const used = process.cpuUsage(cpu);
    rows.push({
      run: r,
      total_s: (t3 - t0) / 1000,
      cpu_s: (used.user + used.system) / 1e6,
      runner_run_s: (t1 - t0) / 1000,
      ort_session_run_s: hook.inRunMs / 1000,
      js_around_session_s: (t1 - t0 - hook.inRunMs) / 1000,
      clip_s: (t2 - t1) / 1000,
      adamw_s: (t3 - t2) / 1000,
    });
    console.log(JSON.stringify({ ...rows.at(-1), note: r === 0 ? 'first run: includes session creation' : undefined, max_rss_gib: Number((process.resourceUsage().maxRSS / 1024 ** 2).toFixed(2)) }));
  }
  // endProfiling writes `<prefix>_<timestamp>.json`; pick up what this process wrote.
  const before = Date.now();
  if (profiling) for (const s of hook.sessions) s.endProfiling();
  const dir = path.dirname(path.resolve(prefix));
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.startsWith(`${path.basename(prefix)}_`) && f.endsWith('.json'))
    .map((f) => path.join(dir, f))
    .filter((f) => fs.statSync(f).mtimeMs >= before - 1000);
  for (const f of files) {
    console.log(`\nORT profile ${f} (includes the first run):`);
    console.log(await runChild(process.execPath, [path.join(HERE, '..', 'engine', 'profile.js'), f, '--top', '25']));
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : String(e));
  process.exit(1);
});
