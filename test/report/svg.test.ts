import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { barChart, formatTick, lineChart, logTicks, niceTicks, wrapLabel } from '../../src/report/svg.js';

const count = (s: string, re: RegExp) => (s.match(re) ?? []).length;

describe('axis ticks', () => {
  it('niceTicks encloses the data with a 1/2/2.5/5 x 10^k step', () => {
    for (const [lo, hi] of [[0, 1], [1, 3000], [0.123, 0.987], [-3.7, 12.2], [4.2e-6, 5e-5], [199990, 200000]]) {
      const { ticks, step } = niceTicks(lo, hi, 6);
      assert.ok(ticks[0] <= lo && ticks[ticks.length - 1] >= hi, `[${lo}, ${hi}] -> ${ticks}`);
      assert.ok(ticks.length >= 3 && ticks.length <= 9, `[${lo}, ${hi}] -> ${ticks.length} ticks`);
      const mantissa = step / 10 ** Math.floor(Math.log10(step) + 1e-12);
      assert.ok([1, 2, 2.5, 5].some((m) => Math.abs(m - mantissa) < 1e-9), `step ${step}`);
      for (const t of ticks) assert.ok(Math.abs(t / step - Math.round(t / step)) < 1e-6, `${t} is a multiple of ${step}`);
    }
    assert.deepEqual(niceTicks(0, 1, 6).ticks, [0, 0.2, 0.4, 0.6, 0.8, 1]);
    assert.deepEqual(niceTicks(1, 3000, 5).ticks, [0, 1000, 2000, 3000]);
    const flat = niceTicks(2, 2, 5).ticks;
    assert.ok(flat[0] < 2 && flat[flat.length - 1] > 2, 'a constant series still gets a range');
  });

  it('logTicks picks 1-2-5 / 1-3 values inside a padded domain', () => {
    const { ticks, lo, hi } = logTicks(0.17, 11);
    assert.ok(lo < 0.17 && hi > 11);
    assert.ok(ticks.length >= 3 && ticks.length <= 8, String(ticks));
    assert.ok(ticks.every((t) => t >= lo && t <= hi));
    assert.deepEqual(logTicks(1e-8, 1e-2).ticks, [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]);
  });

  it('formats tick labels readably', () => {
    assert.equal(formatTick(5e-5, 1e-5), '5e-5');
    assert.equal(formatTick(2.5e-5, 5e-6), '2.5e-5');
    assert.equal(formatTick(20000, 5000), '20k');
    assert.equal(formatTick(1500000, 500000), '1.5M');
    assert.equal(formatTick(0.25, 0.25), '0.25');
    assert.equal(formatTick(0.6000000000000001, 0.2), '0.6');
    assert.equal(formatTick(3000, 1000), '3000');
  });
});

describe('lineChart', () => {
  it('draws one path per series with a legend, axes and an escaped title', () => {
    const series = ['mlm_coco', 'itm_coco', 'mrfr_vg'].map((name, k) => ({ name, points: Array.from({ length: 50 }, (_, i) => [i * 10, (k + 1) / (i + 1)] as [number, number]) }));
    const svg = lineChart(series, { title: 'Loss <by> task & "more"', xLabel: 'step', yLabel: 'loss' });
    assert.ok(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
    assert.ok(svg.endsWith('</svg>'));
    assert.match(svg, /data-series="3"/);
    assert.equal(count(svg, /<g class="series"/g), 3);
    assert.equal(count(svg, /<g class="legend-entry">/g), 3);
    assert.match(svg, /Loss &lt;by&gt; task &amp; &quot;more&quot;/);
    assert.ok(!/NaN|undefined|Infinity/.test(svg));
    // Each series path visits every point.
    const paths = svg.match(/<path d="([^"]*)"/g)!;
    assert.equal(paths.length, 3);
    for (const p of paths) assert.equal(count(p, /[ML]/g), 50);
  });

  it('breaks lines at missing values, uses log scale when asked, and says when there is no data', () => {
    const svg = lineChart([{ name: 'loss', points: [[1, 2], [2, NaN], [3, 1], [4, 0.5]] }], { yScale: 'log' });
    const d = svg.match(/<path d="([^"]*)"/)![1];
    assert.equal(count(d, /M/g), 2, 'a gap starts a new sub-path');
    assert.equal(count(svg, /<g class="legend-entry">/g), 0, 'no legend for a single series');
    assert.ok(!/NaN/.test(svg));
    assert.match(lineChart([{ name: 'x', points: [] }], { title: 'empty' }), /no data/);
  });
});

describe('barChart', () => {
  it('draws grouped bars with error bars and value labels', () => {
    const groups = [
      { label: 'MLM', values: [{ series: 'VQA', value: 68.1, error: 0.4 }, { series: 'NLVR2', value: 72.5, error: 1.1 }] },
      { label: 'MLM + ITM', values: [{ series: 'VQA', value: 70.2 }, { series: 'NLVR2', value: 75.0, error: 0.7 }] },
      { label: 'MLM + ITM + MRC-kl + WRA', values: [{ series: 'VQA', value: 71.0, error: 0.2 }, { series: 'NLVR2', value: -1 }] },
    ];
    const svg = barChart(groups, { title: 'Ablation', yLabel: 'score' });
    assert.match(svg, /data-series="2"/);
    assert.equal(count(svg, /<g class="series"/g), 2);
    assert.equal(count(svg, /<rect x=[^>]*><title>/g), 6);
    assert.equal(count(svg, /class="error-bar"/g), 4);
    assert.equal(count(svg, /<g class="legend-entry">/g), 2);
    assert.match(svg, />72\.5</);
    assert.match(svg, />75\.0</, 'labels share one precision');
    assert.match(svg, />-1\.0</);
    assert.ok(!/NaN|undefined/.test(svg));
  });

  it('wraps long group labels instead of overlapping them', () => {
    assert.deepEqual(wrapLabel('MLM + ITM + MRC-kl + WRA', 85, 12, 3), ['MLM + ITM +', 'MRC-kl + WRA']);
    assert.deepEqual(wrapLabel('short', 100, 12, 3), ['short']);
    const lines = wrapLabel('one two three four five six seven eight nine ten', 40, 12, 2);
    assert.equal(lines.length, 2);
    assert.ok(lines[1].endsWith('…'));
  });
});
