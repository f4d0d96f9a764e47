import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { writeSafetensors } from '../../src/engine/safetensors.js';
import { collateRows } from '../../src/data/collate.js';
import { loadImage, sampleNegatives } from '../../src/data/datasets.js';
import { BERT_BASE_CASED_IDS } from '../../src/data/masking.js';
import type { Batch, ImageSource, TextSource } from '../../src/data/types.js';
import { generateWorld, type World } from '../../src/data/world.js';
import { PRESETS, type UniterConfig } from '../../src/model/config.js';
import { TIES, allSpecs, initParams } from '../../src/model/params.js';
import { UniterRunner } from '../../src/model/runner.js';
import { Rng } from '../../src/util/rng.js';
import {
  HardNegativeMiner,
  RetrievalCaptionStream,
  buildGallery,
  crossPairBatch,
  evaluateRetrievalSplit,
  imageBlock,
  pairBatch,
  PairScratch,
  scorePairs,
  retrievalHooks,
  retrievalTask,
  scoreGallery,
  topKIndices,
  type RankOutputSource,
  type RetrievalTrainOptions,
} from '../../src/finetune/retrieval.js';
import { worldStores, taskDataFromWorld } from '../../src/finetune/task-registry.js';
import { finetune, initialFinetuneParams, type FinetuneSettings } from '../../src/finetune/trainer.js';

const CFG: UniterConfig = { ...PRESETS.tiny, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 };

let world: World;
let tmp: string;
before(() => {
  world = generateWorld({ preset: 'tiny' });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-retrieval-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const caption = (txt: TextSource, id: string) => [BERT_BASE_CASED_IDS.cls, ...txt.get(id).input_ids, BERT_BASE_CASED_IDS.sep];
const features = (img: ImageSource, f: string) => loadImage(img, f, { task: 'test', id: f, field: 'img_fname' });

function freshRunner(seed: number): UniterRunner {
  const params = initParams(allSpecs(CFG, 'retrieval'), CFG.initializer_range, seed);
  return new UniterRunner(CFG, params, 1);
}

function assertSameBatch(a: Batch, b: Batch): void {
  for (const k of ['input_ids', 'position_ids', 'img_feat', 'img_pos_feat', 'attn_masks', 'gather_index']) {
    const x = a.get(k)!;
    const y = b.get(k)!;
    assert.deepEqual(x.shape, y.shape, k);
    assert.equal(x.dtype, y.dtype, k);
    assert.deepEqual(Array.from(x.data as ArrayLike<number | bigint>), Array.from(y.data as ArrayLike<number | bigint>), k);
  }
}

describe('retrieval pair batches', () => {
  it('crossPairBatch gives exactly what collateRows gives for the same (caption, image) rows', () => {
    const txt = world.textDb('itm_world_val');
    const img = world.images;
    const capIds = txt.ids().slice(0, 3);
    const imgNames = img.keys().slice(0, 4);
    const caps = capIds.map((id) => caption(txt, id));
    const feats = imgNames.map((f) => features(img, f));
    const rows = caps.flatMap((c) => feats.map((f) => ({ inputIds: c, imgFeat: f.feat, imgPosFeat: f.pos, nbb: f.nbb })));
    const expected = collateRows(rows).batch;
    assertSameBatch(crossPairBatch(caps, imageBlock(feats, img.imgDim)), expected);
    // Through a scratch that held a bigger batch before (stale contents must not leak).
    const scratch = new PairScratch();
    crossPairBatch([...caps, ...caps], imageBlock([...feats, ...feats], img.imgDim, scratch), scratch);
    assertSameBatch(crossPairBatch(caps, imageBlock(feats, img.imgDim, scratch), scratch), expected);
    // Arbitrary (caption, image) rows: padding follows the rows used, not the whole block.
    const pairs: Array<[number, number]> = [
      [2, 1],
      [0, 3],
      [0, 1],
    ];
    const some = collateRows(pairs.map(([c, g]) => ({ inputIds: caps[c], imgFeat: feats[g].feat, imgPosFeat: feats[g].pos, nbb: feats[g].nbb }))).batch;
    assertSameBatch(pairBatch(caps, imageBlock(feats, img.imgDim), pairs), some);
    assert.throws(() => pairBatch(caps, imageBlock(feats, img.imgDim), [[5, 0]]), /caption 5 is out of range \(3 captions\)/);
  });

  it('topKIndices: largest first, earlier index on ties', () => {
    assert.deepEqual(topKIndices([0.1, 0.9, 0.5, 0.9, 0.2], 3), [1, 3, 2]);
    assert.deepEqual(topKIndices([1, 2], 0), []);
    assert.throws(() => topKIndices([1, 2], 3), /k must be in 0..2/);
  });
});

describe('full score matrix', () => {
  it('every entry equals scoring that pair alone, whatever the grouping', async () => {
    const runner = freshRunner(5);
    const gallery = buildGallery({ txt: world.textDb('itm_world_val'), img: world.images });
    const m = await scoreGallery(runner, gallery, { imagesPerGroup: 3, rowsPerBatch: 7 });
    assert.equal(m.scores.length, gallery.txtIds.length * gallery.imgIds.length);
    assert.equal(m.pairs, m.scores.length);
    const other = await scoreGallery(runner, gallery, { imagesPerGroup: 100, rowsPerBatch: 1000 });
    for (let k = 0; k < m.scores.length; k++) assert.ok(Math.abs(m.scores[k] - other.scores[k]) < 1e-4, `entry ${k}: ${m.scores[k]} vs ${other.scores[k]}`);
    // Spot checks against single-pair batches.
    const ni = gallery.imgIds.length;
    for (const [t, j] of [
      [0, 0],
      [5, 3],
      [gallery.txtIds.length - 1, ni - 1],
    ]) {
      const f = features(world.images, gallery.imgIds[j]);
      const { batch } = collateRows([{ inputIds: caption(gallery.txt, gallery.txtIds[t]), imgFeat: f.feat, imgPosFeat: f.pos, nbb: f.nbb }]);
      const s = (await runner.run('retrieval', batch, { training: false, grads: false, inference: true })).get('rank_scores')!.data[0] as number;
      assert.ok(Math.abs(m.scores[t * ni + j] - s) < 1e-4, `caption ${t} x image ${j}: ${m.scores[t * ni + j]} vs alone ${s}`);
    }
  });

  it('a caption whose image is missing from the store is named', () => {
    const db = world.textDb('itm_world_val');
    const broken: TextSource = {
      ids: () => db.ids(),
      len: (id) => db.len(id),
      get: (id) => (id === db.ids()[2] ? { ...db.get(id), img_fname: 'nowhere.npz' } : db.get(id)),
    };
    assert.throws(() => buildGallery({ txt: broken, img: world.images }), new RegExp(`caption '${db.ids()[2]}': image 'nowhere.npz' is not in the image store`));
  });
});

describe('zero-shot retrieval with the pre-trained ITM head', () => {
  it('rank_output := itm_output row 1, so rank scores equal the ITM "match" logits', async () => {
    const pretrained = initParams(
      allSpecs(CFG, 'pretrain').filter((s) => !TIES[s.name]),
      CFG.initializer_range,
      11,
    );
    const file = path.join(tmp, 'pretrained.safetensors');
    writeSafetensors(file, pretrained);
    let from: RankOutputSource | null = null;
    const plan = retrievalTask.plan(CFG, {}, taskDataFromWorld(worldStores(world), 'itm'), 1);
    const init = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, 1, file, retrievalHooks((f) => (from = f)));
    assert.equal(from, 'itm_output');
    const w = pretrained.get('itm_output.weight')!.data as Float32Array;
    assert.deepEqual(Array.from(init.params.get('rank_output.weight')!.data as Float32Array), Array.from(w.subarray(CFG.hidden_size, 2 * CFG.hidden_size)));
    assert.equal((init.params.get('rank_output.bias')!.data as Float32Array)[0], (pretrained.get('itm_output.bias')!.data as Float32Array)[1]);

    const txt = world.textDb('itm_world_test');
    const img = world.images;
    const ids = txt.ids().slice(0, 2);
    const feats = img.keys().slice(0, 3).map((f) => features(img, f));
    const batch = crossPairBatch(ids.map((id) => caption(txt, id)), imageBlock(feats, img.imgDim));
    const rank = (await new UniterRunner(CFG, init.params, 1).run('retrieval', batch, { training: false, grads: false, inference: true })).get('rank_scores')!;
    const itm = (await new UniterRunner(CFG, pretrained, 1).run('itm', batch, { training: false, grads: false, inference: true })).get('itm_scores')!;
    assert.deepEqual(rank.shape, [6, 1]);
    for (let r = 0; r < 6; r++) assert.ok(Math.abs((rank.data[r] as number) - (itm.data[r * 2 + 1] as number)) < 1e-5, `row ${r}`);

    // A fine-tuned checkpoint's own rank_output is kept.
    const finetuned = new Map(init.params);
    let again: RankOutputSource | null = null;
    retrievalHooks((f) => (again = f)).adaptSource!(finetuned);
    assert.equal(again, 'checkpoint');

    // The zero-shot evaluation of the test split: metrics and a results file.
    const ev = await evaluateRetrievalSplit(new UniterRunner(CFG, init.params, 1), { txt, img }, 'test', 'zeroshot');
    const m = ev.metrics.test;
    for (const k of ['img_r1', 'img_r5', 'img_r10', 'txt_r1', 'txt_r5', 'txt_r10', 'r_mean']) assert.ok(m[k] >= 0 && m[k] <= 1, `${k} = ${m[k]}`);
    assert.ok(m.img_r1 <= m.img_r5 && m.img_r5 <= m.img_r10);
    assert.equal(ev.examples!.test, txt.size);
    // With 8 test images every image is within the top 10.
    assert.equal(m.img_r10, 1);
    // `uniter evaluate` hands the task a runner over the raw pre-trained weights: scored zero-shot, same numbers.
    const raw = new UniterRunner(CFG, new Map(pretrained), 1);
    const viaTask = await retrievalTask.evaluate(raw, { data: taskDataFromWorld(worldStores(world), 'itm'), split: 'test', batchSize: 50, seed: 1, tag: 'zs' });
    assert.deepEqual(viaTask.metrics, ev.metrics);
    const results = JSON.parse(ev.files![0].content);
    assert.equal(ev.files![0].name, 'retrieval_test_results_zeroshot.json');
    assert.equal(Object.keys(results.image_rank).length, txt.size);
  });
});

describe('hard-negative mining', () => {
  const opts: RetrievalTrainOptions = { mode: 'hard_negatives', captionsPerStep: 2, negativeSize: 6, hardNegSize: 2, seed: 3, maxTxtLen: 60 };

  it('keeps the positive first and the best-scored sampled negatives, both directions', async () => {
    const split = { txt: world.textDb('itm_world_train'), img: world.images };
    const stream = new RetrievalCaptionStream(split, opts);
    const miner = new HardNegativeMiner(split, stream, opts);
    const runner = freshRunner(9);
    const ids = stream.ids.slice(0, 2);
    const mined = await miner.mine(runner, ids, new Rng(1, 'mine'));
    assert.equal(mined.textRows.length, 2 * 3);
    assert.equal(mined.imageRows.length, 2 * 3);
    // Re-draw the same samples (per caption: images, then captions) and score them all in one pass.
    const rng = new Rng(1, 'mine');
    const pool = [...new Set(stream.ids.map((id) => split.txt.get(id).img_fname as string))];
    const draws = ids.map((id) => {
      const gt = split.txt.get(id).img_fname as string;
      const negImgs = sampleNegatives(pool, [gt], 6, rng, 'images');
      const ownCaptions = split.txt.ids().filter((t) => split.txt.get(t).img_fname === gt);
      return { id, gt, negImgs, negTxts: sampleNegatives(stream.ids, ownCaptions, 6, rng, 'captions') };
    });
    const pairs = draws.flatMap((d) => [d.gt, ...d.negImgs].map((f) => ({ caption: caption(split.txt, d.id), image: features(split.img, f) })));
    const s = await scorePairs(runner, pairs, split.img.imgDim, 1000);
    for (const [c, chosen] of mined.chosen.entries()) {
      const d = draws[c];
      assert.equal(chosen.caption, d.id);
      assert.equal(chosen.images[0], d.gt);
      assert.equal(chosen.captions[0], d.id);
      assert.deepEqual(chosen.images.slice(1), topKIndices(s.subarray(c * 7 + 1, (c + 1) * 7), 2).map((j) => d.negImgs[j]));
      for (const t of chosen.captions.slice(1)) {
        assert.ok(d.negTxts.includes(t));
        assert.notEqual(split.txt.get(t).img_fname, d.gt);
      }
    }
    // The rows to train on follow the choice: positives first, grouped per caption.
    const pos1 = features(split.img, draws[1].gt);
    assert.deepEqual(mined.textRows[3].inputIds, caption(split.txt, ids[1]));
    assert.equal(mined.textRows[3].nbb, pos1.nbb);
    assert.deepEqual(Array.from(mined.textRows[3].imgPosFeat), Array.from(pos1.pos));
    assert.deepEqual(mined.imageRows[3].inputIds, caption(split.txt, ids[1]));
    assert.deepEqual(mined.imageRows[4].inputIds, caption(split.txt, mined.chosen[1].captions[1]));
  });

  it('rejects sizes the split cannot serve', () => {
    const split = { txt: world.textDb('itm_world_train'), img: world.images };
    const stream = new RetrievalCaptionStream(split, opts);
    assert.throws(() => new HardNegativeMiner(split, stream, { ...opts, negativeSize: 500, hardNegSize: 2 }), /negativeSize 500 needs at least 501 training images/);
    assert.throws(() => new HardNegativeMiner(split, stream, { ...opts, negativeSize: 2, hardNegSize: 3 }), /negativeSize \(2\) must be an integer >= hardNegSize \(3\)/);
    assert.throws(() => new RetrievalCaptionStream(split, { ...opts, captionsPerStep: 10_000 }), /cannot fill one step of 10000/);
  });

  it('the caption stream resumes with the same captions and negatives', () => {
    const split = { txt: world.textDb('itm_world_train'), img: world.images };
    const a = new RetrievalCaptionStream(split, opts);
    a.nextCaptions();
    const saved = a.state();
    const first = a.nextCaptions();
    const b = new RetrievalCaptionStream(split, opts);
    b.restore(saved);
    const second = b.nextCaptions();
    assert.deepEqual(second.ids, first.ids);
    assert.equal(second.rng.nextU32(), first.rng.nextU32());
  });
});

describe('retrieval fine-tuning end to end (shortened)', () => {
  const settings: FinetuneSettings = {
    trainBatchTokens: 3,
    valBatchSize: 1,
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
    seed: 4,
    maxTxtLen: 60,
    dropout: 0.1,
  };

  for (const hard of [true, false]) {
    it(`${hard ? 'hard negatives' : 'plain (1 negative image + 1 negative caption)'}: trains, validates, keeps the best model`, async () => {
      const data = taskDataFromWorld(worldStores(world), 'itm');
      const options = { ...retrievalTask.optionDefaults, hard_negatives: hard, negative_size: 5, hard_neg_size: 2 };
      retrievalTask.checkOptions(options, 'test');
      const plan = retrievalTask.plan(CFG, options, data, 1);
      const init = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, 1, null, plan.hooks);
      const before = Float32Array.from(init.params.get('rank_output.weight')!.data as Float32Array);
      const job = retrievalTask.job({ data, settings, options, plan });
      const outDir = path.join(tmp, hard ? 'hn' : 'plain');
      const r = await finetune({ job, modelConfig: plan.cfg, params: init.params, settings, outDir, quiet: true });
      assert.equal(r.steps, 2);
      for (const l of r.losses) assert.ok(Number.isFinite(l.loss) && l.loss >= 0, `loss ${l.loss}`);
      // Hinge with margin 0.2 on sigmoids: each direction's mean is at most 1.2.
      for (const l of r.losses) assert.ok(l.loss <= (hard ? 2.4 : 1.2) + 1e-6);
      assert.ok(r.validation.val.r_mean >= 0 && r.validation.val.r_mean <= 1);
      assert.ok(r.validation.test, 'the final evaluation scores the test split too');
      assert.ok(fs.existsSync(path.join(outDir, 'best', 'model.safetensors')));
      assert.ok(fs.existsSync(path.join(outDir, 'results', 'retrieval_val_results_step_2.json')));
      const after = init.params.get('rank_output.weight')!.data as Float32Array;
      assert.ok(after.some((v, i) => v !== before[i]), 'rank_output was updated');
    });
  }

  it('hard negatives: an interrupted run resumes exactly (same captions, negatives, dropout, losses)', async () => {
    const data = taskDataFromWorld(worldStores(world), 'itm');
    const options = { ...retrievalTask.optionDefaults, negative_size: 5, hard_neg_size: 2 };
    const plan = retrievalTask.plan(CFG, options, data, 1);
    const s3 = { ...settings, steps: 3 };
    const run = async (outDir: string, stopAtStep?: number, resume = false) => {
      const init = initialFinetuneParams(plan.cfg, plan.head, plan.headOptions, 1, null, plan.hooks);
      return finetune({ job: retrievalTask.job({ data, settings: s3, options, plan }), modelConfig: plan.cfg, params: init.params, settings: s3, outDir, quiet: true, stopAtStep, resume });
    };
    const straight = await run(path.join(tmp, 'straight'));
    const dir = path.join(tmp, 'interrupted');
    await run(dir, 2);
    const resumed = await run(dir, undefined, true);
    assert.equal(resumed.resumedFrom, 2);
    assert.deepEqual(resumed.losses, straight.losses.slice(2));
    assert.deepEqual(resumed.validation, straight.validation);
  });

  it('option errors name the option', () => {
    assert.throws(() => retrievalTask.checkOptions({ hard_negatives: true, negative_size: 2, hard_neg_size: 3 }, 'cfg.json'), /cfg.json: retrieval option 'hard_neg_size' \(3\) exceeds 'negative_size' \(2\)/);
    assert.throws(() => retrievalTask.checkOptions({ negative_size: 0 }, 'cfg.json'), /'negative_size' must be a positive integer/);
    assert.throws(() => retrievalTask.checkOptions({ hard_negatives: 'yes' }, 'cfg.json'), /'hard_negatives' must be true or false/);
  });
});
