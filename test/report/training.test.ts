import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { JsonlLogger } from '../../src/pretrain/progress.js';
import { downsampleMean, writeTrainingReport } from '../../src/report/training.js';
import { Rng } from '../../src/util/rng.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-report-test-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

const TRAIN_NAMES = ['itm_coco', 'mlm_coco', 'mrfr_coco', 'mrckl_coco', 'itm_vg', 'mlm_vg'];

function writeLog(file: string, steps: number): void {
  const rng = new Rng(11, 'report-test');
  const log = new JsonlLogger(file);
  for (let step = 1; step <= steps; step++) {
    const task = rng.choice(TRAIN_NAMES);
    log.log({ type: 'train', step, task, loss: step === 7 ? NaN : 3 / Math.sqrt(step) + 0.1 * rng.uniform(), lr: 1e-4 * Math.min(1, step / 50), grad_norm: 1 + rng.uniform() });
    if (step % 100 === 0) {
      for (const name of ['itm_coco', 'itm_vg']) log.log({ type: 'val', step, task: name, loss: 1 / step, acc: 1 - 1 / step, ex_per_s: 900 });
      for (const name of ['mlm_coco', 'mlm_vg']) log.log({ type: 'val', step, task: name, loss: 5 / step, acc: 0.5 });
      log.log({ type: 'val', step, task: 'mrfr_coco', loss: 0.2 });
    }
  }
  log.close();
}

describe('writeTrainingReport', () => {
  it('writes an HTML page with one SVG per chart and the right series in each', () => {
    const logFile = path.join(root, 'train.jsonl');
    const html = path.join(root, 'out', 'report.html');
    writeLog(logFile, 1000);
    const summary = writeTrainingReport(logFile, html, { title: 'Tiny run <1>' });
    const text = fs.readFileSync(html, 'utf8');
    assert.ok(text.startsWith('<!DOCTYPE html>'));
    assert.match(text, /<title>Tiny run &lt;1&gt;<\/title>/);
    assert.equal(summary.trainRecords, 1000);
    assert.equal(summary.valRecords, 50);

    // Charts: loss by task, lr, grad norm; validation: itm loss/acc, mlm loss/acc, mrfr loss.
    assert.deepEqual(
      summary.charts.map((c) => c.title),
      ['Training loss by task', 'Learning rate', 'Gradient norm (before clipping)', 'itm: loss', 'itm: acc', 'mlm: loss', 'mlm: acc', 'mrfr: loss'],
    );
    const svgs = text.match(/<svg[\s\S]*?<\/svg>/g)!;
    assert.equal(svgs.length, summary.charts.length, 'one SVG per chart');
    const seriesCounts = svgs.map((s) => (s.match(/<g class="series"/g) ?? []).length);
    assert.deepEqual(seriesCounts, [6, 1, 1, 2, 2, 2, 2, 1]);
    assert.deepEqual(svgs.map((s) => Number(/data-series="(\d+)"/.exec(s)![1])), seriesCounts);
    // Series in canonical task order, then by dataset; every name in the legend.
    assert.deepEqual(summary.charts[0].series, ['itm_coco', 'itm_vg', 'mlm_coco', 'mlm_vg', 'mrfr_coco', 'mrckl_coco']);
    for (const name of TRAIN_NAMES) assert.match(svgs[0], new RegExp(`>${name}</text>`));
    assert.deepEqual(summary.charts[3].series, ['coco', 'vg']);
    // Throughput is not drawn as a metric; a NaN loss is skipped, never printed.
    assert.ok(!summary.charts.some((c) => c.title.includes('ex_per_s')));
    assert.ok(!/NaN/.test(svgs.join('')));
    // Tables: steps per task and latest validation values.
    assert.match(text, /<caption>Latest validation results<\/caption>/);
    assert.match(text, /<td>itm_vg<\/td><td>1000<\/td><td>0.001<\/td><td>0.999<\/td>/);
    assert.match(text, /<td>mrfr_coco<\/td><td>1000<\/td><td>0.2<\/td><td>–<\/td>/);
    assert.deepEqual(fs.readdirSync(path.dirname(html)), ['report.html'], 'written atomically, no temp files left');
  });

  it('copes with a log that has no validation records', () => {
    const logFile = path.join(root, 'short.jsonl');
    writeLog(logFile, 40);
    const html = path.join(root, 'short.html');
    const summary = writeTrainingReport(logFile, html);
    assert.equal(summary.valRecords, 0);
    assert.equal((fs.readFileSync(html, 'utf8').match(/<svg/g) ?? []).length, 3);
    assert.match(fs.readFileSync(html, 'utf8'), /The log holds no validation records/);
  });

  it('names the log line that is corrupt', () => {
    const logFile = path.join(root, 'corrupt.jsonl');
    fs.writeFileSync(logFile, '{"type":"train","step":1,"loss":1}\n{oops}\n{"type":"train","step":2,"loss":1}\n');
    assert.throws(() => writeTrainingReport(logFile, path.join(root, 'x.html')), /corrupt\.jsonl:2: not a JSON record/);
  });
});

describe('downsampleMean', () => {
  it('averages points into equal-width x buckets', () => {
    const pts = Array.from({ length: 100 }, (_, i) => [i, i % 2] as [number, number]);
    const out = downsampleMean(pts, 10);
    assert.equal(out.length, 10);
    for (const [x, y] of out) {
      assert.ok(Math.abs(y - 0.5) < 1e-12);
      assert.ok(x >= 0 && x <= 99);
    }
    assert.deepEqual(downsampleMean([[2, 1], [1, NaN], [0, 3]], 10), [[0, 3], [2, 1]], 'short series: sorted, non-finite dropped');
  });
});
