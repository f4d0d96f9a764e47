/**
 * `uniter extract --redis`: batches of images on two `uniter worker` processes (the tiny reference
 * detector, converted from the fixture), merged into one img_db identical to a local run's; bad
 * images are reported as locally; a rerun into an unfinished store extracts only what is missing.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runExtract } from '../../src/cli/extract.js';
import { ImgDb } from '../../src/data/imgdb.js';
import { textSink } from '../helpers/cli.js';
import { HAVE_REDIS, NO_REDIS, ROOT, RedisServer, UNITER, WorkerProc } from './redis-helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-extract-queue-'));
const FIXTURE = path.join(ROOT, 'test/fixtures/detector');
const det = path.join(tmp, 'detector');
const photos = path.join(tmp, 'photos');
let redis: RedisServer | null = null;
let workers: WorkerProc[] = [];

const sink = textSink;

async function extract(out: string, extra: string[]) {
  const stderr = sink();
  const stdout = sink();
  const code = await runExtract(['--detector', det, '--images-dir', photos, '--out', out, '--json', '--quiet', ...extra], { stderr, stdout, pollMs: 50, signal: new AbortController().signal });
  return { code, err: stderr.text, json: JSON.parse(stdout.text.trim().split('\n').pop()!) as Record<string, number | string | boolean> };
}

before(async () => {
  execFileSync(process.execPath, [UNITER, 'convert', path.join(FIXTURE, 'frcnn-tiny-torch/pytorch_model.bin'), det, '--config', path.join(FIXTURE, 'frcnn-tiny/config.json')], { stdio: 'ignore' });
  fs.mkdirSync(photos);
  for (const n of ['img0', 'img1']) fs.copyFileSync(path.join(FIXTURE, 'frcnn-tiny/images', `${n}.png`), path.join(photos, `${n}.png`));
  fs.copyFileSync(path.join(photos, 'img0.png'), path.join(photos, 'again.png'));
  fs.copyFileSync(path.join(photos, 'img1.png'), path.join(photos, 'more.png'));
  fs.writeFileSync(path.join(photos, 'broken.png'), 'not a picture');
  if (HAVE_REDIS) {
    redis = await RedisServer.start(path.join(tmp, 'redis'));
    workers = [0, 1].map(() => new WorkerProc(redis!.url));
    await Promise.all(workers.map((w) => w.ready()));
  }
});

after(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await redis?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('extraction on two workers through Redis gives the local img_db, bad images reported; a rerun extracts only the missing images', { skip: HAVE_REDIS ? false : NO_REDIS }, async () => {
  const local = await extract(path.join(tmp, 'local'), ['--threads', '1']);
  assert.equal(local.code, 1, local.err);
  const out = path.join(tmp, 'queued');
  const q = await extract(out, ['--redis', redis!.url, '--batch-images', '2']);
  assert.equal(q.code, 1, q.err);
  assert.equal(q.json.done, 4);
  assert.equal(q.json.failed, 1);
  assert.match(q.err, /broken\.png: .*not a JPEG, PNG or WebP/);
  const a = ImgDb.open(path.join(tmp, 'local'));
  const b = ImgDb.open(out);
  try {
    for (const k of ['img0.npz', 'img1.npz', 'again.npz', 'more.npz']) {
      const x = a.get(k);
      const y = b.get(k);
      assert.equal(y.nbb, x.nbb, k);
      assert.deepEqual(y.features, x.features, k);
      assert.deepEqual(y.normBb, x.normBb, k);
      assert.deepEqual(y.softLabels, x.softLabels, k);
    }
  } finally {
    a.close();
    b.close();
  }
  // Both workers took batches (5 images in batches of 2: [again, broken], [img0, img1], [more]).
  assert.ok(workers.every((w) => /extract-batch, attempt 1\) started/.test(w.log)), workers.map((w) => w.log).join('\n'));
  // The failure keeps the cache: a rerun has only the broken image to try (and reports it again).
  fs.rmSync(path.join(out, '.extract-cache', 'more.npz'));
  const again = await extract(out, ['--redis', redis!.url, '--batch-images', '2']);
  assert.equal(again.code, 1, again.err);
  assert.equal(again.json.resumed, 3);
  assert.equal(again.json.extracted, 1);
  assert.equal(again.json.done, 4);
});

test('--queue or --batch-images without --redis, and a bad --redis URL, are refused naming the argument', async () => {
  for (const [argv, re] of [
    [['--batch-images', '2'], /--batch-images needs --redis URL/],
    [['--queue', 'q'], /--queue needs --redis URL/],
    [['--redis', 'redis://127.0.0.1:notaport'], /--redis redis:\/\/127\.0\.0\.1:notaport/],
  ] as Array<[string[], RegExp]>) {
    const err = sink();
    const code = await runExtract(['--detector', det, '--images-dir', photos, '--out', path.join(tmp, 'x'), ...argv], { stderr: err, stdout: sink(), signal: new AbortController().signal });
    assert.equal(code, 2);
    assert.match(err.text, re);
  }
});
