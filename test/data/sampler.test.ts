import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/util/rng.js';
import type { Batch, ImageRecord } from '../../src/data/types.js';
import { MemoryImageSource, MemoryTextSource } from '../../src/data/golden-batches.js';
import { ItmDataset, MlmDataset, type TaskDataset } from '../../src/data/datasets.js';
import { ExampleCountSampler, type LengthSource, type LoadedBatch, TaskLoader, type TaskLoaderOptions, TokenBucketSampler, tokenBucketBatches } from '../../src/data/sampler.js';
import { toNumbers } from '../../src/engine/host.js';
import type { SpecialIds } from '../../src/data/masking.js';

const IDS: SpecialIds = { cls: 101, sep: 102, mask: 103, vRange: [106, 400] };

function source(txtLens: number[], nbb: number[]): LengthSource {
  return { txtLens: () => txtLens, lens: () => txtLens.map((t, i) => t + nbb[i]) };
}

function randomSource(n: number, seed: number): LengthSource & { txt: number[] } {
  const rng = new Rng(seed);
  const txt = Array.from({ length: n }, () => 1 + rng.int(80));
  const nbb = Array.from({ length: n }, () => 10 + rng.int(91));
  return { ...source(txt, nbb), txt };
}

function epoch(s: TokenBucketSampler): number[][] {
  const first = s.next();
  const out = [first];
  while (s.position < s.epochLength) out.push(s.next());
  return out;
}

test('long captions are dropped and counted, never batched', () => {
  const src = randomSource(500, 1);
  const sampler = new TokenBucketSampler(src, { batchTokens: 4096, dropLast: false, maxTxtLen: 60 }, new Rng(1));
  const expectedDropped = src.txt.map((l, i) => [l, i]).filter(([l]) => l > 60).map(([, i]) => i);
  assert.ok(expectedDropped.length > 50);
  assert.equal(sampler.dropped, expectedDropped.length);
  assert.deepEqual(sampler.droppedIndices, expectedDropped);
  const seen = epoch(sampler).flat();
  assert.equal(seen.length, 500 - expectedDropped.length, 'without dropLast every kept example appears');
  assert.equal(new Set(seen).size, seen.length, 'once per epoch');
  for (const i of seen) assert.ok(src.txt[i] <= 60);
  const all = new TokenBucketSampler(src, { batchTokens: 4096, dropLast: false }, new Rng(1));
  assert.equal(all.dropped, 0, 'no filter without maxTxtLen');
});

test('training batches are multiples of 8 within the token budget (bucket max length)', () => {
  const src = randomSource(3000, 2);
  const lens = src.lens();
  const opts = { batchTokens: 2048, dropLast: true, maxTxtLen: 60, bucketSize: 512 };
  const batches = epoch(new TokenBucketSampler(src, opts, new Rng(2)));
  assert.ok(batches.length > 10);
  for (const b of batches) {
    assert.equal(b.length % 8, 0, `batch size ${b.length}`);
    const maxLen = Math.max(...b.map((i) => lens[i]));
    assert.ok(maxLen * b.length <= opts.batchTokens, `${b.length} x ${maxLen} tokens`);
  }
});

test('max length is reset per bucket, not per batch (official quirk); last batch dropped in training', () => {
  // 32 examples of distinct lengths 1..32 in one bucket, 512 tokens: 512/32 = 16 per batch for
  // every batch of the bucket, although the second batch's own max is 16.
  const lens = Array.from({ length: 32 }, (_, i) => i + 1);
  const kept = lens.map((_, i) => i);
  const eval_ = tokenBucketBatches(kept, lens, new Rng(3), { batchTokens: 512, dropLast: false });
  assert.deepEqual(eval_.map((b) => [...b].sort((x, y) => x - y)).sort((a, b) => a[0] - b[0]), [
    Array.from({ length: 16 }, (_, i) => i),
    Array.from({ length: 16 }, (_, i) => i + 16),
  ]);
  const train = tokenBucketBatches(kept, lens, new Rng(3), { batchTokens: 512, dropLast: true });
  assert.deepEqual(train.map((b) => [...b].sort((x, y) => x - y)), [Array.from({ length: 16 }, (_, i) => i + 16)], 'longest first; the last batch is dropped');
  // Two buckets of 16: each sorted and batched on its own.
  const two = tokenBucketBatches(kept, lens, new Rng(3), { batchTokens: 8 * 32, dropLast: false, bucketSize: 16 });
  assert.equal(two.flat().length, 32);
  assert.ok(two.every((b) => b.length === 8));
  assert.throws(() => tokenBucketBatches(kept, lens, new Rng(3), { batchTokens: 100, dropLast: false }), /batchTokens 100 cannot hold 8 examples of length 32/);
});

test('same seed gives the same batches; another seed does not', () => {
  const src = randomSource(800, 4);
  const opts = { batchTokens: 4096, dropLast: true, maxTxtLen: 60 };
  const a = epoch(new TokenBucketSampler(src, opts, new Rng(7)));
  const b = epoch(new TokenBucketSampler(src, opts, new Rng(7)));
  const c = epoch(new TokenBucketSampler(src, opts, new Rng(8)));
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

test('sampler resume mid-epoch and across epochs gives the same remaining batches', () => {
  const src = randomSource(600, 5);
  const opts = { batchTokens: 4096, dropLast: true, maxTxtLen: 60 };
  const ref = new TokenBucketSampler(src, opts, new Rng(9));
  const n = ref.epochLength;
  for (let k = 0; k < n - 2; k++) ref.next();
  const saved = JSON.parse(JSON.stringify(ref.state()));
  const expected = Array.from({ length: n }, () => ref.next()); // 2 of epoch 0, then into epoch 1
  assert.equal(ref.epoch, 1);
  const resumed = new TokenBucketSampler(src, opts, new Rng(12345));
  resumed.restore(saved);
  assert.deepEqual(Array.from({ length: n }, () => resumed.next()), expected);
  assert.throws(() => resumed.restore({ ...saved, position: n + 1 }), /past the/);
});

function world(seed: number, n: number): { txt: MemoryTextSource; img: MemoryImageSource } {
  const rng = new Rng(seed);
  const imgs = new Map<string, ImageRecord>();
  for (let k = 0; k < 12; k++) {
    const nbb = 2 + rng.int(8);
    imgs.set(`img${k}`, { nbb, features: Float32Array.from({ length: nbb * 4 }, () => rng.uniform()), normBb: Float32Array.from({ length: nbb * 6 }, () => rng.uniform()) });
  }
  const txt = new MemoryTextSource(
    Array.from({ length: n }, (_, i) => ({ id: `t${i}`, input_ids: Array.from({ length: 1 + rng.int(12) }, () => rng.int(106, 400)), img_fname: `img${rng.int(12)}` })),
  );
  return { txt, img: new MemoryImageSource(imgs, 4, 0) };
}

function sameBatch(a: Batch, b: Batch): boolean {
  if ([...a.keys()].join() !== [...b.keys()].join()) return false;
  for (const [k, t] of a) {
    const u = b.get(k)!;
    if (t.shape.join() !== u.shape.join() || toNumbers(t).join() !== toNumbers(u).join()) return false;
  }
  return true;
}

function checkResume<E>(make: () => TaskDataset<E>, opts: TaskLoaderOptions): LoadedBatch[] {
  const ref = new TaskLoader(make(), opts);
  const epochLen = ref.sampler.epochLength;
  assert.ok(epochLen >= 3, `several batches per epoch (${epochLen})`);
  ref.next();
  const saved = ref.state();
  const expected = Array.from({ length: epochLen + 2 }, () => ref.next());
  const resumed = new TaskLoader(make(), opts);
  resumed.restore(saved);
  const got = Array.from({ length: epochLen + 2 }, () => resumed.next());
  got.forEach((g, k) => {
    assert.deepEqual(g.ids, expected[k].ids, `batch ${k} ids`);
    assert.equal(g.epoch, expected[k].epoch);
    assert.ok(sameBatch(g.batch, expected[k].batch), `${g.task} batch ${k} tensors`);
  });
  assert.equal(expected.at(-1)!.epoch, 1, 'epochs restart when exhausted');
  return expected;
}

test('task loader: resumed MLM and ITM loaders yield identical batches (masks and negatives included)', () => {
  const { txt, img } = world(10, 120);
  const opts = { seed: 42, batchTokens: 160, dropLast: true, maxTxtLen: 10 };
  const long = txt.ids().filter((id) => txt.len(id) > 10).length;
  assert.ok(long > 0);
  assert.equal(new TaskLoader(new MlmDataset(txt, img, { specialIds: IDS }), opts).dropped, long, 'loader reports dropped captions');
  const mlm = checkResume(() => new MlmDataset(txt, img, { specialIds: IDS }), opts);
  assert.ok(mlm.every((b) => b.batch.has('txt_labels')));
  const itm = checkResume(() => new ItmDataset(txt, img, { specialIds: IDS }), opts);
  const labels = itm.filter((b) => b.epoch === 0).flatMap((b) => toNumbers(b.batch.get('targets')!));
  assert.ok(labels.includes(0) && labels.includes(1), 'both labels occur');
});

test('ITM loader re-draws negatives each epoch', () => {
  const { txt, img } = world(11, 80);
  const ds = new ItmDataset(txt, img, { specialIds: IDS });
  const loader = new TaskLoader(ds, { seed: 1, batchTokens: 10_000, dropLast: false });
  const n = loader.sampler.epochLength;
  for (let k = 0; k < n; k++) loader.next();
  const firstEpoch = ds.ids.map((_, i) => ds.pair(i));
  loader.next();
  assert.equal(loader.sampler.epoch, 1);
  assert.notDeepEqual(ds.ids.map((_, i) => ds.pair(i)), firstEpoch);
});

test('example-count sampler keeps order without shuffle and covers every example', () => {
  const src = source([3, 4, 5, 6, 7], [1, 1, 1, 1, 1]);
  const s = new ExampleCountSampler(src, { batchSize: 2, shuffle: false, dropLast: false }, new Rng(1));
  assert.deepEqual([s.next(), s.next(), s.next()], [[0, 1], [2, 3], [4]]);
  assert.deepEqual(s.next(), [0, 1], 'next epoch');
  const shuffled = new ExampleCountSampler(src, { batchSize: 2, shuffle: true, dropLast: true }, new Rng(1));
  const e = [shuffled.next(), shuffled.next()];
  assert.equal(shuffled.epochLength, 2);
  assert.equal(new Set(e.flat()).size, 4);
});
