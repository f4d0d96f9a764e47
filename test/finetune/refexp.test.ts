import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ReDataset } from '../../src/data/datasets.js';
import type { TextSource } from '../../src/data/types.js';
import { generateWorld, type World } from '../../src/data/world.js';
import { PRESETS, type UniterConfig } from '../../src/model/config.js';
import { allSpecs, initParams } from '../../src/model/params.js';
import { UniterRunner } from '../../src/model/runner.js';
import { Rng } from '../../src/util/rng.js';
import { computeIoU, regionBoxXywh } from '../../src/finetune/iou.js';
import { crossEntropySum } from '../../src/finetune/metrics.js';
import {
  addRankNegatives,
  evaluateRe,
  parseReImages,
  reExampleIds,
  reGraphTaskOf,
  reImageName,
  reStores,
  reTask,
  reTrainLoader,
} from '../../src/finetune/refexp.js';
import type { SplitData, TaskData } from '../../src/finetune/task-registry.js';
import { finetune, initialFinetuneParams, type FinetuneSettings } from '../../src/finetune/trainer.js';

const CFG: UniterConfig = { ...PRESETS.tiny, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 };

let world: World;
let tmp: string;
before(() => {
  world = generateWorld({ preset: 'tiny' });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-refexp-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** An RE split of the world with both box stores (GT boxes in gtImg, detections in img). */
function split(name: 'train' | 'val' | 'test'): SplitData {
  const db = world.textDb(`re_world_${name}`);
  return { name: db.name, txt: db, gtImg: world.imageStore('world_gt'), img: world.imageStore('world_det'), sideFile: (f) => db.sideFiles[f] };
}

function taskData(): TaskData {
  return { describe: 'tiny world', train: [split('train')], val: split('val'), test: split('test'), ans2label: null, close: () => undefined };
}

const images = (s: SplitData) => parseReImages(s.sideFile('images.json'), s.name);

describe('RE side files', () => {
  it('images.json entries are checked field by field', () => {
    assert.throws(() => parseReImages(undefined, 're_x'), /re_x: images.json must be a list .* nothing \(file missing\)/);
    assert.throws(() => parseReImages([{ id: 1, ann_ids: [1], width: 0, height: 5 }], 're_x'), /images.json entry 0 \(image 1\): field 'width': expected a positive number/);
    assert.throws(() => parseReImages([{ id: 'a' }], 're_x'), /field 'id': expected an integer image id/);
    assert.throws(() => parseReImages([{ id: 2, ann_ids: ['x'], width: 5, height: 5 }], 're_x'), /field 'ann_ids'/);
    const ok = parseReImages([{ id: 2, ann_ids: [7, 8], width: 5, height: 6, file_name: 'g.npz' }], 're_x');
    assert.equal(ok.get(2)!.height, 6);
    assert.equal(reImageName(ok, 'gt')(2, { id: 's', input_ids: [1], img_fname: '' }), 'g.npz');
    assert.equal(reImageName(ok, 'det')(2, { id: 's', input_ids: [1], img_fname: '' }), 'visual_grounding_det_coco_000000000002.npz');
    assert.throws(() => reImageName(ok, 'gt')(3, { id: 's9', input_ids: [1], img_fname: '' }), /re record 's9': field 'image_id': image 3 is not in images.json/);
  });

  it('example order follows refs.json (refs in order, each ref\'s sentences in order)', () => {
    const s = split('val');
    const ids = reExampleIds(s.txt, s.sideFile('refs.json'), s.name);
    const refs = s.sideFile('refs.json') as Array<{ sent_ids: number[] }>;
    assert.deepEqual(ids, refs.flatMap((r) => r.sent_ids.map(String)));
    assert.deepEqual(reExampleIds(s.txt, undefined, s.name), s.txt.ids());
  });
});

describe('boxes back from position features', () => {
  it('on GT boxes the referred region converts back to its annotation box (IoU ~ 1)', () => {
    const s = split('val');
    const info = images(s);
    const ds = new ReDataset(s.txt, reStores(s).gt, { images: info, boxes: 'gt', imgFname: reImageName(info, 'gt') });
    for (let i = 0; i < ds.ids.length; i++) {
      const ex = ds.get(i);
      const rec = s.txt.get(ds.ids[i]);
      const im = info.get(rec.image_id as number)!;
      const iou = computeIoU(regionBoxXywh(ex.imgPosFeat, ex.target!, im.width, im.height), rec.bbox as [number, number, number, number]);
      // float16 box columns cost a little precision, nothing more.
      assert.ok(iou > 0.95, `record ${rec.id}: IoU ${iou}`);
    }
  });
});

describe('RE evaluation', () => {
  it('accuracy = share of IoU > 0.5; on non-overlapping GT boxes it equals region accuracy', async () => {
    const s = split('val');
    const info = images(s);
    const runner = new UniterRunner(CFG, initParams(allSpecs(CFG, 're_mlp1'), CFG.initializer_range, 2), 1);
    const ev = await evaluateRe(runner, { txt: s.txt, img: reStores(s).gt, boxes: 'gt', images: info, batchSize: 5 });
    assert.equal(ev.examples, s.txt.ids().length);
    assert.equal(ev.acc, ev.predictions.filter((p) => p.iou > 0.5).length / ev.examples);
    const ds = new ReDataset(s.txt, reStores(s).gt, { images: info, boxes: 'gt', imgFname: reImageName(info, 'gt') });
    ev.predictions.forEach((p, i) => {
      const ex = ds.get(i);
      assert.equal(p.sent_id, ds.ids[i]);
      assert.ok(p.region < ex.nbb);
      const im = info.get(s.txt.get(p.sent_id).image_id as number)!;
      assert.deepEqual(p.pred_box, regionBoxXywh(ex.imgPosFeat, p.region, im.width, im.height));
      // World objects never overlap: a box is right exactly when it is the referred object's.
      assert.equal(p.iou > 0.5, p.region === ex.target, `record ${p.sent_id}`);
    });
    // Batch size does not change predictions.
    const again = await evaluateRe(runner, { txt: s.txt, img: reStores(s).gt, boxes: 'gt', images: info, batchSize: 64 });
    assert.deepEqual(
      again.predictions.map((p) => p.region),
      ev.predictions.map((p) => p.region),
    );
    // Detected boxes: every prediction is a detection box of the right image.
    const det = await evaluateRe(runner, { txt: s.txt, img: reStores(s).det!, boxes: 'det', images: info, batchSize: 64 });
    assert.equal(det.examples, ev.examples);
    assert.ok(det.acc >= 0 && det.acc <= 1);
  });

  it('a record without a usable bbox is named', async () => {
    const s = split('val');
    const bad = s.txt.ids()[1];
    const txt: TextSource = { ids: () => s.txt.ids(), len: (id) => s.txt.len(id), get: (id) => (id === bad ? { ...s.txt.get(id), bbox: [1, 2, 3] } : s.txt.get(id)) };
    const runner = new UniterRunner(CFG, initParams(allSpecs(CFG, 're_mlp1'), CFG.initializer_range, 2), 1);
    await assert.rejects(evaluateRe(runner, { txt, img: reStores(s).gt, boxes: 'gt', images: images(s), batchSize: 8 }), new RegExp(`re record '${bad}': field 'bbox': expected \\[x, y, w, h\\]`));
    assert.throws(() => reGraphTaskOf(new Map()), /no re_output head/);
  });
});

describe('RE training', () => {
  it('fixed-size batches in txt_db order (no reshuffle, as the official loader), expressions shorter than max_txt_len', () => {
    const s = split('train');
    const info = images(s);
    const ids = reExampleIds(s.txt, s.sideFile('refs.json'), s.name);
    const { loader, dropped } = reTrainLoader({ txt: s.txt, img: reStores(s).gt, images: info, ids, batchSize: 7, maxTxtLen: 60, shuffle: false, seed: 1 });
    assert.equal(dropped, 0);
    const b1 = loader.next();
    const b2 = loader.next();
    assert.deepEqual([...b1.ids, ...b2.ids], ids.slice(0, 14));
    assert.deepEqual(b1.batch.get('targets')!.shape, [7, 1]);
    // Official filter is strict: a sentence exactly max_txt_len long is left out.
    const longest = Math.max(...ids.map((id) => s.txt.len(id)));
    const cut = reTrainLoader({ txt: s.txt, img: reStores(s).gt, images: info, ids, batchSize: 7, maxTxtLen: longest, shuffle: false, seed: 1 });
    assert.equal(cut.dropped, ids.filter((id) => s.txt.len(id) >= longest).length);
    const shuffled = reTrainLoader({ txt: s.txt, img: reStores(s).gt, images: info, ids, batchSize: 7, maxTxtLen: 60, shuffle: true, seed: 1 }).loader.next();
    assert.notDeepEqual(shuffled.ids, b1.ids);
  });

  it('the loss is cross-entropy over regions SUMMED over the batch', async () => {
    const s = split('train');
    const info = images(s);
    const { loader } = reTrainLoader({ txt: s.txt, img: reStores(s).gt, images: info, batchSize: 6, maxTxtLen: 60, shuffle: false, seed: 1 });
    const { batch } = loader.next();
    const runner = new UniterRunner(CFG, initParams(allSpecs(CFG, 're_mlp2'), CFG.initializer_range, 3), 1);
    const out = await runner.run('re_mlp2', batch, { training: false, grads: false });
    const scores = out.get('scores')!;
    const targets = Array.from(batch.get('targets')!.data as BigInt64Array, Number);
    const expected = crossEntropySum(scores.data as Float32Array, scores.shape[1], targets);
    assert.ok(Math.abs((out.get('loss')!.data[0] as number) - expected) < 1e-3 * Math.max(1, expected));
    assert.ok(Math.abs((out.get('loss')!.data[0] as number) - expected / 6) > 1, 'a sum over the 6 examples, not their mean');
  });

  it('the rank loss (official train_loss "rank"): hinge on sigmoid scores against the hardest or a random other region, summed', async () => {
    const s = split('train');
    const { loader } = reTrainLoader({ txt: s.txt, img: reStores(s).gt, images: images(s), batchSize: 16, maxTxtLen: 60, shuffle: false, seed: 1 });
    const { batch } = loader.next();
    addRankNegatives(batch, new Rng(5), 0.5);
    const [B, N] = batch.get('obj_masks')!.shape;
    const obj = batch.get('obj_masks')!.data;
    const targets = Array.from(batch.get('targets')!.data as BigInt64Array, Number);
    const hard = Array.from(batch.get('re_hard')!.data as Uint8Array, Boolean);
    const negIx = Array.from(batch.get('re_neg_ix')!.data as BigInt64Array, Number);
    assert.ok(hard.some((h) => h) && hard.some((h) => !h), 'both kinds of negative occur at ratio 0.5');
    for (let b = 0; b < B; b++) {
      const nbb = [...Array(N).keys()].filter((k) => !Number(obj[b * N + k])).length;
      if (nbb > 1) assert.ok(negIx[b] !== targets[b] && negIx[b] < nbb, `random negative ${negIx[b]} of example ${b}: a real region other than target ${targets[b]}`);
    }
    const runner = new UniterRunner(CFG, initParams(allSpecs(CFG, 're_mlp1'), 0.5, 3), 1);
    const out = await runner.run('re_mlp1', batch, { training: false, grads: true, reRankMargin: 0.2 });
    const sc = out.get('scores')!.data as Float32Array;
    const sig = (x: number) => 1 / (1 + Math.exp(-x));
    let expected = 0;
    for (let b = 0; b < B; b++) {
      const row = sc.subarray(b * N, (b + 1) * N);
      let negScore = row[negIx[b]];
      if (hard[b]) negScore = Math.max(...[...row].filter((_, k) => k !== targets[b]));
      expected += Math.max(0, 0.2 + sig(negScore) - sig(row[targets[b]]));
    }
    const loss = out.get('loss')!.data[0] as number;
    assert.ok(expected > 0.5, `the hinge is active for several examples (${expected})`);
    assert.ok(Math.abs(loss - expected) < 1e-4 * Math.max(1, expected), `graph ${loss} vs hand-computed ${expected}`);
    assert.ok((out.get('grad.re_output.weight')!.data as Float32Array).some((v) => v !== 0), 'the loss reaches the head');
    // The same batch under "cls" is a different loss (the options give different graphs).
    const cls = await runner.run('re_mlp1', batch, { training: false, grads: false });
    assert.notEqual(cls.get('loss')!.data[0], loss);
  });

  for (const mlp of [1, 2] as const) {
    it(`fine-tunes the mlp=${mlp} head end to end and reports accuracy on GT and detected boxes`, async () => {
      const data = taskData();
      const options = { ...reTask.optionDefaults, mlp };
      const plan = reTask.plan(CFG, options, data, 1);
      assert.equal(plan.head, mlp === 1 ? 're_mlp1' : 're_mlp2');
      const init = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, 1, null, plan.hooks);
      const settings: FinetuneSettings = {
        trainBatchTokens: 128,
        valBatchSize: 128,
        accumulation: 1,
        learningRate: 1e-3,
        lrMultiplier: 1,
        warmupSteps: 1,
        steps: 2,
        validEvery: 0,
        saveEvery: 0,
        keepCheckpoints: 1,
        logEvery: 1,
        gradNorm: 2,
        weightDecay: 0.01,
        betas: [0.9, 0.98],
        seed: 24,
        maxTxtLen: 60,
        dropout: 0.1,
      };
      const job = reTask.job({ data, settings, options, plan });
      assert.equal(job.selectMetric, 'acc_det');
      const outDir = path.join(tmp, `re${mlp}`);
      const r = await finetune({ job, modelConfig: plan.cfg, params: init.params, settings, outDir, quiet: true });
      assert.equal(r.steps, 2);
      // Summed CE over a full batch of 128: log(#regions) per example at chance, far above a mean.
      assert.ok(r.losses[0].loss > 50, `first loss ${r.losses[0].loss}`);
      for (const split of ['val', 'test']) {
        const m = r.validation[split];
        assert.ok(m.acc_gt >= 0 && m.acc_gt <= 1 && m.acc_det >= 0 && m.acc_det <= 1, JSON.stringify(m));
        assert.equal(Object.keys(m).sort().join(), 'acc_det,acc_gt');
      }
      for (const f of ['re_val_gt_results_step_2.json', 're_val_det_results_step_2.json', 're_test_det_results_step_2.json']) assert.ok(fs.existsSync(path.join(outDir, 'results', f)), f);
      // The standalone evaluation reads the head variant from the parameters.
      const ev = await reTask.evaluate(new UniterRunner(plan.cfg, init.params, 1), { data, split: 'val', batchSize: 50, seed: 1, tag: 'x' });
      assert.deepEqual(ev.metrics.val, r.validation.val);
    });
  }

  it('fine-tunes with train_loss "rank" end to end (resume-safe negatives)', async () => {
    const data = taskData();
    const options = { ...reTask.optionDefaults, train_loss: 'rank', hard_ratio: 0.3 };
    const plan = reTask.plan(CFG, options, data, 1);
    const init = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, 1, null, plan.hooks);
    const settings = { trainBatchTokens: 32, valBatchSize: 128, accumulation: 1, learningRate: 1e-3, lrMultiplier: 1, warmupSteps: 1, steps: 2, validEvery: 0, saveEvery: 0, keepCheckpoints: 1, logEvery: 1, gradNorm: 2, weightDecay: 0.01, betas: [0.9, 0.98] as [number, number], seed: 24, maxTxtLen: 60, dropout: 0.1 };
    const job = reTask.job({ data, settings, options, plan });
    assert.deepEqual(job.graphOptions, { reRankMargin: 0.2 });
    // The source's state carries the negatives' draw count, so a resumed run draws the same ones.
    const first = job.train.next().batch.get('re_neg_ix')!;
    const saved = job.train.state();
    const second = job.train.next().batch.get('re_neg_ix')!;
    job.train.restore(saved);
    assert.deepEqual(job.train.next().batch.get('re_neg_ix')!.data, second.data);
    assert.equal(first.shape[0], 32);
    const fresh = reTask.job({ data, settings, options, plan });
    const r = await finetune({ job: fresh, modelConfig: plan.cfg, params: init.params, settings, outDir: path.join(tmp, 're-rank'), quiet: true });
    assert.equal(r.steps, 2);
    // A hinge per example in [0, 1 + margin], summed over the 32 examples.
    for (const l of r.losses) assert.ok(l.loss > 0 && l.loss <= 32 * 1.2, `loss ${l.loss}`);
    assert.ok(r.validation.val.acc_gt >= 0 && r.validation.val.acc_gt <= 1);
  });

  it('option errors name the option; a split without images.json is reported', () => {
    assert.throws(() => reTask.checkOptions({ mlp: 3 }, 'cfg.json'), /cfg.json: re option 'mlp' must be 1 or 2/);
    assert.throws(() => reTask.checkOptions({ shuffle: 'no' }, 'cfg.json'), /'shuffle' must be true or false/);
    assert.throws(() => reTask.checkOptions({ train_loss: 'hinge' }, 'cfg.json'), /cfg.json: re option 'train_loss' must be 'cls' or 'rank', got "hinge"/);
    assert.throws(() => reTask.checkOptions({ margin: -1 }, 'cfg.json'), /re option 'margin' must be a number >= 0/);
    assert.throws(() => reTask.checkOptions({ hard_ratio: 2 }, 'cfg.json'), /re option 'hard_ratio' must be a number in \[0, 1\]/);
    const data = taskData();
    const noSide: SplitData = { ...data.train[0], sideFile: () => undefined };
    const plan = reTask.plan(CFG, {}, data, 1);
    assert.throws(() => reTask.job({ data: { ...data, train: [noSide] }, settings: {} as FinetuneSettings, options: {}, plan }), /re_world_train: images.json must be a list/);
  });
});
