import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { generateWorld, writeWorld } from '../../src/data/world.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pt-cli-'));
const worldDir = path.join(tmp, 'world');
writeWorld(generateWorld({ preset: 'tiny', numImages: 16 }), worldDir);

function config(extra: Record<string, unknown> = {}): string {
  const cfg = {
    model: { config: { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 } },
    output_dir: path.join(tmp, 'out'),
    train_datasets: [{ name: 'w', db: [path.join(worldDir, 'txt_db/pretrain_world_train.db')], img: [path.join(worldDir, 'img_db/world')], tasks: ['itm', 'mlm', 'mrfr', 'mrckl'], mix_ratio: [1, 1, 1, 1] }],
    val_datasets: [{ name: 'w', db: [path.join(worldDir, 'txt_db/pretrain_world_val.db')], img: [path.join(worldDir, 'img_db/world')], tasks: ['itm', 'mlm', 'mrfr', 'mrckl'] }],
    train_batch_size: 400, val_batch_size: 4000, gradient_accumulation_steps: 1, learning_rate: 1e-3, warmup_steps: 1,
    num_train_steps: 3, valid_steps: 100, seed: 1,
    ...extra,
  };
  const f = path.join(tmp, `cfg-${Math.random().toString(36).slice(2)}.json`);
  fs.writeFileSync(f, JSON.stringify(cfg));
  return f;
}

test('uniter pretrain --config trains from official txt_db/img_db stores and prints the JSON summary last', () => {
  const out = execFileSync(process.execPath, ['bin/uniter.js', 'pretrain', '--config', config(), '--json', '--quiet'], { encoding: 'utf8' });
  const summary = JSON.parse(out.trim().split('\n').pop()!);
  for (const k of ['itm_acc', 'mlm_acc', 'mrckl_acc', 'mrfr_loss', 'ot_pos', 'ot_neg', 'steps', 'seconds']) assert.ok(k in summary, k);
  assert.equal(summary.steps, 3);
  assert.ok(summary.itm_acc >= 0 && summary.itm_acc <= 1);
  assert.ok(fs.existsSync(path.join(tmp, 'out', 'report.html')));
  assert.ok(fs.existsSync(path.join(tmp, 'out', 'ckpt', 'latest')));
});

for (const [what, extra, pattern] of [
  ['unknown task', { train_datasets: [{ name: 'w', db: [path.join(worldDir, 'txt_db/pretrain_world_train.db')], img: [path.join(worldDir, 'img_db/world')], tasks: ['itm', 'vqa'], mix_ratio: [1, 1] }] }, /train_datasets\[0\]\.tasks/],
  ['ratios summing to zero', { train_datasets: [{ name: 'w', db: [path.join(worldDir, 'txt_db/pretrain_world_train.db')], img: [path.join(worldDir, 'img_db/world')], tasks: ['itm'], mix_ratio: [0] }] }, /train_datasets.*mix ratios sum to zero/],
  ['a missing data path', { train_datasets: [{ name: 'w', db: [path.join(tmp, 'nope.db')], img: [path.join(worldDir, 'img_db/world')], tasks: ['itm'], mix_ratio: [1] }] }, /nope\.db/],
] as const) {
  test(`a bad config (${what}) fails before training, naming the field`, () => {
    const r = spawnSync(process.execPath, ['bin/uniter.js', 'pretrain', '--config', config(extra as Record<string, unknown>), '--quiet'], { encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, pattern);
  });
}

test('a checkpoint whose shapes do not match the model fails before training, naming the tensor', () => {
  const ck = path.join(tmp, 'bad.safetensors');
  const t = new Float32Array(10 * 32);
  const header = JSON.stringify({ 'uniter.embeddings.word_embeddings.weight': { dtype: 'F32', shape: [10, 32], data_offsets: [0, t.byteLength] } });
  const pad = ' '.repeat((8 - (header.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length + pad.length));
  fs.writeFileSync(ck, Buffer.concat([len, Buffer.from(header + pad), Buffer.from(t.buffer)]));
  const r = spawnSync(process.execPath, ['bin/uniter.js', 'pretrain', '--config', config({ checkpoint: ck }), '--quiet'], { encoding: 'utf8' });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /word_embeddings\.weight' has shape \[10,32\], the model needs \[28996,32\]/);
});
