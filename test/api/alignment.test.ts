import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { Uniter } from '../../src/api/uniter.js';
import { groupWords } from '../../src/api/alignment.js';
import { itmCollate } from '../../src/data/collate.js';
import { defaultTokenizer } from '../../src/data/tokenizer.js';
import { positionFeatures } from '../../src/data/types.js';
import { toNumbers } from '../../src/engine/host.js';
import { UniterRunner } from '../../src/model/runner.js';
import { DEFAULT_OT } from '../../src/model/task-graphs.js';
import { TINY, randomParams, removeTempDirs, tempDir, writeModelFolder, testRegions } from '../export/model-folders.js';

after(removeTempDirs);

const tok = defaultTokenizer();

const image = testRegions;

test('groupWords joins WordPieces into words and skips [CLS]/[SEP]', () => {
  assert.deepEqual(groupWords(['[CLS]', 'a', 'cy', '##lin', '##der', '.', '[SEP]']), [
    { text: 'a', tokens: [1] },
    { text: 'cylinder', tokens: [2, 3, 4] },
    { text: '.', tokens: [5] },
  ]);
});

test('align() gives the WRA plan of the pre-training graph and each layer\'s attention, per pair of a padded batch', async () => {
  const params = randomParams(TINY, 'pretrain');
  const dir = writeModelFolder(path.join(tempDir('align-'), 'm'), TINY, params);
  const model = Uniter.fromPretrained(dir, { threads: 1 });
  // Ids below 512 (TINY's vocabulary): texts as ids of different lengths, images of different sizes.
  const inputs = [
    { text: [101 + 100, 300, 301, 302], image: image(5, 1) },
    { text: [250, 260], image: image(3, 2) },
  ];
  const got = await model.align(inputs);
  assert.equal(got.length, 2);

  // The reference: the training ITM graph with WRA (its own collate, ot_T [B, N, Lt]) on the same pairs.
  const rows = inputs.map((x) => {
    const ids = [tok.cls, ...x.text, tok.sep];
    return { inputIds: ids, imgFeat: x.image.features, imgPosFeat: positionFeatures(x.image.normBb, x.image.nbb), nbb: x.image.nbb, target: 1 };
  });
  const batch = itmCollate(rows, { ot: true });
  const ref = await new UniterRunner(TINY, params, 1).run('itm', batch, { training: false, grads: false, ot: DEFAULT_OT, capture: true });
  const T = ref.get('ot_T')!;
  const [, N, Lt] = T.shape;
  const tData = toNumbers(T);
  const dist = toNumbers(ref.get('ot_dist')!);
  got.forEach((a, b) => {
    const tl = rows[b].inputIds.length;
    const nbb = rows[b].nbb;
    assert.equal(a.tokens.length, tl);
    assert.equal(a.tokens[0], '[CLS]');
    assert.equal(a.regions, nbb);
    assert.equal(a.plan.length, tl);
    let mass = 0;
    for (let t = 0; t < tl; t++) {
      assert.equal(a.plan[t].length, nbb);
      for (let k = 0; k < nbb; k++) {
        assert.ok(Math.abs(a.plan[t][k] - tData[(b * N + k) * Lt + t]) < 1e-6, `row ${b} plan[${t}][${k}]`);
        mass += a.plan[t][k];
      }
    }
    // IPOT's plan has uniform marginals: total mass 1.
    assert.ok(Math.abs(mass - 1) < 1e-3, `row ${b}: plan mass ${mass}`);
    assert.ok(Math.abs(a.distance - dist[b]) < 1e-5, `row ${b}: distance ${a.distance} vs ${dist[b]}`);
  });

  // Attention: layer 0 recomputed on the host from the captured embedding output and the weights.
  const emb = toNumbers(ref.get('embedding_output')!);
  const Lj = batch.get('attn_masks')!.shape[1];
  const H = TINY.hidden_size;
  const heads = TINY.num_attention_heads;
  const dh = H / heads;
  const w = (n: string) => toNumbers(params.get(n)!);
  const proj = (name: string, b: number, pos: number) => {
    const W = w(`uniter.encoder.layer.0.attention.self.${name}.weight`);
    const bias = w(`uniter.encoder.layer.0.attention.self.${name}.bias`);
    return Array.from({ length: H }, (_, o) => {
      let s = bias[o];
      for (let i = 0; i < H; i++) s += W[o * H + i] * emb[(b * Lj + pos) * H + i];
      return s;
    });
  };
  got.forEach((a, b) => {
    const tl = rows[b].inputIds.length;
    const len = tl + rows[b].nbb;
    assert.equal(a.attention.layers, TINY.num_hidden_layers);
    assert.equal(a.attention.heads, heads);
    const keys = Array.from({ length: len }, (_, p) => proj('key', b, p));
    for (const q of [0, tl - 1, tl]) {
      const query = proj('query', b, q);
      for (let h = 0; h < heads; h++) {
        const logits = keys.map((k) => {
          let s = 0;
          for (let d = 0; d < dh; d++) s += query[h * dh + d] * k[h * dh + d];
          return s / Math.sqrt(dh);
        });
        const m = Math.max(...logits);
        const e = logits.map((x) => Math.exp(x - m));
        const z = e.reduce((x, y) => x + y, 0);
        if (q < tl) {
          for (let k = 0; k < rows[b].nbb; k++) {
            const want = e[tl + k] / z;
            const have = a.attention.textToRegion[0][h][q][k];
            assert.ok(Math.abs(have - want) < 1e-5, `row ${b} head ${h} token ${q} region ${k}: ${have} vs ${want}`);
          }
        } else {
          for (let t = 0; t < tl; t++) {
            const want = e[t] / z;
            const have = a.attention.regionToText[0][h][q - tl][t];
            assert.ok(Math.abs(have - want) < 1e-5, `row ${b} head ${h} region ${q - tl} token ${t}: ${have} vs ${want}`);
          }
        }
      }
    }
  });
});

test('align() names the input and field of a bad pair', async () => {
  const dir = writeModelFolder(path.join(tempDir('align-bad-'), 'm'), TINY, randomParams(TINY, 'pretrain'));
  const model = Uniter.fromPretrained(dir, { threads: 1 });
  await assert.rejects(model.align([{ text: [300], image: { nbb: 2, features: new Float32Array(3), normBb: new Float32Array(12) } }]), /input 0: image: field 'features'/);
  await assert.rejects(model.align([]), /non-empty array/);
});
