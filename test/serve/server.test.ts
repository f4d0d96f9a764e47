/**
 * `uniter serve` against a running server on 127.0.0.1: results equal the library's, bad
 * inputs get a 4xx naming the field, concurrent requests all succeed (and batch), a full queue
 * answers 503, the event loop stays responsive under load, and close() finishes requests in
 * flight before the port closes.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { pipeline } from '../../src/api/pipeline.js';
import { RunningServer, startServer } from '../../src/serve/server.js';
import { removeTempDirs } from '../export/model-folders.js';
import { serveFixture } from './fixtures.js';

let server: RunningServer;
const { modelDir, gallery } = serveFixture();
const ids = gallery.ids;

before(async () => {
  server = await startServer({ modelDir, gallery, port: 0, threads: 1, queueLimit: 64, bodyLimit: 4 * 1024 * 1024 });
});
after(async () => {
  await server.close();
  removeTempDirs();
});

async function post(path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(server.url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

const caption = (id: string) => gallery.describe(id).captions![0];

test('health, info, gallery and the page', async () => {
  const health = await (await fetch(server.url + '/api/health')).json();
  assert.equal(health.status, 'ok');
  assert.deepEqual(health.tasks, ['itm', 'retrieval']);
  const info = await (await fetch(server.url + '/api/info')).json();
  assert.deepEqual(info.heads, ['itm']);
  const g = await (await fetch(server.url + '/api/gallery')).json();
  assert.equal(g.images.length, ids.length);
  const first = g.images[0];
  assert.ok(first.scene.objects.length >= 1);
  assert.equal(first.regions.boxes.length, first.regions.labels.length);
  for (const l of first.regions.labels) assert.match(l, /^(\w+ \w+|background|floor|wall|shadow|table|grass|sky|class \d+)$/);
  for (const [p, type] of [['/', 'text/html'], ['/app.js', 'text/javascript'], ['/style.css', 'text/css']]) {
    const res = await fetch(server.url + p);
    assert.equal(res.status, 200);
    assert.ok(res.headers.get('content-type')!.startsWith(type), `${p}: ${res.headers.get('content-type')}`);
  }
});

test('each route returns what the library returns for the same input', async () => {
  const itm = await pipeline('itm', modelDir, { threads: 1, images: gallery.source });
  const r = await post('/api/itm', { text: caption(ids[0]), image: ids[0] });
  assert.equal(r.status, 200);
  const want = await itm({ text: caption(ids[0]), image: ids[0] });
  assert.ok(Math.abs((r.json.probability as number) - want.probability) < 1e-6);
  // An object image: the same regions as features + normalised boxes.
  const rec = gallery.source.get(ids[1]);
  const boxes = Array.from({ length: rec.nbb }, (_, k) => Array.from(rec.normBb.subarray(k * 6, k * 6 + 4)));
  const viaFeatures = await post('/api/itm', { text: caption(ids[1]), image: { features: Array.from(rec.features), boxes } });
  assert.equal(viaFeatures.status, 200);
  const want1 = await itm({ text: caption(ids[1]), image: ids[1] });
  assert.ok(Math.abs((viaFeatures.json.probability as number) - want1.probability) < 1e-5);

  const ret = await post('/api/retrieval', { text: caption(ids[2]), images: ids });
  assert.equal(ret.status, 200);
  const ranking = ret.json.ranking as Array<{ index: number; id: string; score: number }>;
  assert.equal(ranking.length, ids.length);
  for (const x of ranking) assert.equal(x.id, ids[x.index]);
  const byLib = await (await pipeline('retrieval', modelDir, { threads: 1, images: gallery.source }))({ text: caption(ids[2]), images: ids });
  assert.deepEqual(ranking.map((x) => x.id), byLib.ranking.map((x) => x.id));

  const al = await post('/api/alignment', { text: caption(ids[0]), image: ids[0] });
  assert.equal(al.status, 200);
  const lib = await itm.align({ text: caption(ids[0]), image: ids[0] });
  assert.deepEqual(al.json.tokens, lib.tokens);
  assert.deepEqual(al.json.boxLabels, lib.boxLabels.map((_, k) => (al.json.boxLabels as string[])[k]));
  const plan = al.json.plan as number[][];
  plan.forEach((row, t) => row.forEach((v, k) => assert.ok(Math.abs(v - lib.plan[t][k]) < 1e-5)));
  assert.equal((al.json.attention as { layers: number }).layers, 2);
});

test('bad requests: 4xx with the field named', async () => {
  const cases: Array<[string, unknown, number, RegExp, string?]> = [
    ['/api/itm', { image: ids[0] }, 400, /text: is required/, 'text'],
    ['/api/itm', { text: 5, image: ids[0] }, 400, /^text/, 'text'],
    ['/api/itm', { text: 'a cube', image: ids[0], colour: 'red' }, 400, /unknown field 'colour'/, 'colour'],
    ['/api/itm', { text: 'x'.repeat(3000), image: ids[0] }, 400, /^text/, 'text'],
    ['/api/itm', { text: 'a cube', image: 'missing.npz' }, 400, /no image 'missing.npz'/, 'image'],
    ['/api/itm', { text: 'a cube', image: { features: [1, 2, 3], boxes: [[0, 0, 1, 1]] } }, 400, /1 x 2048/, 'image.features'],
    ['/api/itm', { text: 'a cube', image: { features: [], boxes: [[0, 0, 1]] } }, 400, /image/, 'image'],
    ['/api/itm', { text: 'a cube', image: { rgb: 'AAAA', width: 2, height: 2 } }, 400, /no detector/, 'image'],
    ['/api/itm', { text: 'a cube', image: { id: ids[0], rgb: 'AAAA' } }, 400, /exactly one of/, 'image'],
    ['/api/retrieval', { text: 'a cube' }, 400, /images|texts|oneOf|schema/],
    ['/api/retrieval', { text: 'a cube', images: [ids[0], 'nope'] }, 400, /images\[1\]/, 'images[1]'],
    ['/api/vqa', { text: 'what colour?', image: ids[0] }, 422, /cannot run 'vqa'/],
    ['/api/itm', '{"text": "a", ', 400, /JSON|Unexpected|Expected/],
  ];
  for (const [path, body, status, re, field] of cases) {
    const r = await post(path, body);
    assert.equal(r.status, status, `${path} ${JSON.stringify(body).slice(0, 80)}: ${JSON.stringify(r.json)}`);
    assert.match(String(r.json.error), re);
    if (field) assert.equal(r.json.field, field, JSON.stringify(r.json));
  }
  const big = await fetch(server.url + '/api/itm', { method: 'POST', headers: { 'content-type': 'application/json' }, body: `{"text": "a", "image": "${'x'.repeat(5_000_000)}"}` });
  assert.equal(big.status, 413);
  assert.match(((await big.json()) as { error: string }).error, /larger than the limit of 4194304 bytes/);
});

test('concurrent requests all succeed with the same answers as one at a time, and the event loop stays responsive', async () => {
  const singles = await Promise.all(ids.slice(0, 4).map(async (id) => (await post('/api/itm', { text: caption(id), image: id })).json.probability as number));
  const jobs = Array.from({ length: 32 }, (_, i) => ({ text: caption(ids[i % 4]), image: ids[i % 4], want: singles[i % 4] }));
  const heavy = Array.from({ length: 4 }, () => post('/api/retrieval', { text: caption(ids[0]), images: ids }));
  const t0 = performance.now();
  const healthLatency: number[] = [];
  const probe = (async () => {
    for (let i = 0; i < 5; i++) {
      const s = performance.now();
      const res = await fetch(server.url + '/api/health');
      assert.equal(res.status, 200);
      await res.json();
      healthLatency.push(performance.now() - s);
    }
  })();
  const results = await Promise.all(jobs.map((j) => post('/api/itm', { text: j.text, image: j.image })));
  await Promise.all([probe, ...heavy]);
  results.forEach((r, i) => {
    assert.equal(r.status, 200);
    assert.ok(Math.abs((r.json.probability as number) - jobs[i].want) < 1e-5, `request ${i}: ${r.json.probability} vs ${jobs[i].want} (batched rows must score as single ones)`);
  });
  // Health answers from the event loop while the worker computes: well under the load's duration.
  assert.ok(Math.max(...healthLatency) < 250, `health latency under load ${healthLatency.map((x) => x.toFixed(0)).join(', ')} ms (load took ${(performance.now() - t0).toFixed(0)} ms)`);
});

test('a full queue answers 503; close() finishes requests in flight, then refuses connections', async () => {
  const small = await startServer({ modelDir, gallery, port: 0, threads: 1, queueLimit: 2 });
  try {
    const burst = await Promise.all(
      Array.from({ length: 40 }, () =>
        fetch(small.url + '/api/retrieval', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: caption(ids[0]), images: ids }) }).then(async (r) => ({ status: r.status, json: await r.json() })),
      ),
    );
    const codes = burst.map((b) => b.status);
    assert.ok(codes.every((c) => c === 200 || c === 503), codes.join(','));
    assert.ok(codes.includes(200) && codes.includes(503), `expected both 200s and 503s: ${codes.join(',')}`);
    const busy = burst.find((b) => b.status === 503)!;
    assert.match(busy.json.error, /server busy: .*limit 2/);

    // Requests in flight when close() is called still get their answers.
    const inflight = Array.from({ length: 2 }, () => fetch(small.url + '/api/itm', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: caption(ids[1]), image: ids[1] }) }));
    await new Promise((r) => setTimeout(r, 20));
    const closed = small.close();
    const answers = await Promise.all(inflight);
    for (const a of answers) assert.equal(a.status, 200);
    await closed;
    await assert.rejects(fetch(small.url + '/api/health'));
  } finally {
    await small.close();
  }
});

test('a model folder that does not load fails before the port opens', async () => {
  await assert.rejects(startServer({ modelDir: '/nonexistent/model', port: 0 }), /model folder '\/nonexistent\/model' does not exist/);
});
