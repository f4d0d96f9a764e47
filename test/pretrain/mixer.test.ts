import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TaskMixer, mixName, parseMixName } from '../../src/pretrain/mixer.js';
import { Rng } from '../../src/util/rng.js';

const INDOMAIN = [
  { name: 'coco', tasks: ['itm', 'mlm', 'mrfr', 'mrckl'], mix_ratio: [2, 2, 1, 1] },
  { name: 'vg', tasks: ['itm', 'mlm', 'mrfr', 'mrckl'], mix_ratio: [2, 2, 1, 1] },
];

describe('TaskMixer (official MetaLoader sampling)', () => {
  it('builds the pool as each <task>_<dataset> repeated mix_ratio times, in config order', () => {
    const m = new TaskMixer(INDOMAIN, new Rng(42, 'mixer'));
    assert.deepEqual(m.pool, ['itm_coco', 'itm_coco', 'mlm_coco', 'mlm_coco', 'mrfr_coco', 'mrckl_coco', 'itm_vg', 'itm_vg', 'mlm_vg', 'mlm_vg', 'mrfr_vg', 'mrckl_vg']);
  });

  it('draws names with frequencies proportional to their ratios; ratio 0 is never drawn', () => {
    const datasets = [
      { name: 'coco', tasks: ['itm', 'mlm', 'mrfr', 'mrckl'], mix_ratio: [6, 8, 4, 4] },
      { name: 'cc_3m', tasks: ['itm', 'mlm', 'mrc'], mix_ratio: [9, 12, 0] },
    ];
    const m = new TaskMixer(datasets, new Rng(7, 'mixer'));
    const n = 43000;
    for (let i = 0; i < n; i++) m.next();
    const counts = m.drawCounts();
    const total = 6 + 8 + 4 + 4 + 9 + 12;
    const expected: Record<string, number> = { itm_coco: 6, mlm_coco: 8, mrfr_coco: 4, mrckl_coco: 4, itm_cc_3m: 9, mlm_cc_3m: 12, mrc_cc_3m: 0 };
    for (const [name, ratio] of Object.entries(expected)) {
      const p = ratio / total;
      const sd = Math.sqrt(n * p * (1 - p));
      assert.ok(Math.abs(counts[name] - n * p) <= 4.5 * sd, `${name}: ${counts[name]} draws, expected ${n * p} ± ${4.5 * sd}`);
    }
    assert.equal(counts.mrc_cc_3m, 0);
    assert.equal(m.drawn, n);
  });

  it('is reproducible from the seed and resumes exactly from state()', () => {
    const a = new TaskMixer(INDOMAIN, new Rng(42, 'mixer'));
    const first = Array.from({ length: 137 }, () => a.next());
    const saved = JSON.parse(JSON.stringify(a.state()));
    const restAfterSave = Array.from({ length: 300 }, () => a.next());

    const again = new TaskMixer(INDOMAIN, new Rng(42, 'mixer'));
    assert.deepEqual(Array.from({ length: 137 }, () => again.next()), first);

    const resumed = new TaskMixer(INDOMAIN, new Rng(999, 'anything'));
    resumed.restore(saved);
    assert.equal(resumed.drawn, 137);
    assert.deepEqual(Array.from({ length: 300 }, () => resumed.next()), restAfterSave);
    assert.deepEqual(resumed.drawCounts(), a.drawCounts());
  });

  it('refuses to restore a state saved with a different pool, and bad ratios', () => {
    const a = new TaskMixer(INDOMAIN, new Rng(1));
    const other = new TaskMixer([{ name: 'coco', tasks: ['mlm'], mix_ratio: [1] }], new Rng(1));
    assert.throws(() => other.restore(a.state(), 'step_10/trainer.json mixer'), /step_10\/trainer\.json mixer: saved sampling pool \[itm_coco x2, .*\] differs from the configured one \[mlm_coco x1\]/);
    assert.throws(() => new TaskMixer([{ name: 'x', tasks: ['mlm'], mix_ratio: [0] }], new Rng(1)), /pool is empty/);
    assert.throws(() => new TaskMixer([{ name: 'x', tasks: ['mlm'], mix_ratio: [1.5] }], new Rng(1)), /dataset 'x' task 'mlm': mix ratio must be an integer >= 0, got 1\.5/);
    assert.throws(() => new TaskMixer([{ name: 'x', tasks: ['mlm', 'itm'], mix_ratio: [1] }], new Rng(1)), /2 tasks but 1 mix ratios/);
  });

  it('names split at the first underscore so dataset names may contain one', () => {
    assert.equal(mixName('mrckl', 'cc_3m'), 'mrckl_cc_3m');
    assert.deepEqual(parseMixName('mrckl_cc_3m'), { task: 'mrckl', dataset: 'cc_3m' });
    assert.throws(() => parseMixName('mlm'), /not a <task>_<dataset> name/);
  });
});
