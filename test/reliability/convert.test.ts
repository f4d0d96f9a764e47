/**
 * Issue 15 (cases 1c, 8, 10a, 10c for convert) and issue 16 (the convert round trip keeps the model;
 * the head count is never guessed).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { command } from '../../src/cli/convert.js';
import type { HostTensor } from '../../src/engine/host.js';
import { readSafetensors } from '../../src/engine/safetensors.js';
import { serializeTorchZip, stateDictFromHost } from '../../src/interop/torch-writer.js';
import { runCommand } from '../helpers/cli.js';

const GOLDEN = fileURLToPath(new URL('../../../test/fixtures/golden/tiny/', import.meta.url));
const GOLDEN_CONFIG = path.join(GOLDEN, 'config.json');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-convert-rel-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));

const golden = readSafetensors(path.join(GOLDEN, 'weights.safetensors'));
const goldenTied = JSON.parse(golden.metadata.tied) as Record<string, string>;
const convert = (...args: string[]) => runCommand(command, args);
const leftovers = (dir: string) => fs.readdirSync(dir).filter((n) => n.startsWith('.'));

function writeCheckpoint(file: string, edit: (t: Map<string, HostTensor>) => void = () => undefined): void {
  const tensors = new Map(golden.tensors);
  edit(tensors);
  fs.writeFileSync(file, serializeTorchZip(stateDictFromHost(tensors, { tied: goldenTied })));
}

describe('uniter convert: round trip, output safety, verified folders', () => {
  const ckpt = path.join(TMP, 'src', 'model.pt');
  const folder = path.join(TMP, 'folder');
  before(async () => {
    fs.mkdirSync(path.dirname(ckpt));
    writeCheckpoint(ckpt);
    const r = await convert(ckpt, folder, '--config', GOLDEN_CONFIG);
    assert.equal(r.code, 0, r.err);
  });

  it('issue 16: --to-torch writes OUT.config.json beside OUT.pt; converting back reads it and gives the same model (4 heads stay 4)', async () => {
    const pt = path.join(TMP, 'rt', 'back.pt');
    const r = await convert('--to-torch', folder, pt);
    assert.equal(r.code, 0, r.err);
    const sidecar = path.join(TMP, 'rt', 'back.config.json');
    assert.match(r.out, /back\.config\.json/);
    assert.equal(JSON.parse(fs.readFileSync(sidecar, 'utf8')).num_attention_heads, 4);
    const again = path.join(TMP, 'rt-again');
    const r2 = await convert(pt, again);
    assert.equal(r2.code, 0, r2.err);
    assert.match(r2.out, /config \(.*back\.config\.json, checked against the tensor shapes\)/);
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(again, 'config.json'), 'utf8')), JSON.parse(fs.readFileSync(path.join(folder, 'config.json'), 'utf8')));
    assert.deepEqual(readSafetensors(path.join(again, 'model.safetensors')).tensors, readSafetensors(path.join(folder, 'model.safetensors')).tensors);
  });

  it('issue 16: without a config the head count is never guessed: refused (exit 1), naming --num-heads; --num-heads N converts', async () => {
    const out = path.join(TMP, 'guess');
    const r = await convert(ckpt, out);
    assert.equal(r.code, 1);
    assert.match(r.err, /^uniter convert: cannot infer config field 'num_attention_heads'.*--num-heads N/m);
    assert.ok(!fs.existsSync(out));
    assert.deepEqual(leftovers(TMP), []);
    const r2 = await convert(ckpt, out, '--num-heads', '4', '--json');
    assert.equal(r2.code, 0, r2.err);
    const line = JSON.parse(r2.out) as { config: { num_attention_heads: number }; configSource: string };
    assert.equal(line.config.num_attention_heads, 4);
    assert.equal(r2.out.split('\n').length, 1);
    const r3 = await convert(ckpt, path.join(TMP, 'contradiction'), '--num-heads', '8', '--config', GOLDEN_CONFIG);
    assert.equal(r3.code, 1);
    assert.match(r3.err, /--num-heads 8 contradicts num_attention_heads 4/);
  });

  it('case 1c: an existing model folder is never replaced without --overwrite; with it, it is replaced whole', async () => {
    const out = path.join(TMP, 'existing');
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, 'keep.txt'), 'mine');
    const r = await convert(ckpt, out, '--config', GOLDEN_CONFIG);
    assert.equal(r.code, 1);
    assert.match(r.err, /already exists; pass --overwrite/);
    assert.deepEqual(fs.readdirSync(out), ['keep.txt']);
    const r2 = await convert(ckpt, out, '--config', GOLDEN_CONFIG, '--overwrite');
    assert.equal(r2.code, 0, r2.err);
    assert.deepEqual(fs.readdirSync(out).sort(), ['README.md', 'config.json', 'model.safetensors', 'vocab.txt']);
    assert.deepEqual(leftovers(TMP), []);
  });

  it('case 8: a conversion whose folder would not load (wrong shapes, integer tensors) is refused with exit 1 and leaves nothing', async () => {
    const badShape = path.join(TMP, 'bad-shape.pt');
    writeCheckpoint(badShape, (t) => t.set('uniter.encoder.layer.0.attention.self.query.weight', { dtype: 'float32', shape: [32, 16], data: new Float32Array(32 * 16) }));
    const out = path.join(TMP, 'bad-shape');
    const r = await convert(badShape, out, '--config', GOLDEN_CONFIG);
    assert.equal(r.code, 1);
    assert.match(r.err, /refusing to write .*bad-shape: the converted folder would not load \(tensor 'uniter\.encoder\.layer\.0\.attention\.self\.query\.weight' has shape \[32,16\], the config needs \[32,32\]\); nothing was written/);
    assert.ok(!fs.existsSync(out));
    const ints = path.join(TMP, 'ints.pt');
    writeCheckpoint(ints, (t) => t.set('uniter.pooler.dense.weight', { dtype: 'int32', shape: [32, 32], data: new Int32Array(32 * 32) }));
    const r2 = await convert(ints, path.join(TMP, 'ints'), '--config', GOLDEN_CONFIG);
    assert.equal(r2.code, 1);
    assert.match(r2.err, /would not load \(.*uniter\.pooler\.dense\.weight' is int32, expected a float parameter\)/);
    assert.ok(!fs.existsSync(path.join(TMP, 'ints')));
    assert.deepEqual(leftovers(TMP), []);
  });

  it('case 10: --to-torch onto a folder, and a model folder path that is a file, are refused clearly with nothing left behind', async () => {
    const dir = path.join(TMP, 'a-folder');
    fs.mkdirSync(dir);
    const r = await convert('--to-torch', folder, dir);
    assert.equal(r.code, 1);
    assert.match(r.err, /^uniter convert: .*a-folder is a folder; give a file path/m);
    assert.doesNotMatch(r.err, /EISDIR/);
    assert.deepEqual(fs.readdirSync(dir), []);
    assert.deepEqual(leftovers(TMP), []);
    const file = path.join(TMP, 'a-file');
    fs.writeFileSync(file, 'x');
    const r2 = await convert(ckpt, file, '--config', GOLDEN_CONFIG);
    assert.equal(r2.code, 1);
    assert.match(r2.err, /a-file is a file, not a folder/);
    assert.doesNotMatch(r2.err, /EEXIST/);
    assert.equal(fs.readFileSync(file, 'utf8'), 'x');
    // an existing OUT.pt is not replaced without --overwrite either
    const pt = path.join(TMP, 'once.pt');
    assert.equal((await convert('--to-torch', folder, pt)).code, 0);
    const r3 = await convert('--to-torch', folder, pt);
    assert.equal(r3.code, 1);
    assert.match(r3.err, /once\.pt already exists; pass --overwrite/);
    assert.equal((await convert('--to-torch', folder, pt, '--overwrite')).code, 0);
  });

  it('issue 16: model folders carry model_type, vocab.txt and a model card', async () => {
    const cfg = JSON.parse(fs.readFileSync(path.join(folder, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(Object.keys(cfg)[0], 'model_type');
    assert.equal(cfg.model_type, 'uniter');
    assert.equal(fs.readFileSync(path.join(folder, 'vocab.txt'), 'utf8').split('\n')[101], '[CLS]');
    const card = fs.readFileSync(path.join(folder, 'README.md'), 'utf8');
    assert.match(card, /Trained by: uniter convert from model\.pt/);
    assert.match(card, /hidden 32, 2 layers, 4 heads/);
  });
});
