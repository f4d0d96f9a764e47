/**
 * Issue 18: "pre-train, then fine-tune" meets on one world. A run of the embedded default records
 * its world; `uniter finetune TASK` without data options fine-tunes on that world's downstream
 * splits (images pre-training held out are the tasks' val/test images), records it, and
 * `uniter evaluate` regenerates it. The same flow as the README's, on the tiny world.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runEvaluate } from '../../src/cli/evaluate.js';
import { runFinetune } from '../../src/cli/finetune.js';
import { generateWorld, type WorldOptions } from '../../src/data/world.js';
import { defaultWorldChoice, taskRegistry } from '../../src/finetune/task-registry.js';
import { embeddedDefault, embeddedRecipe, embeddedRunRecord } from '../../src/pretrain/run.js';
import { pretrain } from '../../src/pretrain/trainer.js';
import { TRAINER_FILE, LATEST_FILE, checkpointRoot } from '../../src/pretrain/checkpoint.js';
import { silent } from './fixtures.js';

// The main job's world (2-4 objects, objects only, centred features) at the tiny preset's size.
const WORLD: WorldOptions = { ...embeddedRecipe().world, preset: 'tiny', cacheSize: 64 };
let dir: string;
let pretrained: string;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-pt-ft-'));
  pretrained = path.join(dir, 'pretrain');
  const d = embeddedDefault({ steps: 3, world: WORLD });
  await pretrain({ modelConfig: d.model, settings: { ...d.settings, validEvery: 3, saveEvery: 3 }, train: d.train, val: d.val, outDir: pretrained, quiet: true, runConfig: embeddedRunRecord(d), memoryLimit: 'off' });
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test('the world a pre-training run used is found from its run folder, its model folder and a checkpoint', () => {
  const ckpt = path.join(checkpointRoot(pretrained), fs.readFileSync(path.join(checkpointRoot(pretrained), LATEST_FILE), 'utf8').trim());
  for (const weights of [ckpt, path.join(pretrained, 'model')]) {
    const { choice, why } = defaultWorldChoice(weights);
    assert.equal(choice.world?.preset, 'tiny');
    assert.equal(choice.world?.minObjects, 2);
    assert.equal(choice.world?.clutter, false);
    assert.match(why, new RegExp(`pre-trained on \\(recorded in .*${TRAINER_FILE}\\)`));
  }
  // Weights that record no world: the main job's world.
  const fresh = defaultWorldChoice(null);
  assert.deepEqual(fresh.choice.world, embeddedRecipe().world);
  assert.match(fresh.why, /main job's world/);
});

for (const name of taskRegistry().keys()) {
  test(`pretrain, then 'finetune ${name}' without data options: the pre-training world's downstream splits, recorded for evaluate`, async () => {
    const task = taskRegistry().get(name)!;
    const out = path.join(dir, `ft-${name}`);
    const lines: string[] = [];
    await runFinetune([name, '--checkpoint', path.join(pretrained, 'model'), '--steps', '2', '--out', out], (m) => lines.push(m));
    const dataLine = lines.find((l) => l.startsWith('data: '));
    assert.ok(dataLine, lines.join('\n'));
    assert.match(dataLine, /synthetic world \(preset tiny, seed 42, 2-4 objects per image, in memory\): the world the weights were pre-trained on/);

    // Evaluate regenerates the recorded world: the test split's examples are that world's.
    const r = await runEvaluate([name, '--checkpoint', out, '--split', 'test', '--out', path.join(dir, `eval-${name}`), '--quiet'], silent);
    assert.match(r.dataFrom, /as recorded by the fine-tuning run/);
    assert.match(r.data, /preset tiny, seed 42, 2-4 objects/);
    const world = generateWorld(WORLD);
    const testDb = world.textDb(`${task.worldPrefix}_world_test`);
    assert.ok(testDb.ids().length > 0);
    // The test images are the world's held-out test images, none of which pre-training saw.
    const names = (scenes: typeof world.splits.train) => new Set(scenes.flatMap((sc) => (['main', 'gt', 'det'] as const).map((s) => world.imageName(s, sc.imageId))));
    const trainImages = names(world.splits.train);
    const testImages = names(world.splits.test);
    for (const id of testDb.ids()) {
      const f = testDb.get(id).img_fname;
      for (const img of Array.isArray(f) ? f : [f]) {
        assert.ok(!trainImages.has(String(img)), `${name} test image ${img} is a pre-training image`);
        assert.ok(testImages.has(String(img)), `${name} test image ${img} is not a held-out test image`);
      }
    }
  });
}

test("'finetune --checkpoint none' without data options uses the main job's world, so a fresh start is compared on the same data", async () => {
  const lines: string[] = [];
  await runFinetune(['vqa', '--checkpoint', 'none', '--steps', '1', '--out', path.join(dir, 'ft-fresh')], (m) => lines.push(m));
  assert.ok(lines.some((l) => /^data: synthetic world \(preset default, seed 42, 2-4 objects per image, in memory\): the main job's world/.test(l)), lines.join('\n'));
});
