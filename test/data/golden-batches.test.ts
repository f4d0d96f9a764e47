import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildGoldenBatches } from '../../src/data/golden-batches.js';
import { EXTRA_BATCH_FIELDS, batchLengths } from '../../src/data/collate.js';
import { readSafetensors } from '../../src/engine/safetensors.js';
import { toNumbers } from '../../src/engine/host.js';

// Compiled to dist/test/data/: the fixtures stay in the source tree.
const GOLDEN = fileURLToPath(new URL('../../../test/fixtures/golden', import.meta.url));

function batchFiles(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...batchFiles(dir, r));
    else if (/^batch.*\.safetensors$/.test(e.name)) out.push(r);
  }
  return out.sort();
}

const sets = fs.readdirSync(GOLDEN).filter((s) => fs.existsSync(path.join(GOLDEN, s, 'examples.json')));

test('golden fixture sets are present', () => {
  assert.ok(sets.includes('tiny'), `expected the tiny set under ${GOLDEN}`);
});

for (const set of sets) {
  const dir = path.join(GOLDEN, set);

  test(`${set}: every official batch file is rebuilt, and nothing else`, () => {
    const rebuilt = buildGoldenBatches(dir);
    assert.deepEqual([...rebuilt.keys()].sort(), batchFiles(dir));
  });

  test(`${set}: rebuilt batches equal the official collate outputs exactly`, () => {
    const rebuilt = buildGoldenBatches(dir);
    for (const [rel, batch] of rebuilt) {
      const official = readSafetensors(path.join(dir, rel)).tensors;
      const mine = [...batch.keys()].filter((k) => !EXTRA_BATCH_FIELDS.includes(k)).sort();
      assert.deepEqual(mine, [...official.keys()].sort(), `${rel}: field names`);
      for (const [name, ref] of official) {
        const t = batch.get(name)!;
        assert.equal(t.dtype, ref.dtype, `${rel} ${name}: dtype`);
        assert.deepEqual(t.shape, ref.shape, `${rel} ${name}: shape`);
        assert.equal(t.data.length, ref.data.length, `${rel} ${name}: size`);
        for (let i = 0; i < ref.data.length; i++) {
          if (!Object.is(t.data[i], ref.data[i])) assert.fail(`${rel} ${name}[${i}]: rebuilt ${t.data[i]}, official ${ref.data[i]}`);
        }
      }
    }
  });

  test(`${set}: index helpers point at the official masked slots`, () => {
    const rebuilt = buildGoldenBatches(dir);
    let checked = 0;
    for (const [rel, batch] of rebuilt) {
      const labels = batch.get('txt_labels');
      if (labels) {
        const expected = toNumbers(labels).flatMap((v, i) => (v !== -1 ? [i] : []));
        assert.deepEqual(toNumbers(batch.get('mlm_positions')!), expected, `${rel}: mlm_positions`);
        checked++;
      }
      const tgt = batch.get('img_mask_tgt');
      if (tgt) {
        const expected = toNumbers(tgt).flatMap((v, i) => (v ? [i] : []));
        assert.deepEqual(toNumbers(batch.get('mrm_positions')!), expected, `${rel}: mrm_positions`);
        const n = batch.get('feat_targets')?.shape[0] ?? batch.get('label_targets')!.shape[0];
        assert.equal(expected.length, n, `${rel}: one mrm position per target row`);
        checked++;
      }
    }
    assert.ok(checked >= 4, 'mlm, mrfr, mrc and mrckl batches carry index helpers');
  });

  test(`${set}: batchLengths recovers text lengths and region counts`, () => {
    const gold = JSON.parse(fs.readFileSync(path.join(dir, 'examples.json'), 'utf8')) as { examples: Array<{ txt_len: number; num_regions: number }> };
    const rebuilt = buildGoldenBatches(dir);
    const mlm = batchLengths(rebuilt.get('mlm/batch.safetensors')!);
    assert.deepEqual(mlm.txtLens, gold.examples.map((e) => e.txt_len));
    assert.deepEqual(mlm.numBbs, gold.examples.map((e) => e.num_regions));
    for (const [rel, batch] of rebuilt) {
      const re = batch.get('txt_lens');
      if (!re) continue;
      // Derive without the explicit lists and compare with them.
      const stripped = new Map(batch);
      stripped.delete('txt_lens');
      stripped.delete('num_bbs');
      const derived = batchLengths(stripped);
      assert.deepEqual(derived.txtLens, toNumbers(re), `${rel}: txt_lens`);
      assert.deepEqual(derived.numBbs, toNumbers(batch.get('num_bbs')!), `${rel}: num_bbs`);
    }
  });
}
