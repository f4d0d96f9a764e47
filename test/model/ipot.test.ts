import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, compile, f32, bool } from '../../src/engine/index.js';
import { otDistance } from '../../src/model/uniter.js';
import { Rng } from '../../src/util/rng.js';

test('IPOT plan: uniform marginals over real tokens/regions, total mass 1, zero at padding', async () => {
  const B = 3, M = 6, N = 5, D = 8;
  const txtLens = [6, 3, 4];
  const imgLens = [5, 2, 4];
  const rng = new Rng(7);
  const txt = new Float32Array(B * M * D).map(() => rng.normal());
  const img = new Float32Array(B * N * D).map(() => rng.normal());
  const txtPad = Array.from({ length: B * M }, (_, i) => (i % M) >= txtLens[Math.floor(i / M)]);
  const imgPad = Array.from({ length: B * N }, (_, i) => (i % N) >= imgLens[Math.floor(i / N)]);
  const g = new Graph();
  const r = otDistance(g.input('t', 'float32', ['B', 'M', D]), g.input('v', 'float32', ['B', 'N', D]), g.input('tp', 'bool', ['B', 'M']), g.input('vp', 'bool', ['B', 'N']), 0.5, 50);
  const out = await compile(g, { T: r.plan }).run({ t: f32([B, M, D], txt), v: f32([B, N, D], img), tp: bool([B, M], txtPad), vp: bool([B, N], imgPad) });
  const T = out.get('T')!.data as Float32Array; // [B, N, M]
  for (let b = 0; b < B; b++) {
    let total = 0;
    for (let j = 0; j < N; j++) {
      let row = 0;
      for (let i = 0; i < M; i++) {
        const v = T[(b * N + j) * M + i];
        if (j >= imgLens[b] || i >= txtLens[b]) assert.equal(v, 0);
        row += v;
        total += v;
      }
      if (j < imgLens[b]) assert.ok(Math.abs(row - 1 / imgLens[b]) < 2e-3, `image marginal ${row} vs ${1 / imgLens[b]}`);
    }
    for (let i = 0; i < txtLens[b]; i++) {
      let col = 0;
      for (let j = 0; j < N; j++) col += T[(b * N + j) * M + i];
      assert.ok(Math.abs(col - 1 / txtLens[b]) < 2e-3, `text marginal ${col} vs ${1 / txtLens[b]}`);
    }
    assert.ok(Math.abs(total - 1) < 1e-4, `total mass ${total}`);
  }
});
