import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { command } from '../../src/cli/convert.js';
import { runCommand } from '../helpers/cli.js';
import { HostTensor, f32 } from '../../src/engine/host.js';
import { readSafetensors } from '../../src/engine/safetensors.js';
import { DETECTOR_MODEL_TYPE, parseDetectorConfig, readDetectorConfig } from '../../src/detector/config.js';
import { CELL_ANCHORS } from '../../src/detector/weights.js';
import { fitReferenceAnchors, looksLikeDetector } from '../../src/interop/detector-weights.js';
import { serializeTorchZip, stateDictFromHost } from '../../src/interop/torch-writer.js';
import { detectorToCaffe, writeCaffemodel } from '../helpers/caffe-writer.js';

const FIXTURE = fileURLToPath(new URL('../../../test/fixtures/detector/frcnn-tiny-torch/', import.meta.url));
const BIN = path.join(FIXTURE, 'pytorch_model.bin');
const CONFIG = path.join(FIXTURE, 'config.json');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-detconv-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));

/** weights.safetensors of the golden set: the reference's state_dict, minus the BN counters. */
const golden = new Map([...readSafetensors(path.join(FIXTURE, 'weights.safetensors')).tensors].filter(([n]) => !n.endsWith('num_batches_tracked')));

const runCli = (args: string[]) => runCommand(command, args);

function assertBitwise(got: Map<string, HostTensor>, want: Map<string, HostTensor>, skip: (n: string) => boolean = () => false): void {
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
  for (const [n, t] of want) {
    if (skip(n)) continue;
    const g = got.get(n)!;
    assert.deepEqual(g.shape, t.shape, n);
    assert.equal(g.dtype, 'float32', n);
    assert.deepEqual(Buffer.from(g.data.buffer, g.data.byteOffset, g.data.byteLength), Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength), n);
  }
}

describe('uniter convert: detector checkpoints', () => {
  it('recognises detector names', () => {
    assert.equal(looksLikeDetector(golden.keys()), true);
    assert.equal(looksLikeDetector(['uniter.embeddings.word_embeddings.weight']), false);
    assert.equal(looksLikeDetector([]), false);
  });

  it('torch state dict -> detector folder with an inferred config', async () => {
    const out = path.join(TMP, 'inferred');
    const r = await runCli([BIN, out]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /region detector/);
    assert.match(r.out, /inferred: resnets\.depth = 50/);
    assert.match(r.out, /inferred: anchor_generator\.sizes = \[\[32, 64, 128, 256\]\]/);
    assert.match(r.out, /VG default: input\.min_size_test\/max_size_test = 600\/1000/);
    assert.match(r.out, /left out 53 \(53 num_batches_tracked\)/);
    assertBitwise(readSafetensors(path.join(out, 'model.safetensors')).tensors, golden);
    const cfg = readDetectorConfig(path.join(out, 'config.json'));
    const given = parseDetectorConfig(JSON.parse(fs.readFileSync(CONFIG, 'utf8')));
    assert.deepEqual(cfg.resnets, { ...VGish(given.resnets), depth: 50 });
    assert.equal(cfg.roi_heads.num_classes, 21);
    assert.equal(cfg.roi_box_head.num_attrs, 11);
    assert.equal(cfg.proposal_generator.hidden_channels, 16);
    assert.equal(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).model_type, DETECTOR_MODEL_TYPE);
  });

  it('torch state dict + --config config.json -> the given config', async () => {
    const out = path.join(TMP, 'given');
    const r = await runCli([BIN, out, '--config', CONFIG]);
    assert.equal(r.code, 0, r.err);
    assertBitwise(readSafetensors(path.join(out, 'model.safetensors')).tensors, golden);
    const cfg = readDetectorConfig(path.join(out, 'config.json'));
    assert.equal(cfg.input.min_size_test, 112);
    assert.equal(cfg.rpn.post_nms_topk_test, 50);
    assert.equal(cfg.max_detections, 20);
    const { model_type, ...rest } = cfg;
    assert.equal(model_type, DETECTOR_MODEL_TYPE);
    assert.deepEqual(rest, parseDetectorConfig(JSON.parse(fs.readFileSync(CONFIG, 'utf8')), CONFIG));
  });

  it('refuses an existing output unless --overwrite, and replaces it atomically', async () => {
    const out = path.join(TMP, 'twice');
    assert.equal((await runCli([BIN, out])).code, 0);
    fs.writeFileSync(path.join(out, 'stale.txt'), 'x');
    const again = await runCli([BIN, out]);
    assert.equal(again.code, 1);
    assert.match(again.err, /already exists; pass --overwrite/);
    const ok = await runCli([BIN, out, '--overwrite', '--config', CONFIG]);
    assert.equal(ok.code, 0, ok.err);
    assert.deepEqual(fs.readdirSync(out).sort(), ['config.json', 'model.safetensors']);
    assert.equal(readDetectorConfig(path.join(out, 'config.json')).input.min_size_test, 112);
    assert.deepEqual(fs.readdirSync(TMP).filter((n) => n.startsWith('.')), [], 'no temporary folders left');
  });

  it('checks shapes against a given config and finiteness, naming the tensor', async () => {
    const wrongCfg = path.join(TMP, 'wrong.json');
    const raw = JSON.parse(fs.readFileSync(CONFIG, 'utf8'));
    raw.roi_heads.num_classes = 20;
    fs.writeFileSync(wrongCfg, JSON.stringify(raw));
    const r = await runCli([BIN, path.join(TMP, 'wrong'), '--config', wrongCfg]);
    assert.equal(r.code, 1);
    assert.match(r.err, /tensor 'roi_heads\.box_predictor\.cls_score\.weight' has shape \[22, 256\], the config needs \[21, 256\]/);
    assert.ok(!fs.existsSync(path.join(TMP, 'wrong')));

    const bad = new Map(golden);
    const t = golden.get('backbone.res3.1.conv2.weight')!;
    const d = (t.data as Float32Array).slice();
    d[3] = Infinity;
    bad.set('backbone.res3.1.conv2.weight', f32(t.shape, d));
    const file = path.join(TMP, 'inf.bin');
    fs.writeFileSync(file, serializeTorchZip(stateDictFromHost(bad)));
    const r2 = await runCli([file, path.join(TMP, 'inf')]);
    assert.equal(r2.code, 1);
    assert.match(r2.err, /tensor 'backbone\.res3\.1\.conv2\.weight' has a non-finite value \(Infinity\) at flat index 3/);

    const yaml = path.join(TMP, 'config.yaml');
    fs.writeFileSync(yaml, 'model:\n  max_pool: true\n');
    const r3 = await runCli([BIN, path.join(TMP, 'y'), '--config', yaml]);
    assert.equal(r3.code, 1);
    assert.match(r3.err, /only JSON configs are read/);
  });

  it('.caffemodel needs --prototxt, and converts with it', async () => {
    const { layers, prototxt } = detectorToCaffe(parseDetectorConfig(JSON.parse(fs.readFileSync(CONFIG, 'utf8'))), golden);
    const model = path.join(TMP, 'tiny.caffemodel');
    const txt = path.join(TMP, 'test.prototxt');
    fs.writeFileSync(model, writeCaffemodel(layers));
    fs.writeFileSync(txt, prototxt);
    const r = await runCli([model, path.join(TMP, 'caffe')]);
    assert.equal(r.code, 2);
    assert.match(r.err, /--prototxt FILE/);
    const r2 = await runCli([BIN, path.join(TMP, 'p'), '--prototxt', txt]);
    assert.equal(r2.code, 2);
    assert.match(r2.err, /--prototxt only applies to a \.caffemodel/);
    const ok = await runCli([model, path.join(TMP, 'caffe'), '--prototxt', txt]);
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, /Caffe BUTD release/);
    const got = readSafetensors(path.join(TMP, 'caffe', 'model.safetensors')).tensors;
    assertBitwise(got, golden, (n) => n === CELL_ANCHORS || n.includes('bbox_pred'));
    // Caffe's anchors are not the reference's formula: the config keeps only their count.
    assert.equal(fitReferenceAnchors(got.get(CELL_ANCHORS)!.data as Float32Array), null);
    assert.deepEqual(fitReferenceAnchors(golden.get(CELL_ANCHORS)!.data as Float32Array), { sizes: [32, 64, 128, 256], ratios: [0.5, 1, 2] });
    const broken = path.join(TMP, 'broken.caffemodel');
    fs.writeFileSync(broken, fs.readFileSync(model).subarray(0, 1000));
    const r3 = await runCli([broken, path.join(TMP, 'broken'), '--prototxt', txt]);
    assert.equal(r3.code, 1);
    assert.match(r3.err, /broken\.caffemodel: not a valid Caffe NetParameter/);
  });
});

/** The resnets section as the inferred config has it (VG values for keys the shapes do not fix). */
function VGish(r: ReturnType<typeof parseDetectorConfig>['resnets']): Record<string, unknown> {
  return { depth: r.depth, num_groups: 1, res2_out_channels: r.res2_out_channels, stem_out_channels: r.stem_out_channels, stride_in_1x1: true, width_per_group: r.width_per_group, res5_dilation: 1 };
}
