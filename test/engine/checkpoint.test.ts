/**
 * Activation checkpointing (issue 19): a training graph whose encoder layers are recomputed in the
 * backward pass gives the same loss and gradients as the plain one, dropout included; ONNX
 * Runtime's optimizer does not merge the recomputation back into the forward pass; and dropout's
 * byte masks give exactly what the earlier float masks (0 or 1/keep, from the same stream) gave.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { Graph, add, checkpoint, compile, dropout, f32, grad, linear, mul, sumAll, tanh } from '../../src/engine/index.js';
import type { HostTensor } from '../../src/engine/host.js';
import { PbReader } from '../../src/engine/protobuf.js';
import { Rng } from '../../src/util/rng.js';
import { PRESETS } from '../../src/model/config.js';
import { TIES, allSpecs, initParams } from '../../src/model/params.js';
import { UniterRunner } from '../../src/model/runner.js';
import { DEFAULT_OT, buildTaskGraph } from '../../src/model/task-graphs.js';
import { makeBatch } from '../../bench/uniter/workload.js';

const TINY = PRESETS.tiny;

function tinyParams(seed: number): Map<string, HostTensor> {
  return initParams(allSpecs(TINY, 'pretrain').filter((s) => !TIES[s.name]), TINY.initializer_range, seed);
}

/** op_type of every node of an ONNX model's main graph (ModelProto.graph = 7, GraphProto.node = 1, NodeProto.op_type = 4). */
function opTypes(model: Uint8Array): string[] {
  const out: string[] = [];
  const sub = (msg: Uint8Array, field: number) => [...new PbReader(msg).fields()].filter((f) => f.field === field && f.wire === 2).map((f) => f.value as Uint8Array);
  for (const graph of sub(model, 7)) for (const node of sub(graph, 1)) for (const op of sub(node, 4)) out.push(new TextDecoder().decode(op));
  return out;
}

/** Largest |a - b| over all values of two outputs. */
function maxDiff(a: HostTensor, b: HostTensor): number {
  assert.deepEqual(a.shape, b.shape);
  let m = 0;
  for (let i = 0; i < a.data.length; i++) m = Math.max(m, Math.abs(Number(a.data[i]) - Number(b.data[i])));
  return m;
}

for (const task of ['mlm', 'itm'] as const) {
  test(`checkpointed and plain ${task} training steps give the same loss and gradients (tiny model, dropout on)`, async () => {
    const params = tinyParams(4);
    const runner = new UniterRunner(TINY, params, 1);
    const batch = makeBatch(task, { examples: 4, regions: 5, wordpieces: 7 }, 3);
    const opts = { training: true, grads: true, ot: task === 'itm' ? DEFAULT_OT : null, dropout: { seed: 9, step: 2 } };
    const plain = await runner.run(task, batch, opts);
    const ckpt = await runner.run(task, batch, { ...opts, checkpointActivations: true });
    assert.deepEqual([...ckpt.keys()].sort(), [...plain.keys()].sort());
    let grads = 0;
    for (const [name, ref] of plain) {
      const d = maxDiff(ref, ckpt.get(name)!);
      assert.ok(d <= 1e-6, `${task} ${name}: checkpointed differs from plain by ${d}`);
      if (name.startsWith('grad.uniter.encoder.')) grads++;
    }
    assert.ok(grads >= 2 * 16, `every encoder parameter has a gradient (${grads})`);
    assert.ok(Number(plain.get('loss')!.data[0]) > 0);
  });
}

test('the recomputed layers survive ONNX Runtime optimisation (no merge with the forward pass)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-ckpt-'));
  try {
    const products = async (checkpointActivations: boolean) => {
      const tg = buildTaskGraph(TINY, 'mlm', { training: true, grads: true, checkpointActivations });
      const program = compile(tg.graph, tg.outputs, { threads: 1 });
      const file = path.join(dir, `${checkpointActivations}.onnx`);
      await ort.InferenceSession.create(program.model.bytes, { graphOptimizationLevel: 'all', optimizedModelFilePath: file });
      // Matrix products among the optimised model's nodes (Gemm, MatMul and their fusions).
      return opTypes(fs.readFileSync(file)).filter((op) => /^(Fused)?(Gemm|MatMul)$/.test(op)).length;
    };
    const plain = await products(false);
    const ckpt = await products(true);
    // Each layer's forward has four linear products and two attention products; all six run again.
    assert.ok(ckpt - plain >= 6 * TINY.num_hidden_layers, `optimised graphs: ${plain} products plain, ${ckpt} checkpointed`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('checkpoint: gradients equal the plain graph; a value used outside the region is refused', async () => {
  const build = (ckpt: boolean, leak = false) => {
    const g = new Graph('ckpt');
    const x = g.input('x', 'float32', ['B', 3]);
    const w = g.param('w', [3, 3]);
    const body = (h: ReturnType<typeof g.input>) => add(tanh(linear(h, w)), h);
    let inner: ReturnType<typeof g.input> | null = null;
    const y = ckpt
      ? checkpoint(x, (h) => {
          inner = tanh(linear(h, w));
          return add(inner, h);
        })
      : body(x);
    const loss = sumAll(mul(leak && inner ? add(y, inner) : y, y));
    const [gw, gx] = grad(loss, [w, x]);
    return { g, outputs: { loss, gw: gw!, gx: gx! } };
  };
  const rng = new Rng(1, 'ckpt-test');
  const feeds = { x: f32([2, 3], Array.from({ length: 6 }, () => rng.normal())), w: f32([3, 3], Array.from({ length: 9 }, () => rng.normal())) };
  const a = build(false);
  const b = build(true);
  assert.equal(b.g.segments.length, 1);
  const oa = await compile(a.g, a.outputs).run(feeds);
  const ob = await compile(b.g, b.outputs).run(feeds);
  for (const k of ['loss', 'gw', 'gx']) assert.ok(maxDiff(oa.get(k)!, ob.get(k)!) <= 1e-6, k);
  assert.throws(() => build(true, true), /segment .* used outside it/);
  assert.throws(() => checkpoint(a.outputs.loss, (h) => checkpoint(h, (z) => tanh(z))), /do not nest/);
});

test('dropout with byte masks equals the earlier float-mask product x * (0 or 1/keep), bitwise, forward and backward', async () => {
  const p = 0.1;
  const g = new Graph('drop');
  const x = g.input('x', 'float32', ['B', 'H']);
  const y = dropout(x, p, true);
  const loss = sumAll(mul(y, x));
  const [gx] = grad(loss, [x]);
  const program = compile(g, { y, gx: gx! });
  const mask = program.model.inputs.find((i) => i.role === 'dropout')!;
  assert.equal(mask.dtype, 'bool', 'masks are fed as bytes');
  const rng = new Rng(5, 'drop-test');
  const n = 4096;
  const xs = Float32Array.from({ length: n }, () => rng.normal() * 3);
  const seed = { seed: 11, step: 7 };
  const out = await program.run({ x: f32([64, 64], xs) }, seed);
  // The float mask the engine fed before (same stream, same draws, values 0 or 1/keep in float32).
  const floatMask = new Float32Array(n);
  new Rng(seed.seed, 'dropout', seed.step, mask.name).fillThreshold(floatMask, (1 - p) * 4294967296, 1 / (1 - p));
  const ys = out.get('y')!.data as Float32Array;
  const gs = out.get('gx')!.data as Float32Array;
  let kept = 0;
  for (let i = 0; i < n; i++) {
    const yOld = Math.fround(xs[i] * floatMask[i]);
    // d/dx sum(y * x) = mask * x + y: the backward of dropout is the same masked scaling.
    const gOld = Math.fround(Math.fround(xs[i] * floatMask[i]) + yOld);
    assert.ok(ys[i] === yOld || (ys[i] === 0 && yOld === 0), `y[${i}] ${ys[i]} vs ${yOld}`);
    assert.ok(gs[i] === gOld || (gs[i] === 0 && gOld === 0), `gx[${i}] ${gs[i]} vs ${gOld}`);
    if (floatMask[i] !== 0) kept++;
  }
  assert.ok(Math.abs(kept / n - (1 - p)) < 0.02, `kept fraction ${kept / n}`);
});
