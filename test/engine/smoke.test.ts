import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, compile, f32, linear, gelu, meanAll, mul, grad, sub } from '../../src/engine/index.js';

test('smoke: linear + gelu forward and grad', async () => {
  const g = new Graph();
  const x = g.input('x', 'float32', ['B', 3]);
  const w = g.param('w', [2, 3]);
  const b = g.param('b', [2]);
  const y = gelu(linear(x, w, b));
  const loss = meanAll(mul(y, y));
  const [gw, gb] = grad(loss, [w, b]);
  const p = compile(g, { y, loss, gw: gw!, gb: gb! });
  const out = await p.run({ x: f32([2, 3], [1, 2, 3, 4, 5, 6]), w: f32([2, 3], [0.1, 0.2, 0.3, -0.1, 0.5, 0.2]), b: f32([2], [0.1, -0.2]) });
  console.log([...out.entries()].map(([k, v]) => `${k}: [${v.shape}] ${Array.from(v.data as Float32Array).map((z) => z.toFixed(4))}`).join('\n'));
  assert.equal(out.get('y')!.shape.join(), '2,2');
});
