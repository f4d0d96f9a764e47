/**
 * The optimizer part of a training step at UNITER-base size (issue 19): gradient clipping + AdamW
 * as the trainers ran it before (global norm, gradients scaled in place when above the limit, then
 * AdamW.step) against now (the norm only when clipping is on, the clipping factor applied inside
 * AdamW.step). Both in this process, on identical parameter/gradient copies, alternating which
 * goes first each round; reports medians and the median of per-round ratios, and the load.
 *
 *   node dist/bench/optimizer.js [--rounds 6] [--max-norm 5] [--out bench/results/optimizer.json]
 *
 * The gradients are drawn so that their global norm exceeds --max-norm (the case with the extra
 * pass); --max-norm -1 measures clipping switched off.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PRESETS } from '../src/model/config.js';
import { allSpecs, TIES } from '../src/model/params.js';
import { AdamW, clipGradNorm, clipScale, globalGradNorm } from '../src/pretrain/optimizer.js';
import { Rng } from '../src/util/rng.js';
import { loadAverage, median, summarize } from './harness.js';

function flag(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

const rounds = Number(flag('rounds', '6'));
const maxNorm = Number(flag('max-norm', '5'));
const out = flag('out', '');
if (!(Number.isInteger(rounds) && rounds >= 1)) throw new Error(`--rounds must be an integer >= 1, got ${rounds}`);
if (!Number.isFinite(maxNorm)) throw new Error(`--max-norm must be a number, got ${maxNorm}`);

const specs = allSpecs(PRESETS.base, 'pretrain').filter((s) => !TIES[s.name]);
const shapes = new Map(specs.map((s) => [s.name, s.shape]));
const rng = new Rng(19, 'bench-optimizer');
const fill = (n: number, scale: number) => {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.uniform() - 0.5) * scale;
  return a;
};
const params0 = new Map(specs.map((s) => [s.name, fill(s.shape.reduce((a, b) => a * b, 1), 0.04)]));
const grads0 = new Map(specs.map((s) => [s.name, fill(s.shape.reduce((a, b) => a * b, 1), 0.01)]));
const total = [...params0.values()].reduce((a, p) => a + p.length, 0);
const norm0 = globalGradNorm(grads0);

type Side = 'before' | 'now';
const sides: Record<Side, { opt: AdamW; params: Map<string, Float32Array>; seconds: number[] }> = {} as never;
for (const side of ['before', 'now'] as const) {
  const params = new Map([...params0].map(([k, v]) => [k, Float32Array.from(v)]));
  sides[side] = { opt: new AdamW(params, shapes, { weightDecay: 0.01 }), params, seconds: [] };
}
params0.clear();
const grads = new Map([...grads0].map(([k, g]) => [k, Float32Array.from(g)]));

function run(side: Side): number {
  const s = sides[side];
  // The same gradients for every run, restored outside the timed part (clipping in place changes them).
  for (const [k, g] of grads0) grads.get(k)!.set(g);
  const t = performance.now();
  if (side === 'before') {
    clipGradNorm(grads, maxNorm);
    s.opt.step(grads, 5e-5);
  } else {
    const norm = maxNorm > 0 ? globalGradNorm(grads) : null;
    s.opt.step(grads, 5e-5, norm === null ? 1 : clipScale(norm, maxNorm));
  }
  return (performance.now() - t) / 1000;
}

const loadBefore = loadAverage();
run('before'); // first steps allocate the moments: warm-up, not timed
run('now');
const ratios: number[] = [];
for (let r = 0; r < rounds; r++) {
  const order: Side[] = r % 2 === 0 ? ['before', 'now'] : ['now', 'before'];
  const t: Record<string, number> = {};
  for (const side of order) t[side] = run(side);
  sides.before.seconds.push(t.before);
  sides.now.seconds.push(t.now);
  ratios.push(t.before / t.now);
}
const loadAfter = loadAverage();
// Same updates on both sides: the parameters must agree bitwise.
let differ = 0;
for (const [k, p] of sides.before.params) {
  const q = sides.now.params.get(k)!;
  for (let i = 0; i < p.length; i++) if (!Object.is(p[i], q[i])) differ++;
}
const result = {
  bench: 'optimizer',
  date: new Date().toISOString(),
  model: 'UNITER-base pretrain parameters',
  parameters: total,
  max_norm: maxNorm,
  grad_norm: norm0,
  clipping_active: maxNorm > 0 && clipScale(norm0, maxNorm) < 1,
  rounds,
  seconds: { before: summarize(sides.before.seconds), now: summarize(sides.now.seconds) },
  speedup_paired_median: median(ratios),
  speedup_per_round: ratios,
  parameters_differing_bitwise: differ,
  load_average: { before: loadBefore, after: loadAfter },
};
console.log(JSON.stringify(result, null, 2));
if (differ) throw new Error(`optimizer bench: ${differ} parameters differ between the two paths`);
if (out) {
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(result, null, 2) + '\n');
  fs.renameSync(tmp, out);
}
