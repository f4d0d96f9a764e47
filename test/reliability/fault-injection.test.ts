/**
 * Issue 15, fault injection: `uniter pretrain` is killed with SIGKILL at seeded random points,
 * most of them inside checkpoint writes (the writer kills itself at the N-th checkpoint event:
 * a chunk of model.safetensors or optimizer.safetensors written, the step directory renamed into
 * place, `latest` committed; see UNITER_FAULT_KILL_CHECKPOINT in src/pretrain/checkpoint.ts), some
 * at seeded random times, one trial killed twice. Each killed run is resumed with `--resume`
 * until it finishes, and the result must be exactly the uninterrupted run's: the final model
 * folder and the last checkpoint's parameters and moments byte for byte, the same log.jsonl
 * byte for byte but for the records' wall-clock `time` fields, and the same held-out summary.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateWorld, writeWorld } from '../../src/data/world.js';
import { Rng } from '../../src/util/rng.js';

const BIN = fileURLToPath(new URL('../../../bin/uniter.js', import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-fault-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const STEPS = 6;
let configFile = '';
before(() => {
  const world = path.join(tmp, 'world');
  writeWorld(generateWorld({ preset: 'tiny', numImages: 16 }), world);
  const tasks = ['itm', 'mlm', 'mrfr', 'mrckl'];
  const cfg = {
    model: { config: { hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32 } },
    train_datasets: [{ name: 'w', db: [path.join(world, 'txt_db/pretrain_world_train.db')], img: [path.join(world, 'img_db/world')], tasks, mix_ratio: [1, 1, 1, 1] }],
    val_datasets: [{ name: 'w', db: [path.join(world, 'txt_db/pretrain_world_val.db')], img: [path.join(world, 'img_db/world')], tasks }],
    train_batch_size: 400, val_batch_size: 4000, gradient_accumulation_steps: 1, learning_rate: 1e-3, warmup_steps: 1,
    // A checkpoint after every step (most of a run's time is checkpoint writes), validation midway and at the end.
    num_train_steps: STEPS, valid_steps: 3, save_steps: 1, log_steps: 1, keep_checkpoints: 2, seed: 1,
  };
  configFile = path.join(tmp, 'pretrain.json');
  fs.writeFileSync(configFile, JSON.stringify(cfg));
});

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** `uniter pretrain --config ... --out OUT` with extra args and environment; `killAfterMs` SIGKILLs it from outside. */
function pretrain(out: string, extra: string[], env: Record<string, string> = {}, killAfterMs?: number): Promise<Exit> {
  const t0 = Date.now();
  const child = spawn(process.execPath, [BIN, 'pretrain', '--config', configFile, '--out', out, '--quiet', '--json', '--threads', '1', ...extra], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d));
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  const timer = killAfterMs === undefined ? null : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

const bytes = (f: string) => fs.readFileSync(f);
const summaryOf = (stdout: string) => {
  const s = JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>;
  delete s.seconds;
  return s;
};

/** What an exact resume must reproduce. */
function result(out: string) {
  const last = path.join(out, 'ckpt', `step_${STEPS}`);
  return {
    model: bytes(path.join(out, 'model', 'model.safetensors')),
    config: bytes(path.join(out, 'model', 'config.json')),
    ckptModel: bytes(path.join(last, 'model.safetensors')),
    ckptOptimizer: bytes(path.join(last, 'optimizer.safetensors')),
    latest: fs.readFileSync(path.join(out, 'ckpt', 'latest'), 'utf8'),
    log: withoutTimes(fs.readFileSync(path.join(out, 'log.jsonl'), 'utf8')),
  };
}

/**
 * The log with each record's `time` (wall-clock seconds of the step's parts) removed: no two runs
 * take the same time; every other byte of every record must match.
 */
function withoutTimes(log: string): string {
  return log
    .split('\n')
    .map((line) => {
      if (!line) return line;
      const r = JSON.parse(line) as Record<string, unknown>;
      if (!('time' in r)) return line;
      delete r.time;
      return JSON.stringify(r);
    })
    .join('\n');
}

let reference: ReturnType<typeof result> & { summary: Record<string, unknown>; ms: number; events: Array<{ n: number; phase: string; what: string }> };

test('reference: an uninterrupted run, tracing its checkpoint events', async () => {
  const out = path.join(tmp, 'reference');
  const trace = path.join(tmp, 'trace.txt');
  const r = await pretrain(out, [], { UNITER_FAULT_CHECKPOINT_TRACE: trace });
  assert.equal(r.code, 0, r.stderr);
  const events = fs.readFileSync(trace, 'utf8').trim().split('\n').map((l) => {
    const [n, phase, what] = l.split(' ');
    return { n: Number(n), phase, what };
  });
  // Every step writes a checkpoint: model and optimizer chunks, then renamed and committed.
  assert.equal(events.filter((e) => e.phase === 'committed').length, STEPS);
  assert.ok(events.some((e) => e.what === 'optimizer.safetensors'));
  reference = { ...result(out), summary: summaryOf(r.stdout), ms: r.ms, events };
  assert.equal(reference.summary.steps, STEPS);
});

/** Resume until the run finishes (at most `limit` resumes), then compare with the reference. */
async function resumeAndCompare(out: string, label: string, kills: Exit[]): Promise<void> {
  for (const k of kills) assert.equal(k.signal, 'SIGKILL', `${label}: the run was killed (${k.stderr})`);
  const r = await pretrain(out, ['--resume']);
  assert.equal(r.code, 0, `${label}: resume failed: ${r.stderr}`);
  const got = result(out);
  for (const key of Object.keys(got) as Array<keyof typeof got>) {
    assert.ok(Buffer.from(got[key]).equals(Buffer.from(reference[key])), `${label}: ${key} differs from the uninterrupted run's`);
  }
  assert.deepEqual(summaryOf(r.stdout), reference.summary, `${label}: held-out summary`);
  const leftovers = (fs.readdirSync(path.join(out, 'ckpt')) as string[]).filter((n) => n.startsWith('.'));
  assert.deepEqual(leftovers, [], `${label}: temporary checkpoint files left behind`);
}

// Seeded kill points: each trial draws the checkpoint event at which the writer dies from a
// phase (a chunk of a data file, the rename of the step directory, the commit of `latest`),
// or a time in the run; trial 4 dies after the last checkpoint (a resume at the final step
// validates again and must not log the final validation twice); trial 6 is killed twice.
const TRIALS: Array<{ seed: number; kind: 'write' | 'renamed' | 'committed' | 'last' | 'time' | 'twice' }> = [
  { seed: 1, kind: 'write' },
  { seed: 2, kind: 'renamed' },
  { seed: 3, kind: 'committed' },
  { seed: 4, kind: 'last' },
  { seed: 5, kind: 'time' },
  { seed: 6, kind: 'twice' },
];

// Two trials at a time: each child process runs ONNX Runtime on one thread.
describe('seeded kills', { concurrency: 2 }, () => {
  for (const { seed, kind } of TRIALS) {
    test(`trial ${seed}: killed (${kind}) and resumed, the run ends exactly as the uninterrupted one`, async (t) => {
      const rng = new Rng(seed, 'fault-injection');
      const out = path.join(tmp, `trial-${seed}`);
      const pick = (phase: string) => rng.choice(reference.events.filter((e) => e.phase === phase)).n;
      const kills: Exit[] = [];
      if (kind === 'time') {
        // Somewhere between start-up (about a second of imports and data opening) and the end.
        const ms = Math.round(1000 + rng.uniform() * Math.max(0, reference.ms * 0.9 - 1000));
        const k = await pretrain(out, [], {}, ms);
        if (k.signal === null) {
          t.diagnostic(`the run finished before ${ms} ms; killing a resume instead`);
          fs.rmSync(out, { recursive: true, force: true });
          kills.push(await pretrain(out, [], { UNITER_FAULT_KILL_CHECKPOINT: String(pick('write')) }));
        } else kills.push(k);
        t.diagnostic(`killed after ${ms} ms`);
      } else if (kind === 'twice') {
        const first = rng.int(1, reference.events.length + 1);
        kills.push(await pretrain(out, [], { UNITER_FAULT_KILL_CHECKPOINT: String(first) }));
        // The resumed process dies too, at an event of its own within the first checkpoint it writes.
        const second = rng.int(1, reference.events.length / STEPS);
        kills.push(await pretrain(out, ['--resume'], { UNITER_FAULT_KILL_CHECKPOINT: String(second) }));
        t.diagnostic(`killed at checkpoint event ${first}, then the resumed run at its event ${second}`);
      } else {
        // 'last': right after the final checkpoint's commit, while the model folder is written.
        const n = kind === 'last' ? reference.events.length : pick(kind);
        kills.push(await pretrain(out, [], { UNITER_FAULT_KILL_CHECKPOINT: String(n) }));
        const e = reference.events[n - 1];
        t.diagnostic(`killed at checkpoint event ${n}: ${e.phase} ${e.what}`);
      }
      await resumeAndCompare(out, `trial ${seed}`, kills);
    });
  }
});
