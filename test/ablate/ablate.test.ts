/**
 * The ablation end to end on the tiny world (a smaller model, a few steps, one seed, two
 * variants: no pre-training and every task with WRA), through the real pre-training and
 * fine-tuning trainers; then the table structure, Meta-Sum = sum of task scores, resume, and
 * the errors of bad options.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runAblation, type AblationResult } from '../../src/ablate/ablation.js';
import { stat, OUTPUT_FILES, type AblationReport } from '../../src/ablate/table.js';
import { SCORE_COLUMNS, getVariant, parseVariantList } from '../../src/ablate/variants.js';
import { parseFinetuneSteps, parseSeedList, runAblateCli } from '../../src/cli/ablate.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-ablate-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const SMALL_MODEL = { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 };
const base = {
  outDir: path.join(tmp, 'run'),
  seeds: [1],
  variants: [getVariant('none'), getVariant('mlm-itm-mrckl-mrfr-wra')],
  pretrainSteps: 3,
  finetuneSteps: { vqa: 2, retrieval: 2, nlvr2: 2, re: 2 },
  world: 'tiny' as const,
  model: SMALL_MODEL,
  threads: 1,
};
const close = (a: number, b: number) => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a));

let first: AblationResult;

test('ablate runs pre-training and four fine-tunings per cell and writes the table, JSON and charts', async () => {
  first = await runAblation(base);
  assert.equal(first.ran, 2);
  assert.equal(first.reused, 0);
  for (const f of Object.values(OUTPUT_FILES)) assert.ok(fs.existsSync(path.join(base.outDir, f)), `${f} written`);
  const r = JSON.parse(fs.readFileSync(first.files.json, 'utf8')) as AblationReport;
  assert.deepEqual(r, JSON.parse(JSON.stringify(first.report)), 'the JSON file is the returned report');
  assert.deepEqual(r.columns.map((c) => c.key), SCORE_COLUMNS.map((c) => c.key));
  assert.deepEqual(r.variants.map((v) => v.variant), ['none', 'mlm-itm-mrckl-mrfr-wra']);
  assert.equal(r.cells.length, 2);
  for (const c of r.cells) {
    assert.equal(c.seed, 1);
    for (const col of SCORE_COLUMNS) {
      const s = c.scores[col.key];
      assert.ok(s >= 0 && s <= 100, `${c.variant} ${col.key} = ${s} is a percentage`);
      assert.ok(close(s, 100 * c.metrics[col.task][col.metric]), `${col.key} is 100 x the test ${col.metric}`);
    }
    const sum = SCORE_COLUMNS.reduce((a, col) => a + c.scores[col.key], 0);
    assert.ok(close(c.meta_sum, sum), `${c.variant}: Meta-Sum ${c.meta_sum} = sum of task scores ${sum}`);
  }
  for (const v of r.variants) {
    assert.deepEqual(v.seeds, [1]);
    assert.equal(v.meta_sum.std, null, 'one seed: no spread');
    const sum = SCORE_COLUMNS.reduce((a, col) => a + v.scores[col.key].mean, 0);
    assert.ok(close(v.meta_sum.mean, sum), `${v.variant}: mean Meta-Sum = sum of mean task scores`);
  }
  const none = r.cells.find((c) => c.variant === 'none')!;
  const pre = r.cells.find((c) => c.variant !== 'none')!;
  assert.equal(none.pretrain_validation, null);
  assert.equal(none.timing.pretrain, null);
  assert.equal(pre.timing.pretrain?.steps, 3);
  assert.deepEqual(Object.keys(pre.pretrain_validation ?? {}).sort(), ['itm', 'mlm', 'mrckl', 'mrfr']);
  assert.ok('ot_pos' in pre.pretrain_validation!.itm, 'WRA variant validates ITM with OT');
  assert.deepEqual(Object.keys(pre.timing.finetune).sort(), ['nlvr2', 're', 'retrieval', 'vqa']);

  // The markdown table: header, rule, one row per variant whose last cell is the Meta-Sum.
  const md = fs.readFileSync(first.files.markdown, 'utf8');
  const rows = md.split('\n').filter((l) => l.startsWith('|'));
  assert.deepEqual(rows[0].split('|').map((x) => x.trim()).filter(Boolean), ['Pre-training tasks', ...SCORE_COLUMNS.map((c) => c.label), 'Meta-Sum']);
  for (const v of r.variants) {
    const row = rows.find((l) => l.startsWith(`| ${v.label} |`));
    assert.ok(row, `row for ${v.variant}`);
    const cells = row.split('|').map((x) => x.trim()).filter(Boolean);
    assert.equal(cells[cells.length - 1], v.meta_sum.mean.toFixed(2));
  }
  const svg = fs.readFileSync(first.files.chart, 'utf8');
  assert.ok(svg.startsWith('<svg') && svg.includes('MLM + ITM + MRC-kl + MRFR + WRA'));
  // Checkpoints are gone once recorded; the pre-trained model folder stays.
  const cell = path.join(base.outDir, 'cells', 'mlm-itm-mrckl-mrfr-wra', 'seed-1');
  assert.ok(!fs.existsSync(path.join(cell, 'pretrain', 'ckpt')));
  assert.ok(!fs.existsSync(path.join(cell, 'ft-vqa', 'ckpt')));
  assert.ok(fs.existsSync(path.join(cell, 'pretrain', 'model', 'model.safetensors')));
});

test('a rerun into the same --out reads finished cells back instead of recomputing them', async () => {
  const again = await runAblation(base);
  assert.equal(again.ran, 0);
  assert.equal(again.reused, 2);
  assert.deepEqual(again.report.cells, first.report.cells);
  // A cell whose record is gone but whose phases are recorded is rebuilt from the phase files.
  fs.rmSync(path.join(base.outDir, 'cells', 'none', 'seed-1', 'cell.json'));
  const rebuilt = await runAblation(base);
  assert.equal(rebuilt.ran, 1);
  assert.deepEqual(rebuilt.report.cells, first.report.cells);
  await assert.rejects(runAblation({ ...base, pretrainSteps: 4 }), /--pretrain-steps 3, not 4/);
  // An OUT made with another embedded recipe (e.g. an older release's world) is not mixed in.
  const configFile = path.join(base.outDir, 'ablation-config.json');
  const recorded = fs.readFileSync(configFile, 'utf8');
  const older = JSON.parse(recorded) as { recipe: { world: Record<string, unknown> } };
  older.recipe.world.clutter = true;
  fs.writeFileSync(configFile, JSON.stringify(older));
  await assert.rejects(runAblation(base), /holds an ablation run with the embedded recipe .*"clutter":true/);
  fs.writeFileSync(configFile, recorded);
});

test('bad options give errors naming the option', async () => {
  assert.throws(() => parseVariantList('mlm,bogus'), /--variants: unknown variant 'bogus'/);
  assert.throws(() => parseVariantList('mlm,mlm'), /--variants: 'mlm' is listed twice/);
  assert.throws(() => parseVariantList('mlm,'), /--variants: empty name/);
  assert.throws(() => parseFinetuneSteps('vqa=3,bogus=2'), /--finetune-steps: unknown task 'bogus'/);
  assert.throws(() => parseFinetuneSteps('vqa=0'), /--finetune-steps vqa must be an integer >= 1/);
  assert.deepEqual(parseFinetuneSteps('7'), { vqa: 7, retrieval: 7, nlvr2: 7, re: 7 });
  assert.equal(parseFinetuneSteps('re=9').re, 9);
  const out = ['--out', path.join(tmp, 'never')];
  await assert.rejects(runAblateCli(['--seeds', '0', ...out]), /--seeds must be an integer >= 1, got '0'/);
  await assert.rejects(runAblateCli(['--seed-list', '2,x', ...out]), /--seed-list must be an integer >= 1, got 'x'/);
  await assert.rejects(runAblateCli(['--seed-list', '2,2', ...out]), /--seed-list: seed 2 is listed twice/);
  await assert.rejects(runAblateCli(['--seeds', '2', '--seed-list', '3', ...out]), /give --seeds or --seed-list, not both/);
  assert.deepEqual(parseSeedList('3'), [3]);
  assert.deepEqual(parseSeedList('2, 3'), [2, 3]);
  await assert.rejects(runAblateCli(['--pretrain-steps', 'x', ...out]), /--pretrain-steps must be an integer >= 1/);
  await assert.rejects(runAblateCli(['--variants', 'nope', ...out]), /--variants: unknown variant 'nope'/);
  await assert.rejects(runAblateCli(['--world', 'huge', ...out]), /--world must be 'default' or 'tiny'/);
  await assert.rejects(runAblateCli(['--threads', '0', ...out]), /--threads must be an integer >= 1/);
  await assert.rejects(runAblateCli(['--bogus', ...out]), /unknown option --bogus/);
  assert.ok(!fs.existsSync(path.join(tmp, 'never')), 'nothing written for rejected options');
});

test('stat: mean and sample standard deviation', () => {
  const s = stat([1, 2, 3]);
  assert.equal(s.mean, 2);
  assert.equal(s.std, 1);
  assert.equal(stat([5]).std, null);
});
