/**
 * The benchmark's own machinery (the benchmarks themselves are not run by CI): the harness,
 * the synthetic workload, the JSON-lines protocol of a child process, and the page rendered
 * from a results file.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { ChildKilledError, MemoryGuard, Server, formatTable, median, summarize } from '../../bench/harness.js';
import { renderBenchmarks, writeBenchmarksDoc } from '../../bench/report.js';
import { batchTokens, makeBatch, makeIpotInputs, readBatch, writeBatch } from '../../bench/uniter/workload.js';
import { toNumbers } from '../../src/engine/host.js';

describe('bench harness', () => {
  it('summarises samples with median and spread', () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
    assert.deepEqual(summarize([5, 1, 3]), { median: 3, min: 1, max: 5, n: 3 });
    assert.throws(() => median([]), /no values/);
  });

  it('pads table columns to the widest cell', () => {
    const t = formatTable([
      ['a', 'bb'],
      ['ccc', 'd'],
    ]);
    assert.equal(t, 'a    bb\nccc  d');
  });

  it('talks to a child process one JSON line per request and reports its errors with the label', async () => {
    const script = [
      "process.stdout.write(JSON.stringify({ready: true, pid: process.pid}) + '\\n');",
      "require('readline').createInterface({input: process.stdin}).on('line', (l) => {",
      "  if (l === 'quit') process.exit(0);",
      "  const r = JSON.parse(l);",
      "  process.stdout.write(JSON.stringify(r.fail ? {error: 'asked to fail'} : {seconds: r.n / 10, cpu_seconds: r.n / 20, echo: r.n}) + '\\n');",
      '});',
    ].join('\n');
    const { server, ready } = await Server.start('echo child', process.execPath, ['-e', script]);
    try {
      assert.equal(ready.ready, true);
      const t = await server.time({ n: 5 });
      assert.equal(t.wall, 0.5);
      assert.equal(t.cpu, 0.25);
      assert.equal(t.reply.echo, 5);
      await assert.rejects(server.request({ fail: true }), /echo child: asked to fail/);
    } finally {
      await server.quit();
    }
  });

  it('stops a child whose memory passes its limit and fails its request with the reason', { skip: process.platform !== 'linux' }, async () => {
    const script = [
      "process.stdout.write(JSON.stringify({ready: true}) + '\\n');",
      "require('readline').createInterface({input: process.stdin}).on('line', () => {",
      '  const held = [];',
      '  setInterval(() => held.push(Buffer.alloc(32 * 1024 * 1024, 1)), 20);',
      '});',
    ].join('\n');
    const guard = new MemoryGuard(0, 50);
    const { server } = await Server.start('hungry child', process.execPath, ['-e', script]);
    try {
      guard.watch(server, 256 * 1024 * 1024);
      await assert.rejects(server.request('grow'), (e: unknown) => e instanceof ChildKilledError && /passed the limit of 0\.25 GiB/.test(e.message) && /hungry child was stopped/.test(e.message));
      assert.equal(guard.events.length, 1);
      assert.ok(guard.events[0].rss_bytes > 256 * 1024 * 1024);
    } finally {
      guard.stop();
      server.kill('test cleanup');
    }
  });
});

describe('bench workload', () => {
  const shape = { examples: 4, regions: 3, wordpieces: 5 };

  it('builds ITM+WRA training batches with the official fields and OT inputs', () => {
    const b = makeBatch('itm', shape);
    assert.deepEqual(b.get('input_ids')!.shape, [4, 7]); // [CLS] + 5 + [SEP]
    assert.deepEqual(b.get('img_feat')!.shape, [4, 3, 2048]);
    assert.deepEqual(b.get('attn_masks')!.shape, [4, 10]);
    assert.equal(batchTokens(b), 40);
    for (const k of ['targets', 'ot_inputs.ot_scatter', 'ot_inputs.txt_pad', 'ot_inputs.img_pad']) assert.ok(b.has(k), k);
    for (const t of toNumbers(b.get('targets')!)) assert.ok(t === 0 || t === 1);
    // Same seed, same batch: both sides of the benchmark read one file, but reruns must agree too.
    assert.deepEqual(toNumbers(makeBatch('itm', shape).get('targets')!), toNumbers(b.get('targets')!));
  });

  it('builds MLM batches with at least one masked wordpiece per example and pairs without OT inputs', () => {
    const mlm = makeBatch('mlm', shape);
    const labels = toNumbers(mlm.get('txt_labels')!);
    for (let r = 0; r < 4; r++) assert.ok(labels.slice(r * 7, r * 7 + 7).some((v) => v !== -1), `row ${r} has a masked wordpiece`);
    const pairs = makeBatch('pairs', { ...shape, examples: 1 });
    assert.deepEqual(toNumbers(pairs.get('targets')!), [1]);
    assert.ok(!pairs.has('ot_inputs.ot_scatter'));
    assert.throws(() => makeBatch('itm', { ...shape, examples: 1 }), /needs >= 2 examples/);
  });

  it('writes and reads batches losslessly', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-workload-'));
    try {
      const b = makeBatch('itm', shape);
      const file = path.join(dir, 'b.safetensors');
      writeBatch(file, b);
      const back = readBatch(file);
      assert.deepEqual([...back.keys()].sort(), [...b.keys()].sort());
      for (const [k, t] of b) {
        assert.equal(back.get(k)!.dtype, t.dtype, k);
        assert.deepEqual(toNumbers(back.get(k)!), toNumbers(t), k);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('makes IPOT inputs: cosine costs in [0, 2], zero at padded text', () => {
    const m = makeIpotInputs(3, 6, 4);
    const cost = m.get('cost')!.data as Float32Array;
    const txtPad = m.get('txt_pad')!.data as Uint8Array;
    assert.deepEqual(m.get('cost')!.shape, [3, 6, 4]);
    assert.ok([...(m.get('img_pad')!.data as Uint8Array)].every((v) => v === 0));
    for (let b = 0; b < 3; b++) {
      assert.equal(txtPad[b * 6], 0, 'the first token is never padding');
      for (let i = 0; i < 6; i++) {
        for (let j = 0; j < 4; j++) {
          const c = cost[(b * 6 + i) * 4 + j];
          if (txtPad[b * 6 + i]) assert.equal(c, 0);
          else assert.ok(c >= 0 && c <= 2, `cost ${c}`);
        }
      }
    }
  });
});

describe('bench report', () => {
  const summary = (m: number) => ({ median: m, min: m * 0.9, max: m * 1.1, n: 3 });
  const trainCase = (task: string, engine: number, torch: number) => ({
    label: `${task} step 52x36`,
    request: { op: 'train', task },
    units: 52,
    tokens: 4056,
    engine: { wall: summary(engine), cpu: summary(engine / 2), first_s: engine * 2, parts_median: { forward_backward_s: engine * 0.9, clip_s: 0.01, optimizer_s: 0.05 } },
    torch: [{ setting: '1x2', wall: summary(torch), cpu: summary(torch / 2), first_s: torch, parts_median: { forward_backward_s: torch * 0.9 } }],
    torch_fastest: '1x2',
    speedup: torch / engine,
    speedup_paired: summary(torch / engine),
    speedup_cpu: torch / engine,
    engine_peak_rss_bytes: 6 * 1024 ** 3,
    torch_peak_rss_bytes: { '1x2': 3 * 1024 ** 3 },
  });
  const results = {
    started: '2026-01-01T00:00:00Z',
    finished: '2026-01-01T01:00:00Z',
    command: 'node dist/bench/uniter/run.js',
    machine: { cpu: 'Test CPU', cores: 2, memory_gib: 8, load_before: [1, 1, 1], load_after: [2, 2, 2], node: 'v20', onnxruntime_node: '1.30.0', platform: 'Linux' },
    workload: { model: 'UNITER-base', training_step: 'fwd+bwd', inference: 'ITM' },
    method: { rounds: 3, warmup: 1, ort_threads: 2, torch_settings: ['1x2'], torch_setting_meaning: 'AxB', peak_rss: 'max RSS' },
    parity: null,
    scenarios: {
      train: {
        scenario: 'train',
        mode: 'sequential',
        cases: [trainCase('mlm', 10, 13), trainCase('itm', 12, 12)],
        engine_ready: [{}],
        torch_ready: [{ torch: '1.13', blas_libraries: ['/usr/lib/libopenblas.so'] }],
        seconds: 100,
      },
    },
    memory: {
      steps: ['MLM step 52x36', 'ITM+WRA step 52x36'],
      tokens: 4056,
      runs: [
        { label: 'engine (as shipped)', experiment: false, steps: [{ task: 'mlm', rss_after_bytes: 5 * 1024 ** 3, max_rss_bytes: 5 * 1024 ** 3, seconds: 10 }], peak_rss_bytes: 17 * 1024 ** 3, stopped: 'the machine had only 1.20 GiB available' },
        { label: 'engine with ORT session options {}', experiment: true, steps: [], peak_rss_bytes: 8 * 1024 ** 3, stopped: null },
        { label: 'PyTorch 1x2', experiment: false, steps: [], peak_rss_bytes: 4 * 1024 ** 3, stopped: null },
      ],
    },
    data_loader: null,
    targets: [
      { name: 'training step mlm >= 1.3x PyTorch', met: true, detail: '1.30x' },
      { name: 'train peak RSS <= PyTorch', met: false, detail: 'engine 6.00 GiB vs PyTorch 3.00 GiB' },
    ],
  };

  it('renders tables, targets and charts from a results file', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-report-'));
    try {
      fs.writeFileSync(path.join(dir, 'uniter.json'), JSON.stringify(results));
      fs.writeFileSync(path.join(dir, 'analysis.md'), 'Hand-written analysis paragraph.');
      const { markdown, charts } = renderBenchmarks(dir, dir);
      assert.match(markdown, /\| training step mlm >= 1.3x PyTorch \| met \| 1.30x \|/);
      assert.match(markdown, /\| train peak RSS <= PyTorch \| \*\*missed\*\* \|/);
      assert.match(markdown, /Hand-written analysis paragraph\./);
      // MLM: 13 s PyTorch / 10 s engine = 1.30x; 52 examples / 10 s = 5.2 examples/s.
      assert.match(markdown, /\| mlm step 52x36 \| 10\.0 \(9\.00–11\.0\) \| 13\.0 \(11\.7–14\.3\) \[1x2\] \| 5\.2 \/ 4\.0 \| \*\*1\.30x\*\*/);
      assert.match(markdown, /\| mlm step 52x36 \| 6\.00 GiB \| 3\.00 GiB \[1x2\] \| 0\.50x \|/);
      assert.match(markdown, /\| engine \(as shipped\) \| 5\.00 GiB \| - \| \*\*17\.00 GiB\*\* \| stopped by the memory guard: the machine had only 1\.20 GiB available \|/);
      assert.match(markdown, /\| engine with ORT session options \{\} \(_experiment_\) \|/);
      assert.match(markdown, /node dist\/bench\/uniter\/run\.js/);
      assert.ok(charts['benchmarks-speedup.svg'].startsWith('<svg'));
      assert.ok(charts['benchmarks-memory.svg'].includes('</svg>'));
      const written = writeBenchmarksDoc(dir, path.join(dir, 'docs'));
      assert.ok(written.every((f) => fs.existsSync(f)));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says so when there are no results yet', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-report-'));
    try {
      assert.match(renderBenchmarks(dir, dir).markdown, /No UNITER results yet/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
