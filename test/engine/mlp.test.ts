/**
 * End-to-end training through the engine: a two-layer MLP (linear-gelu-linear) fits a small
 * non-linear regression task with Adam written here on the host Float32Arrays. One session
 * run per step computes the loss and every parameter gradient.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, HostTensor, compile, f32, gelu, grad, linear, meanAll, mul, sessionStats, sub } from '../../src/engine/index.js';
import { Rng } from '../../src/util/rng.js';

const IN = 4;
const HIDDEN = 32;
const N = 128;

function target(x: Float32Array, i: number): number {
  const [a, b, c, d] = [x[i * IN], x[i * IN + 1], x[i * IN + 2], x[i * IN + 3]];
  return Math.sin(2 * a) + b * c - 0.5 * d * d;
}

class Adam {
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private t = 0;
  constructor(
    private readonly params: Float32Array[],
    private readonly lr: number,
    private readonly beta1 = 0.9,
    private readonly beta2 = 0.999,
    private readonly eps = 1e-8,
  ) {
    this.m = params.map((p) => new Float32Array(p.length));
    this.v = params.map((p) => new Float32Array(p.length));
  }
  step(grads: Float32Array[]): void {
    this.t++;
    const c1 = 1 - this.beta1 ** this.t;
    const c2 = 1 - this.beta2 ** this.t;
    this.params.forEach((p, k) => {
      const g = grads[k];
      const m = this.m[k];
      const v = this.v[k];
      for (let i = 0; i < p.length; i++) {
        m[i] = this.beta1 * m[i] + (1 - this.beta1) * g[i];
        v[i] = this.beta2 * v[i] + (1 - this.beta2) * g[i] * g[i];
        p[i] -= (this.lr * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + this.eps);
      }
    });
  }
}

test('a linear-gelu-linear MLP fits a regression task with Adam', async (t) => {
  const rng = new Rng(42, 'mlp');
  const g = new Graph('mlp');
  const x = g.input('x', 'float32', ['N', IN]);
  const y = g.input('y', 'float32', ['N', 1]);
  const names = ['w1', 'b1', 'w2', 'b2'] as const;
  const shapes: Record<(typeof names)[number], number[]> = { w1: [HIDDEN, IN], b1: [HIDDEN], w2: [1, HIDDEN], b2: [1] };
  const p = Object.fromEntries(names.map((n) => [n, g.param(n, shapes[n])])) as Record<(typeof names)[number], ReturnType<Graph['param']>>;
  const pred = linear(gelu(linear(x, p.w1, p.b1)), p.w2, p.b2);
  const err = sub(pred, y);
  const loss = meanAll(mul(err, err));
  const grads = grad(
    loss,
    names.map((n) => p[n]),
  );
  const program = compile(g, { loss, ...Object.fromEntries(names.map((n, k) => [`g_${n}`, grads[k]!])) });

  // PyTorch-style init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  const values = names.map((n) => {
    const fanIn = shapes[n].length === 2 ? shapes[n][1] : n === 'b1' ? IN : HIDDEN;
    const bound = 1 / Math.sqrt(fanIn);
    return Float32Array.from({ length: shapes[n].reduce((a, b) => a * b, 1) }, () => (rng.uniform() * 2 - 1) * bound);
  });
  const xs = Float32Array.from({ length: N * IN }, () => rng.uniform() * 2 - 1);
  const ys = Float32Array.from({ length: N }, (_, i) => target(xs, i));
  const feeds = new Map<string, HostTensor>([
    ['x', f32([N, IN], xs)],
    ['y', f32([N, 1], ys)],
  ]);
  names.forEach((n, k) => feeds.set(n, f32(shapes[n], values[k])));

  const adam = new Adam(values, 0.01);
  const sessionsBefore = sessionStats.created;
  const losses: number[] = [];
  const start = Date.now();
  for (let step = 0; step < 300; step++) {
    const out = await program.run(feeds);
    losses.push(out.get('loss')!.data[0] as number);
    adam.step(names.map((n) => out.get(`g_${n}`)!.data as Float32Array));
  }
  const elapsed = Date.now() - start;
  const first = losses[0];
  const last = losses[losses.length - 1];
  t.diagnostic(`mse ${first.toFixed(4)} -> ${last.toFixed(5)} in 300 Adam steps, ${elapsed} ms`);
  assert.ok(losses.every(Number.isFinite), 'every loss is finite');
  assert.ok(last < first / 20, `loss ${first.toFixed(4)} -> ${last.toFixed(4)} should drop more than 20x`);
  // No per-step session creation; speed itself is measured by bench/, not asserted here (timings on a shared CI machine are noise).
  assert.equal(sessionStats.created - sessionsBefore, 1, 'all 300 steps run in one session');
});
