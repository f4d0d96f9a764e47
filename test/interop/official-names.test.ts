import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { HostTensor, f32, halfToFloat } from '../../src/engine/host.js';
import { OFFICIAL_TIES, UniterConfigJson, expandTies, officialNames, renameGammaBeta, resolveUniterConfig, toOfficialWeights } from '../../src/interop/official-names.js';
import { checkpointFromTorchFile, parseTorchFile, readTorchCheckpoint } from '../../src/interop/torch-checkpoint.js';
import { TorchDType, TorchStorage } from '../../src/interop/torch-tensor.js';
import { contiguousTensor, orderedDict, serializeTorchZip } from '../../src/interop/torch-writer.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/interop/', import.meta.url));
const GOLDEN_CONFIG = fileURLToPath(new URL('../../../test/fixtures/golden/tiny/config.json', import.meta.url));

describe('official key names', () => {
  it('rewrites TF LayerNorm names exactly like from_pretrained', () => {
    assert.equal(renameGammaBeta('uniter.embeddings.LayerNorm.gamma'), 'uniter.embeddings.LayerNorm.weight');
    assert.equal(renameGammaBeta('encoder.layer.0.output.LayerNorm.beta'), 'encoder.layer.0.output.LayerNorm.bias');
    assert.equal(renameGammaBeta('uniter.pooler.dense.weight'), 'uniter.pooler.dense.weight');
    // The official loop rewrites 'beta' from the original key last, so its 'gamma' survives.
    assert.equal(renameGammaBeta('gamma.beta'), 'gamma.bias');
  });

  it('maps bert. to uniter. only for BERT-style checkpoints', () => {
    const bert = officialNames(['bert.embeddings.LayerNorm.gamma', 'bert.encoder.layer.3.attention.self.query.weight', 'cls.predictions.bias']);
    assert.deepEqual([...bert.values()], ['uniter.embeddings.LayerNorm.weight', 'uniter.encoder.layer.3.attention.self.query.weight', 'cls.predictions.bias']);
    const uniter = officialNames(['uniter.embeddings.word_embeddings.weight', 'vqa_output.0.weight']);
    assert.deepEqual([...uniter.values()], ['uniter.embeddings.word_embeddings.weight', 'vqa_output.0.weight']);
  });

  it('renames a real old-style BERT checkpoint', () => {
    const w = toOfficialWeights(readTorchCheckpoint(path.join(FIXTURES, 'bert-style.legacy.pt')));
    assert.deepEqual([...w.tensors.keys()], ['uniter.embeddings.word_embeddings.weight', 'uniter.embeddings.LayerNorm.weight', 'uniter.embeddings.LayerNorm.bias', 'cls.predictions.bias']);
    assert.equal(w.renamed.length, 3);
    assert.deepEqual(w.renamed[1], ['bert.embeddings.LayerNorm.gamma', 'uniter.embeddings.LayerNorm.weight']);
  });
});

describe('official weights from a checkpoint', () => {
  it('stores each tie once under the official primary and records casts of stored tensors only', () => {
    const w = toOfficialWeights(readTorchCheckpoint(path.join(FIXTURES, 'uniter-like.zip.pt')));
    assert.deepEqual(w.tied, OFFICIAL_TIES);
    assert.deepEqual(w.tieEvidence, { 'cls.predictions.decoder.weight': 'shared storage', 'feat_regress.weight': 'shared storage' });
    assert.ok(!w.tensors.has('cls.predictions.decoder.weight') && w.tensors.has('uniter.embeddings.word_embeddings.weight'));
    assert.deepEqual(w.casts, [
      { from: 'float16', to: 'float32', names: ['uniter.embeddings.word_embeddings.weight', 'uniter.embeddings.LayerNorm.weight', 'uniter.embeddings.LayerNorm.bias', 'uniter.img_embeddings.img_linear.weight'] },
      { from: 'bfloat16', to: 'float32', names: ['bf16'] },
      { from: 'float64', to: 'float32', names: ['scalar'] },
    ]);
    assert.equal(w.tensors.get('scalar')?.dtype, 'float32');
    assert.deepEqual(
      [...w.renamed],
      [
        ['uniter.embeddings.LayerNorm.gamma', 'uniter.embeddings.LayerNorm.weight'],
        ['uniter.embeddings.LayerNorm.beta', 'uniter.embeddings.LayerNorm.bias'],
      ],
    );
  });

  const input = (entries: Array<[string, HostTensor]>, ties: Array<[string, string]> = []) => ({
    file: 'in.pt',
    tensors: new Map(entries),
    sourceDtypes: new Map<string, TorchDType>(entries.map(([k]) => [k, 'float32'])),
    ties: new Map(ties),
  });

  it('ties the official pairs when the file holds two equal copies (per-tensor .cpu() breaks sharing)', () => {
    const w = toOfficialWeights(input([
      ['uniter.embeddings.word_embeddings.weight', f32([2, 2], [1, 2, 3, 4])],
      ['cls.predictions.decoder.weight', f32([2, 2], [1, 2, 3, 4])],
    ]));
    assert.deepEqual(w.tied, { 'cls.predictions.decoder.weight': 'uniter.embeddings.word_embeddings.weight' });
    assert.deepEqual(w.tieEvidence, { 'cls.predictions.decoder.weight': 'identical values' });
    assert.deepEqual(w.warnings, []);
  });

  it('warns when the official pair differs, keeping the primary', () => {
    const w = toOfficialWeights(input([
      ['feat_regress.weight', f32([1, 2], [1, 2.5])],
      ['uniter.img_embeddings.img_linear.weight', f32([1, 2], [1, 2])],
    ]));
    assert.deepEqual([...w.tensors.keys()], ['uniter.img_embeddings.img_linear.weight']);
    assert.match(w.warnings[0], /'feat_regress\.weight' should be the same tensor as 'uniter\.img_embeddings\.img_linear\.weight' but differs by up to 0\.5/);
  });

  it('makes the official primary the primary even when the alias comes first in the file', () => {
    const w = toOfficialWeights(input(
      [
        ['cls.predictions.decoder.weight', f32([1], [3])],
        ['uniter.embeddings.word_embeddings.weight', f32([1], [3])],
        ['head.a', f32([1], [5])],
        ['head.b', f32([1], [5])],
      ],
      [
        ['uniter.embeddings.word_embeddings.weight', 'cls.predictions.decoder.weight'],
        ['head.b', 'head.a'],
      ],
    ));
    assert.deepEqual(w.tied, { 'cls.predictions.decoder.weight': 'uniter.embeddings.word_embeddings.weight', 'head.b': 'head.a' });
    assert.deepEqual([...expandTies(w.tensors, w.tied, 'x').keys()].sort(), ['cls.predictions.decoder.weight', 'head.a', 'head.b', 'uniter.embeddings.word_embeddings.weight']);
  });

  it('refuses two keys that become the same official name', () => {
    assert.throws(() => toOfficialWeights(input([
      ['a.LayerNorm.gamma', f32([1], [1])],
      ['a.LayerNorm.weight', f32([1], [1])],
    ])), /in\.pt: keys 'a\.LayerNorm\.gamma' and 'a\.LayerNorm\.weight' both map to the official name 'a\.LayerNorm\.weight'/);
  });
});

describe('float16 checkpoints', () => {
  it('every one of the 65536 half values is exact after the cast to float32', () => {
    const halfStorage = new TorchStorage('0', 'float16', 65536, 'cpu');
    halfStorage.bytes = new Uint8Array(Uint16Array.from({ length: 65536 }, (_, h) => h).buffer); // every bit pattern
    const buf = serializeTorchZip(orderedDict([['h', contiguousTensor(halfStorage, [65536])]]));
    const t = checkpointFromTorchFile(parseTorchFile(buf, 'halves.pt')).tensors.get('h') as HostTensor;
    const got = t.data as Float32Array;
    for (let h = 0; h < 65536; h++) {
      const want = halfToFloat(h);
      assert.ok(Object.is(got[h], Math.fround(want)) || (Number.isNaN(want) && Number.isNaN(got[h])), `half 0x${h.toString(16)}: ${got[h]} != ${want}`);
    }
  });
});

/** Shapes of an official UniterForPretraining-style state dict (no data needed to infer a config). */
function officialShapes(o: { vocab: number; hidden: number; layers: number; inter: number; types: number; labels?: number }): Map<string, { shape: number[] }> {
  const m = new Map<string, { shape: number[] }>();
  const h = o.hidden;
  m.set('uniter.embeddings.word_embeddings.weight', { shape: [o.vocab, h] });
  m.set('uniter.embeddings.position_embeddings.weight', { shape: [512, h] });
  m.set('uniter.embeddings.token_type_embeddings.weight', { shape: [o.types, h] });
  m.set('uniter.img_embeddings.img_linear.weight', { shape: [h, 2048] });
  for (let i = 0; i < o.layers; i++) {
    m.set(`uniter.encoder.layer.${i}.attention.self.query.weight`, { shape: [h, h] });
    m.set(`uniter.encoder.layer.${i}.intermediate.dense.weight`, { shape: [o.inter, h] });
    m.set(`uniter.encoder.layer.${i}.output.dense.weight`, { shape: [h, o.inter] });
  }
  if (o.labels) m.set('region_classifier.net.3.weight', { shape: [o.labels, h] });
  return m;
}

describe('config inference', () => {
  it('UNITER-base pre-training checkpoint', () => {
    const { config } = resolveUniterConfig(officialShapes({ vocab: 28996, hidden: 768, layers: 12, inter: 3072, types: 2, labels: 1601 }));
    assert.deepEqual(config, {
      vocab_size: 28996,
      hidden_size: 768,
      num_hidden_layers: 12,
      num_attention_heads: 12,
      intermediate_size: 3072,
      hidden_act: 'gelu',
      hidden_dropout_prob: 0.1,
      attention_probs_dropout_prob: 0.1,
      max_position_embeddings: 512,
      type_vocab_size: 2,
      initializer_range: 0.02,
      img_dim: 2048,
      img_label_dim: 1601,
      ot: { beta: 0.5, iteration: 50, k: 1, lambda: 0.1 },
    });
  });

  it('UNITER-large fine-tuned checkpoint without the region classifier, and the VCR vocabulary', () => {
    const large = resolveUniterConfig(officialShapes({ vocab: 28996, hidden: 1024, layers: 24, inter: 4096, types: 2 }));
    assert.equal(large.config.num_attention_heads, 16);
    assert.equal(large.config.num_hidden_layers, 24);
    assert.equal(large.config.img_label_dim, 1601);
    assert.ok(large.notes.some((n) => n.startsWith('img_label_dim = 1601 (default')));
    const vcr = resolveUniterConfig(officialShapes({ vocab: 29077, hidden: 768, layers: 12, inter: 3072, types: 4 }));
    assert.deepEqual([vcr.config.vocab_size, vcr.config.type_vocab_size], [29077, 4]);
  });

  it('needs --config when the head count cannot be inferred, and checks a given config against the shapes', () => {
    const tiny = officialShapes({ vocab: 512, hidden: 32, layers: 2, inter: 64, types: 2, labels: 17 });
    assert.throws(() => resolveUniterConfig(tiny), /cannot infer config field 'num_attention_heads': hidden_size 32 .* pass --config/);
    const golden = JSON.parse(fs.readFileSync(GOLDEN_CONFIG, 'utf8')) as UniterConfigJson;
    tiny.set('uniter.embeddings.position_embeddings.weight', { shape: [64, 32] });
    tiny.set('uniter.img_embeddings.img_linear.weight', { shape: [32, 64] });
    assert.deepEqual(resolveUniterConfig(tiny, { source: 'golden.json', json: golden }).config, golden);
    assert.throws(
      () => resolveUniterConfig(tiny, { source: 'cfg.json', json: { ...golden, hidden_size: 768 } }),
      /cfg\.json: field 'hidden_size' is 768 but tensor 'uniter\.embeddings\.word_embeddings\.weight' has shape \[512,32\]/,
    );
    assert.throws(() => resolveUniterConfig(tiny, { source: 'cfg.json', json: { ...golden, num_hidden_layers: 3 } }), /cfg\.json: field 'num_hidden_layers' is 3 but the weights hold encoder layers \[0, 1\]/);
    assert.throws(() => resolveUniterConfig(tiny, { source: 'cfg.json', json: { ...golden, num_attention_heads: 5 } }), /'hidden_size' \(32\) is not a multiple of 'num_attention_heads' \(5\)/);
    assert.throws(() => resolveUniterConfig(tiny, { source: 'cfg.json', json: { ...golden, vocab_size: '512' } }), /field 'vocab_size' must be a positive integer, got "512"/);
  });

  it('an official config file (UniterConfig fields only) gets the image dims from the shapes', () => {
    const official = { vocab_size: 28996, hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, intermediate_size: 3072, hidden_act: 'gelu', hidden_dropout_prob: 0.1, attention_probs_dropout_prob: 0.1, max_position_embeddings: 512, type_vocab_size: 2, initializer_range: 0.02 };
    const { config } = resolveUniterConfig(officialShapes({ vocab: 28996, hidden: 768, layers: 12, inter: 3072, types: 2, labels: 1601 }), { source: 'uniter-base.json', json: official });
    assert.equal(config.img_dim, 2048);
    assert.equal(config.img_label_dim, 1601);
  });
});
