/**
 * `uniter retrieval-score` in-process and on real `uniter worker` processes through a private
 * redis-server: the sharded matrix equals the single-process one bit for bit; a worker killed
 * with SIGKILL mid-shard, a shard failing 3 times and a Redis restart (AOF on) are survived or
 * reported as the docs say; a rerun computes only the missing shards.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateWorld, writeWorld } from '../../src/data/world.js';
import { TxtDb, writeTxtDb } from '../../src/data/txtdb.js';
import type { TextRecord } from '../../src/data/types.js';
import { buildGallery, scoreGallery } from '../../src/finetune/retrieval.js';
import { runRetrievalScore } from '../../src/cli/retrieval-score.js';
import { loadRetrievalModel, openImgDb } from '../../src/queue/retrieval-shards.js';
import { randomParams, writeModelFolder } from '../export/model-folders.js';
import { TINY_MODEL } from '../finetune/fixtures.js';
import { textSink } from '../helpers/cli.js';
import { HAVE_REDIS, NO_REDIS, RedisServer, WorkerProc, waitFor } from './redis-helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-queue-'));
const worldDir = path.join(tmp, 'world');
const model = path.join(tmp, 'model');
const txtDb = path.join(worldDir, 'txt_db/itm_world_train.db');
const imgDb = path.join(worldDir, 'img_db/world');
// 144 captions x 48 images in 3 x 3 shards of up to 50 x 16.
const SHARDS = ['--shard-images', '16', '--shard-captions', '50'];

const sink = textSink;

async function score(out: string, extra: string[] = [], signal?: AbortSignal) {
  const stderr = sink();
  const stdout = sink();
  const code = await runRetrievalScore(['--model', model, '--txt-db', txtDb, '--img-db', imgDb, '--out', out, ...SHARDS, '--json', '--quiet', ...extra], { stderr, stdout, pollMs: 50, signal });
  const last = stdout.text.trim().split('\n').pop();
  return { code, err: stderr.text, json: last ? (JSON.parse(last) as Record<string, unknown>) : null };
}

const read = (dir: string) => fs.readFileSync(path.join(dir, 'scores.f32'));
const logLines = (dir: string) =>
  fs
    .readFileSync(path.join(dir, 'shards.log'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { shard: string; worker: string });

let reference: Buffer;

before(async () => {
  writeWorld(generateWorld({ preset: 'tiny' }), worldDir);
  writeModelFolder(model, TINY_MODEL, randomParams(TINY_MODEL, 'retrieval', { seed: 3 }));
  const r = await score(path.join(tmp, 'local'), ['--threads', '1']);
  assert.equal(r.code, 0, r.err);
  reference = read(path.join(tmp, 'local'));
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('in-process: the sharded matrix is the whole-gallery scoreGallery matrix, with the official R@K; a rerun computes only missing shards', async () => {
  const out = path.join(tmp, 'local');
  const ids = JSON.parse(fs.readFileSync(path.join(out, 'score_ids.json'), 'utf8')) as { txtIds: string[]; imgIds: string[] };
  const txt = TxtDb.open(txtDb);
  const img = openImgDb(imgDb);
  try {
    const g = buildGallery({ txt, img });
    assert.deepEqual(ids.txtIds, g.txtIds);
    assert.deepEqual(ids.imgIds, g.imgIds);
    const whole = await scoreGallery(loadRetrievalModel(model, 1), g);
    const mine = new Float32Array(reference.buffer.slice(reference.byteOffset, reference.byteOffset + reference.length));
    assert.equal(mine.length, 144 * 48);
    let maxDiff = 0;
    for (let k = 0; k < mine.length; k++) maxDiff = Math.max(maxDiff, Math.abs(mine[k] - whole.scores[k]));
    // Other padding per forward pass than the whole-gallery blocks: float rounding only.
    assert.ok(maxDiff < 1e-5, `max |diff| ${maxDiff}`);
  } finally {
    txt.close();
    img.close();
  }
  const results = JSON.parse(fs.readFileSync(path.join(out, 'retrieval_results.json'), 'utf8')) as { metrics: Record<string, number>; image_rank: Record<string, number> };
  assert.equal(Object.keys(results.image_rank).length, 144);
  for (const k of ['img_r1', 'img_r5', 'img_r10', 'txt_r1', 'txt_r5', 'txt_r10', 'r_mean']) assert.ok(results.metrics[k] >= 0 && results.metrics[k] <= 1, k);

  // Resume: two shard files lost -> only those two are computed, the matrix is the same.
  fs.rmSync(path.join(out, 'shards/c0-i1.f32'));
  fs.rmSync(path.join(out, 'shards/c2-i2.f32'));
  const again = await score(out, ['--threads', '1']);
  assert.equal(again.code, 0, again.err);
  assert.equal(again.json!.stored, 2);
  assert.equal(again.json!.resumed, 7);
  assert.ok(read(out).equals(reference));
  // Another geometry into the same --out is another run: refused, naming --out.
  const other = await runRetrievalScore(['--model', model, '--txt-db', txtDb, '--img-db', imgDb, '--out', out, '--shard-size', '100', '--quiet'], { stderr: sink(), stdout: sink() });
  assert.equal(other, 2);
});

test('bad arguments are refused naming the argument', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['--txt-db', txtDb, '--img-db', imgDb, '--out', path.join(tmp, 'x')], /--model DIR is required/],
    [['--model', model, '--txt-db', path.join(tmp, 'nope'), '--img-db', imgDb, '--out', path.join(tmp, 'x')], /--txt-db .*nope/],
    [['--model', model, '--txt-db', txtDb, '--img-db', imgDb, '--out', path.join(tmp, 'x'), '--shard-size', '0'], /--shard-size must be an integer >= 1, got '0'/],
    [['--model', model, '--txt-db', txtDb, '--img-db', imgDb, '--out', path.join(tmp, 'x'), '--redis', 'http://x'], /--redis http:\/\/x: the scheme must be redis:\/\//],
    [['--model', path.join(tmp, 'none'), '--txt-db', txtDb, '--img-db', imgDb, '--out', path.join(tmp, 'x')], /--model .*none/],
  ];
  for (const [argv, re] of cases) {
    const err = sink();
    assert.equal(await runRetrievalScore([...argv, '--quiet'], { stderr: err, stdout: sink() }), 2, argv.join(' '));
    assert.match(err.text, re);
  }
});

describe('on Redis with worker processes', { skip: HAVE_REDIS ? false : NO_REDIS }, () => {
  let redis: RedisServer;
  let workers: WorkerProc[] = [];

  before(async () => {
    redis = await RedisServer.start(path.join(tmp, 'redis'));
    workers = [0, 1, 2].map(() => new WorkerProc(redis.url, ['--lock-ms', '2000']));
    await Promise.all(workers.map((w) => w.ready()));
  });

  after(async () => {
    await Promise.all(workers.map((w) => w.stop()));
    await redis?.stop();
  });

  test('three workers fill the identical matrix; each shard is stored once', async () => {
    const out = path.join(tmp, 'q1');
    const r = await score(out, ['--redis', redis.url]);
    assert.equal(r.code, 0, r.err);
    assert.ok(read(out).equals(reference), 'sharded matrix differs from the in-process one');
    const log = logLines(out);
    assert.equal(log.length, 9);
    assert.equal(new Set(log.map((l) => l.shard)).size, 9);
    assert.ok(new Set(log.map((l) => l.worker)).size >= 2, `one worker did everything: ${JSON.stringify(log)}`);
    // A rerun has nothing to do and enqueues nothing.
    const again = await score(out, ['--redis', redis.url]);
    assert.equal(again.code, 0, again.err);
    assert.equal(again.json!.stored, 0);
    assert.equal(again.json!.resumed, 9);
  });

  test('a worker killed with SIGKILL mid-shard: the shard is retried elsewhere, the matrix is identical, no shard stored twice', async () => {
    const out = path.join(tmp, 'q-kill');
    // Job ids repeat across runs of the same inputs: look only at what the workers log from now on.
    const from = new Map(workers.map((w) => [w, w.log.length]));
    const run = score(out, ['--redis', redis.url]);
    // The first worker to start one of this run's shards dies while computing it.
    const [victim, jobId] = await waitFor('a worker to start a shard', () => {
      for (const w of workers) {
        const fresh = w.log.slice(from.get(w));
        for (const m of fresh.matchAll(/job (\S+) \(retrieval-shard, attempt 1\) started/g)) if (!fresh.includes(`job ${m[1]} done`)) return [w, m[1]] as const;
      }
      return undefined;
    }, 30_000, 5);
    const killedAt = new Map(workers.map((w) => [w, w.log.length]));
    victim.proc.kill('SIGKILL');
    const r = await run;
    assert.equal(r.code, 0, r.err);
    assert.ok(read(out).equals(reference), 'matrix differs after the kill');
    const log = logLines(out);
    assert.equal(log.length, 9);
    assert.equal(new Set(log.map((l) => l.shard)).size, 9, 'a shard was stored twice');
    const shard = jobId.split('.')[1];
    const entry = log.find((l) => l.shard === shard)!;
    assert.ok(!entry.worker.endsWith(`/${victim.pid}`), `shard ${shard} credited to the killed worker`);
    assert.ok(workers.some((w) => w !== victim && w.log.slice(killedAt.get(w)).includes(`job ${jobId} done`)), 'no other worker completed the killed shard');
    workers = workers.filter((w) => w !== victim);
  });

  test('a shard failing 3 times is reported with its error; the others finish; exit 1; in-process the same', async () => {
    // A caption whose token id is beyond the model's vocabulary: every shard of its caption block fails.
    const bad = path.join(tmp, 'bad_txt.db');
    const src = TxtDb.open(txtDb);
    const recs: TextRecord[] = src.ids().map((id) => ({ ...src.get(id), id }));
    src.close();
    recs[5] = { ...recs[5], input_ids: [...recs[5].input_ids.slice(0, -1), 1_000_000] };
    writeTxtDb(bad, recs, { v_range: [0, 2_000_000] });
    for (const via of [['--redis', redis.url], ['--threads', '1']]) {
      const stderr = sink();
      const stdout = sink();
      const out = path.join(tmp, `q-fail-${via[0].slice(2)}`);
      const code = await runRetrievalScore(['--model', model, '--txt-db', bad, '--img-db', imgDb, '--out', out, ...SHARDS, '--json', '--quiet', ...via], { stderr, stdout, pollMs: 50 });
      assert.equal(code, 1, stderr.text);
      const j = JSON.parse(stdout.text.trim()) as { failed: Array<{ id: string; error: string; attempts: number }>; stored: number };
      assert.equal(j.failed.length, 3, JSON.stringify(j));
      assert.equal(j.stored, 6);
      for (const f of j.failed) {
        assert.equal(f.attempts, 3);
        assert.match(f.error, /1000000|out of (data )?bounds|indices/i);
        assert.match(stderr.text, new RegExp(`shard ${f.id} failed after 3 attempts`));
      }
      assert.equal(fs.readdirSync(path.join(out, 'shards')).length, 6);
      assert.ok(!fs.existsSync(path.join(out, 'scores.f32')));
    }
  });
});

describe('Redis restarted mid-run', { skip: HAVE_REDIS ? false : NO_REDIS }, () => {
  test('the run goes on across the restart and gives the identical matrix', async () => {
    const redis = await RedisServer.start(path.join(tmp, 'redis-aof'), { aof: true });
    const workers = [0, 1].map(() => new WorkerProc(redis.url, ['--lock-ms', '2000']));
    try {
      await Promise.all(workers.map((w) => w.ready()));
      const out = path.join(tmp, 'q-aof');
      const run = score(out, ['--redis', redis.url]);
      await waitFor('the first stored shard', () => fs.existsSync(path.join(out, 'shards.log')) && fs.readFileSync(path.join(out, 'shards.log'), 'utf8').length > 0, 30_000, 10);
      await redis.stop('SIGKILL');
      const storedBefore = logLines(out).length;
      await new Promise((r) => setTimeout(r, 300));
      await redis.start();
      const r = await run;
      assert.ok(storedBefore < 9, `the run had finished (${storedBefore} shards) before Redis went down`);
      assert.equal(r.code, 0, r.err);
      assert.ok(read(out).equals(reference), 'matrix differs after the restart');
      const log = logLines(out);
      assert.equal(log.length, 9);
      assert.equal(new Set(log.map((l) => l.shard)).size, 9);
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
      await redis.stop();
    }
  });

  test('without persistence the restarted Redis is empty: the coordinator enqueues the lost shards again and the matrix is identical', async () => {
    const redis = await RedisServer.start(path.join(tmp, 'redis-empty'));
    const workers = [0, 1].map(() => new WorkerProc(redis.url, ['--lock-ms', '2000']));
    try {
      await Promise.all(workers.map((w) => w.ready()));
      const out = path.join(tmp, 'q-empty');
      const run = score(out, ['--redis', redis.url]);
      await waitFor('the first stored shard', () => fs.existsSync(path.join(out, 'shards.log')) && fs.readFileSync(path.join(out, 'shards.log'), 'utf8').length > 0, 30_000, 10);
      await redis.stop('SIGKILL');
      const storedBefore = logLines(out).length;
      await redis.start();
      const r = await run;
      assert.ok(storedBefore < 9, `the run had finished (${storedBefore} shards) before Redis went down`);
      assert.equal(r.code, 0, r.err);
      assert.match(r.err, /no longer on the queue .*enqueued again/);
      assert.ok(read(out).equals(reference), 'matrix differs after the restart');
      assert.equal(new Set(logLines(out).map((l) => l.shard)).size, 9);
      assert.equal(logLines(out).length, 9);
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
      await redis.stop();
    }
  });
});
