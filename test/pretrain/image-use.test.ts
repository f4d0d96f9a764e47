import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateWorld } from '../../src/data/world.js';
import { defaultTokenizer } from '../../src/data/tokenizer.js';
import { COLOURS, SHAPES } from '../../src/data/world/concepts.js';
import { PRESETS, type UniterConfig } from '../../src/model/config.js';
import { allSpecs, initParams, TIES } from '../../src/model/params.js';
import { UniterRunner } from '../../src/model/runner.js';
import { imageUse, majorityClassRate, zeroShotRetrieval } from '../../src/pretrain/demo.js';

const MODEL: UniterConfig = { ...PRESETS.tiny, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 };

test('image use: scores every masked colour/shape word with the own and with another image', async () => {
  const world = generateWorld({ preset: 'tiny', numImages: 24 });
  const txt = world.textDb('pretrain_world_val');
  const tok = defaultTokenizer();
  const visual = new Set([...COLOURS, ...SHAPES].map((w) => tok.convertTokensToIds(tok.tokenize(w))).filter((ids) => ids.length === 1).map((ids) => ids[0]));
  const expectedWords = txt.ids().slice(0, 12).reduce((n, id) => n + txt.get(id).input_ids.filter((w) => visual.has(w)).length, 0);
  assert.ok(expectedWords > 0);

  const params = initParams(allSpecs(MODEL, 'pretrain').filter((p) => !TIES[p.name]), MODEL.initializer_range, 7);
  const use = await imageUse(new UniterRunner(MODEL, params, 1), txt, world.images, 12);
  assert.equal(use.words, expectedWords);
  for (const acc of [use.own, use.other]) assert.ok(acc >= 0 && acc <= 1 && Number.isFinite(acc));
});

test('MRC-kl baseline: the most frequent class among the held-out images\' regions', () => {
  const L = 4;
  // Two images: 3 regions of class 2, 1 of class 3 (argmax of each soft label).
  const labels: Record<string, number[]> = { a: [2, 2, 3], b: [2] };
  const img = {
    imgDim: 1,
    labelDim: L,
    has: (f: string) => f in labels,
    nbb: (f: string) => labels[f].length,
    keys: () => Object.keys(labels),
    get: (f: string) => {
      const soft = new Float32Array(labels[f].length * L).fill(0.1);
      labels[f].forEach((c, r) => (soft[r * L + c] = 0.7));
      return { nbb: labels[f].length, features: new Float32Array(labels[f].length), normBb: new Float32Array(labels[f].length * 7), softLabels: soft };
    },
  };
  const recs = [{ id: 'x', img_fname: 'a' }, { id: 'y', img_fname: 'a' }, { id: 'z', img_fname: 'b' }];
  const txt = { ids: () => recs.map((r) => r.id), len: () => 1, get: (id: string) => ({ ...recs.find((r) => r.id === id)!, input_ids: [1] }) };
  // Image 'a' counts once although two captions use it.
  assert.deepEqual(majorityClassRate(txt as never, img as never), { rate: 0.75, classes: 2, regions: 4 });
});

test('zero-shot retrieval: every caption of the first images against those images, with the ITM head as rank head', async () => {
  const world = generateWorld({ preset: 'tiny', numImages: 24 });
  const txt = world.textDb('pretrain_world_val');
  const params = initParams(allSpecs(MODEL, 'pretrain').filter((p) => !TIES[p.name]), MODEL.initializer_range, 7);
  const ev = await zeroShotRetrieval(MODEL, params, txt, world.images, 3);
  const images = [...new Set(txt.ids().map((id) => String(txt.get(id).img_fname)))].slice(0, 3);
  assert.equal(ev.images, images.length);
  assert.equal(ev.captions, txt.ids().filter((id) => images.includes(String(txt.get(id).img_fname))).length);
  assert.equal(ev.pairs, ev.captions * ev.images);
  for (const v of Object.values(ev.metrics)) assert.ok(v >= 0 && v <= 1);
  assert.equal(ev.metrics.img_r10, 1, 'with 3 images every caption finds its image within 10');
  assert.ok(!params.has('rank_output.weight'), 'the caller\'s parameters are not changed');
});
