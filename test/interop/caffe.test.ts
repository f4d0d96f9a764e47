import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { HostTensor, f32 } from '../../src/engine/host.js';
import { PbReader, PbWriter, ProtobufError } from '../../src/engine/protobuf.js';
import { DetectorConfig, VG_CONFIG, parseDetectorConfig } from '../../src/detector/config.js';
import { CaffeError, parseCaffemodel, parsePrototxt, prototxtLayers } from '../../src/interop/caffe.js';
import { caffeBlockName, caffeToDetector, pyFasterRcnnAnchors, resnetConvTarget } from '../../src/interop/caffe-detector.js';
import { CELL_ANCHORS, detectorParamShapes as detectorTensorShapes } from '../../src/detector/weights.js';
import { readTorchCheckpoint } from '../../src/interop/torch-checkpoint.js';
import { detectorToCaffe, writeCaffemodel } from '../helpers/caffe-writer.js';

const FIXTURE = fileURLToPath(new URL('../../../test/fixtures/detector/frcnn-tiny-torch/', import.meta.url));
const WHERE = { caffemodel: 'tiny.caffemodel', prototxt: 'tiny.prototxt' };

/** The frcnn-tiny reference weights (ResNet-50 layout, tiny widths), num_batches_tracked dropped. */
function tinyWeights(): Map<string, HostTensor> {
  const ck = readTorchCheckpoint(`${FIXTURE}pytorch_model.bin`);
  return new Map([...ck.tensors].filter(([n]) => !n.endsWith('num_batches_tracked')));
}

const tinyConfig: DetectorConfig = parseDetectorConfig(
  {
    ...structuredClone(VG_CONFIG),
    resnets: { ...VG_CONFIG.resnets, depth: 50, stem_out_channels: 8, res2_out_channels: 32, width_per_group: 8 },
    anchor_generator: { ...VG_CONFIG.anchor_generator, sizes: [[32, 64, 128, 256]] },
    proposal_generator: { ...VG_CONFIG.proposal_generator, hidden_channels: 16 },
    roi_heads: { ...VG_CONFIG.roi_heads, num_classes: 21 },
    roi_box_head: { ...VG_CONFIG.roi_box_head, num_attrs: 11 },
  },
  'tiny',
);

/** Distance in units in the last place between two float32 values. */
function ulps(a: number, b: number): number {
  if (a === b) return 0;
  const buf = new DataView(new ArrayBuffer(8));
  buf.setFloat32(0, a, true);
  buf.setFloat32(4, b, true);
  const ia = buf.getInt32(0, true);
  const ib = buf.getInt32(4, true);
  const oa = ia < 0 ? 0x80000000 - ia : ia;
  const ob = ib < 0 ? 0x80000000 - ib : ib;
  return Math.abs(oa - ob);
}

function assertTensorsMatch(got: Map<string, HostTensor>, want: Map<string, HostTensor>, maxUlps: (name: string) => number): void {
  const skip = new Set([CELL_ANCHORS]);
  for (const [n, t] of want) {
    if (skip.has(n)) continue;
    const g = got.get(n);
    assert.ok(g, `missing ${n}`);
    assert.deepEqual(g.shape, t.shape, `shape of ${n}`);
    const tol = maxUlps(n);
    const a = g.data as Float32Array;
    const b = t.data as Float32Array;
    for (let i = 0; i < b.length; i++) {
      if (tol === 0) {
        if (!Object.is(a[i], b[i])) assert.fail(`${n}[${i}]: ${a[i]} !== ${b[i]} (bitwise copy expected)`);
      } else if (ulps(a[i], b[i]) > tol) assert.fail(`${n}[${i}]: ${a[i]} vs ${b[i]} (${ulps(a[i], b[i])} ulps > ${tol})`);
    }
  }
  assert.equal(got.size, [...want.keys()].length, 'same number of tensors');
}

/** Random weights of the right shapes for any config (values spread, some negative). */
function randomWeights(cfg: DetectorConfig, seed = 1): Map<string, HostTensor> {
  let s = seed;
  const rnd = () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s / 2 ** 31;
  };
  const out = new Map<string, HostTensor>();
  for (const [n, shape] of detectorTensorShapes(cfg)) {
    const t = f32(shape);
    const d = t.data as Float32Array;
    for (let i = 0; i < d.length; i++) d[i] = n.endsWith('running_var') ? 0.5 + rnd() : rnd() * 2 - 1;
    out.set(n, t);
  }
  return out;
}

describe('protobuf reader', () => {
  it('reads what PbWriter writes', () => {
    const bytes = new PbWriter().int(1, 300).string(2, 'abc').float(3, 1.5).int(4, -1).finish();
    const fields = [...new PbReader(bytes).fields()];
    assert.deepEqual(fields.map((f) => [f.field, f.wire]), [[1, 0], [2, 2], [3, 5], [4, 0]]);
    assert.equal(fields[0].value, 300n);
    assert.equal(new TextDecoder().decode(fields[1].value as Uint8Array), 'abc');
    assert.equal(fields[3].value, 2n ** 64n - 1n);
  });
  it('rejects malformed input with the byte offset', () => {
    const bad = (b: number[], re: RegExp) => assert.throws(() => [...new PbReader(Uint8Array.from(b)).fields()], (e: Error) => e instanceof ProtobufError && re.test(e.message));
    bad([0x08, 0x80], /truncated varint at byte 1/);
    bad([0x08, ...new Array(11).fill(0xff)], /varint longer than/);
    bad([0x12, 0x05, 0x61], /declares 5 bytes but only 1 remain/);
    bad([0x0b], /unsupported wire type 3/);
    bad([0x00, 0x00], /invalid field number 0/);
    bad([0x0d, 0x00, 0x00], /truncated 4-byte value/);
  });
});

describe('caffemodel reader', () => {
  it('reads modern layers with BlobShape, legacy dims, unpacked and double data', () => {
    const bytes = writeCaffemodel([
      { name: 'a', type: 'Convolution', blobs: [{ shape: [2, 1, 1, 1], data: Float32Array.of(1, -2) }, { shape: [2], data: Float32Array.of(0.5, 3), unpacked: true }] },
      { name: 'b', type: 'InnerProduct', blobs: [{ shape: [2, 3], data: Float32Array.of(1, 2, 3, 4, 5, 6), legacyDims: true }, { shape: [2], data: Float32Array.of(0.1, 0.2), double: true }] },
      { name: 'relu', type: 'ReLU', blobs: [] },
    ]);
    const m = parseCaffemodel(bytes, 'x.caffemodel');
    assert.equal(m.format, 'layer');
    assert.deepEqual(m.layers.map((l) => [l.name, l.type, l.blobs.length]), [['a', 'Convolution', 2], ['b', 'InnerProduct', 2], ['relu', 'ReLU', 0]]);
    assert.deepEqual(m.layers[1].blobs[0].shape, [1, 1, 2, 3]);
    assert.deepEqual([...m.layers[0].blobs[1].data], [0.5, 3]);
    assert.deepEqual([...m.layers[1].blobs[1].data], [Math.fround(0.1), Math.fround(0.2)]);
    assert.equal(m.layers[1].blobs[1].fromDouble, true);
  });
  it('reads the legacy V1 layers field with enum types', () => {
    const m = parseCaffemodel(writeCaffemodel([{ name: 'conv', type: 'Convolution', blobs: [{ shape: [1, 1, 2, 2], data: Float32Array.of(1, 2, 3, 4), legacyDims: true }] }, { name: 'fc', type: 'InnerProduct', blobs: [] }], { v1: true }), 'v1.caffemodel');
    assert.equal(m.format, 'v1');
    assert.deepEqual(m.layers.map((l) => l.type), ['Convolution', 'InnerProduct']);
  });
  it('names the file and the problem for malformed files', () => {
    const good = writeCaffemodel([{ name: 'a', type: 'Convolution', blobs: [{ shape: [4], data: Float32Array.of(1, 2, 3, 4) }] }]);
    const err = (b: Uint8Array, re: RegExp) => assert.throws(() => parseCaffemodel(b, 'm.caffemodel'), (e: Error) => e instanceof CaffeError && e.message.startsWith('m.caffemodel') && re.test(e.message));
    err(new Uint8Array(0), /empty file/);
    err(good.subarray(0, good.length - 3), /not a valid Caffe NetParameter: .*(remain|truncated)/);
    err(Uint8Array.from([...good, 0x80]), /truncated varint/);
    err(new TextEncoder().encode('layer { name: "x" }\n'), /./);
    // A blob whose shape disagrees with its data.
    err(writeCaffemodel([{ name: 'a', type: 'Convolution', blobs: [{ shape: [5], data: Float32Array.of(1, 2, 3, 4) }] }]), /layer 'a', blob 0: shape \[5\] holds 5 values but the blob has 4/);
    // A packed float run whose length is not a multiple of 4.
    const w = new PbWriter().string(1, 'n').message(100, new PbWriter().string(1, 'a').message(7, new PbWriter().bytes(5, Uint8Array.of(1, 2, 3))));
    err(w.finish(), /packed data at byte \d+ has 3 bytes/);
    err(new PbWriter().string(1, 'just a name').finish(), /no layers found/);
  });
  it('never crashes or hangs on corrupted bytes', () => {
    const base = writeCaffemodel([{ name: 'a', type: 'Convolution', blobs: [{ shape: [2, 2], data: Float32Array.of(1, 2, 3, 4) }, { shape: [2], data: Float32Array.of(5, 6) }] }]);
    let s = 7;
    for (let trial = 0; trial < 500; trial++) {
      const b = base.slice(0, 1 + (trial % base.length));
      s = (s * 48271) % 2147483647;
      b[s % b.length] = s & 0xff;
      try {
        parseCaffemodel(b, 'fuzz.caffemodel');
      } catch (e) {
        assert.ok(e instanceof CaffeError, `trial ${trial}: ${(e as Error).stack}`);
        assert.match((e as Error).message, /^fuzz\.caffemodel/);
      }
    }
  });
});

describe('prototxt parser', () => {
  it('reads layers, params, comments, quotes and lists', () => {
    const net = parsePrototxt(
      `name: "n" # comment
layer {
  name: 'rpn_conv/3x3' type: "Convolution" bottom: "a" top: "b"
  convolution_param { num_output: 24   # 2 * 12
    kernel_size: 3 pad: 1 stride: 1 dilation: [2, 2] bias_term: false }
}
layer < name: "p" type: "Python" python_param { param_str: "'feat_stride': 16 \\n'scales': [4, 8]" } >
layers { name: "old" type: CONVOLUTION }`.replace('layers { name: "old" type: CONVOLUTION }', ''),
      'n.prototxt',
    );
    const ls = prototxtLayers(net);
    assert.deepEqual(ls.map((l) => [l.name, l.type]), [['rpn_conv/3x3', 'Convolution'], ['p', 'Python']]);
    const cp = ls[0].msg.message('convolution_param')!;
    assert.equal(cp.num('num_output'), 24);
    assert.deepEqual(cp.nums('dilation'), [2, 2]);
    assert.equal(cp.bool('bias_term'), false);
    assert.equal(ls[1].msg.message('python_param')!.str('param_str'), "'feat_stride': 16 \n'scales': [4, 8]");
    const v1 = prototxtLayers(parsePrototxt('layers { name: "c" type: CONVOLUTION }\nlayers { name: "f" type: INNER_PRODUCT }', 'v1.prototxt'));
    assert.deepEqual(v1.map((l) => l.type), ['Convolution', 'InnerProduct']);
  });
  it('reports syntax errors with file and line', () => {
    const err = (t: string, re: RegExp) => assert.throws(() => prototxtLayers(parsePrototxt(t, 'p.prototxt')), (e: Error) => e instanceof CaffeError && re.test(e.message));
    err('layer {\n name: "a"\n type: "ReLU"\n', /p\.prototxt:1: message opened here is never closed/);
    err('layer {\n name: "a\n}', /p\.prototxt:2: unterminated string/);
    err('layer { name "a" }', /p\.prototxt:1: expected ':' or '\{' after 'name'/);
    err('layer { type: "ReLU" }', /p\.prototxt:1: layer has no name/);
    err('layer { name: "a" type: "ReLU" }\nlayer { name: "a" type: "ReLU" }', /p\.prototxt:2: layer name 'a' is used twice/);
    err('name: "x"', /no 'layer \{ \.\.\. \}' blocks/);
    err('layer { name: "a" type: "ReLU" } }', /expected a field name, got '\}'/);
  });
});

describe('BUTD Caffe names', () => {
  it('maps ResNet-50 letters and ResNet-101 b<n> names', () => {
    assert.deepEqual(resnetConvTarget('conv1'), { stage: 1, block: 0, ref: 'backbone.stem.conv1' });
    assert.equal(resnetConvTarget('res2a_branch1')?.ref, 'backbone.res2.0.shortcut');
    assert.equal(resnetConvTarget('res2c_branch2b')?.ref, 'backbone.res2.2.conv2');
    assert.equal(resnetConvTarget('res4f_branch2c')?.ref, 'backbone.res4.5.conv3');
    assert.equal(resnetConvTarget('res3b3_branch2a')?.ref, 'backbone.res3.3.conv1');
    assert.equal(resnetConvTarget('res4b22_branch2c')?.ref, 'backbone.res4.22.conv3');
    assert.equal(resnetConvTarget('res5c_branch2a')?.ref, 'roi_heads.res5.2.conv1');
    assert.equal(resnetConvTarget('res5a_branch1')?.ref, 'roi_heads.res5.0.shortcut');
    for (const bad of ['res4c1_branch2a', 'res4b0_branch2a', 'res4b_branch3', 'rpn_conv/3x3', 'res6a_branch1']) assert.equal(resnetConvTarget(bad), null, bad);
    assert.equal(caffeBlockName(4, 0, 'numbered'), 'res4a');
    assert.equal(caffeBlockName(4, 22, 'numbered'), 'res4b22');
    assert.equal(caffeBlockName(4, 5, 'letters'), 'res4f');
    for (let b = 0; b < 23; b++) assert.equal(resnetConvTarget(`${caffeBlockName(4, b, 'numbered')}_branch2b`)?.ref, `backbone.res4.${b}.conv2`);
  });
  it('generates py-faster-rcnn anchors (the known table for scales 8, 16, 32)', () => {
    assert.deepEqual(pyFasterRcnnAnchors([8, 16, 32], [0.5, 1, 2]), [
      [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
      [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
      [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
    ]);
  });
});

describe('caffeToDetector', () => {
  const ref = tinyWeights();

  it('round-trips the frcnn-tiny weights (ResNet-50 letter naming)', () => {
    const { layers, prototxt } = detectorToCaffe(tinyConfig, ref);
    const out = caffeToDetector(writeCaffemodel(layers), prototxt, WHERE);
    // bbox_pred goes through / (10, 10, 5, 5) and back: not always bit-exact.
    assertTensorsMatch(out.tensors, ref, (n) => (n.includes('bbox_pred') ? 1 : 0));
    const c = out.config;
    assert.equal(c.resnets.depth, 50);
    assert.equal(c.resnets.stem_out_channels, 8);
    assert.equal(c.resnets.res2_out_channels, 32);
    assert.equal(c.resnets.width_per_group, 8);
    assert.equal(c.resnets.stride_in_1x1, true);
    assert.equal(c.proposal_generator.hidden_channels, 16);
    assert.equal(c.roi_heads.num_classes, 21);
    assert.equal(c.roi_box_head.num_attrs, 11);
    assert.equal(c.roi_box_head.pooler_resolution, 14);
    assert.deepEqual(c.anchor_generator.sizes, [[32, 64, 128, 256]]);
    assert.deepEqual(c.roi_box_head.bbox_reg_weights, [10, 10, 5, 5]);
    // Caffe's anchors (ratios outer, scales 2..16), x2/y2 + 1 so the +1-free decoding matches.
    const a = [...(out.tensors.get(CELL_ANCHORS)!.data as Float32Array)];
    assert.equal(a.length, 48);
    assert.deepEqual(a.slice(0, 4), [-15, -4, 31, 20]); // ratio 0.5, scale 2: 46 x 24
    assert.deepEqual(a.slice(6 * 4, 7 * 4), [-56, -56, 72, 72]); // ratio 1, scale 8: 128 x 128
    assert.deepEqual(a.slice(11 * 4), [-80, -168, 96, 184]); // ratio 2, scale 16: 176 x 352
    assert.deepEqual(out.notes, []);
  });

  it('folds BatchNorm with a moving-average factor and a non-default eps', () => {
    const { layers, prototxt } = detectorToCaffe(tinyConfig, ref, { bnFactor: 999.982, bnEps: 1e-4 });
    const out = caffeToDetector(writeCaffemodel(layers), prototxt, WHERE);
    assertTensorsMatch(out.tensors, ref, (n) => (n.includes('bbox_pred') ? 1 : n.endsWith('running_mean') ? 2 : 0) || (n.endsWith('running_var') ? 1 << 30 : 0));
    for (const [n, t] of ref) {
      if (!n.endsWith('running_var')) continue;
      const got = out.tensors.get(n)!.data as Float32Array;
      (t.data as Float32Array).forEach((v, i) => assert.ok(Math.abs(got[i] + 1e-5 - (v + 1e-4)) <= 1e-6 * (v + 1e-4), `${n}[${i}]`));
    }
    assert.ok(out.notes.some((n) => /eps 0\.0001 differs/.test(n)));
  });

  it('turns the 2A softmax RPN classifier into A sigmoid logits', () => {
    const A = 12;
    const H = 16;
    const bgW = Float32Array.from({ length: A * H }, (_, i) => Math.sin(i) * 0.5);
    const bgB = Float32Array.from({ length: A }, (_, i) => Math.cos(i));
    const { layers, prototxt } = detectorToCaffe(tinyConfig, ref, { rpnBackground: { w: bgW, b: bgB } });
    const caffeCls = layers.find((l) => l.name === 'rpn_cls_score')!.blobs;
    const out = caffeToDetector(writeCaffemodel(layers), prototxt, WHERE);
    const lw = out.tensors.get('proposal_generator.rpn_head.objectness_logits.weight')!.data as Float32Array;
    const lb = out.tensors.get('proposal_generator.rpn_head.objectness_logits.bias')!.data as Float32Array;
    const x = Float32Array.from({ length: H }, (_, i) => Math.cos(3 * i) * 2);
    for (let a = 0; a < A; a++) {
      const dot = (w: Float32Array, row: number) => w.subarray(row * H, row * H + H).reduce((s, v, i) => s + v * x[i], 0);
      const bg = dot(caffeCls[0].data, a) + caffeCls[1].data[a];
      const fg = dot(caffeCls[0].data, A + a) + caffeCls[1].data[A + a];
      const softmaxFg = Math.exp(fg) / (Math.exp(fg) + Math.exp(bg));
      const sigmoid = 1 / (1 + Math.exp(-(dot(lw, a) + lb[a])));
      assert.ok(Math.abs(softmaxFg - sigmoid) < 1e-6, `anchor ${a}: ${softmaxFg} vs ${sigmoid}`);
    }
  });

  it('converts a ResNet-101 layout with res3b1..b3 / res4b1..b22 names', () => {
    const cfg = parseDetectorConfig({ ...structuredClone(tinyConfig), resnets: { ...tinyConfig.resnets, depth: 101, stem_out_channels: 4, res2_out_channels: 8, width_per_group: 2 } }, 'r101');
    const w = randomWeights(cfg);
    w.set(CELL_ANCHORS, f32([12, 4]));
    const { layers, prototxt } = detectorToCaffe(cfg, w);
    assert.ok(layers.some((l) => l.name === 'res4b22_branch2c') && layers.some((l) => l.name === 'res3b3_branch2a') && layers.some((l) => l.name === 'res5c_branch2b'));
    assert.ok(!layers.some((l) => l.name === 'res4w_branch2a'));
    const out = caffeToDetector(writeCaffemodel(layers), prototxt, WHERE);
    assertTensorsMatch(out.tensors, w, (n) => (n.includes('bbox_pred') ? 1 : 0));
    assert.equal(out.config.resnets.depth, 101);
    assert.equal(out.tensors.get('backbone.res4.22.conv3.weight')!.shape.join(), '32,8,1,1');
  });

  it('gives clear errors for missing layers, wrong blob sizes and a mismatched prototxt', () => {
    const { layers, prototxt } = detectorToCaffe(tinyConfig, ref);
    const err = (ls: typeof layers, txt: string, re: RegExp) => assert.throws(() => caffeToDetector(writeCaffemodel(ls), txt, WHERE), (e: Error) => e instanceof CaffeError && re.test(e.message));
    err(layers.filter((l) => l.name !== 'res3a_branch2b'), prototxt, /^tiny\.caffemodel: no weights for layer 'res3a_branch2b' \(Convolution, tiny\.prototxt:\d+\)/);
    err(layers.filter((l) => l.name !== 'scale4a_branch1'), prototxt, /no weights for layer 'scale4a_branch1'/);
    const wrong = layers.map((l) => (l.name === 'bn2b_branch2a' ? { ...l, blobs: [{ shape: [7], data: new Float32Array(7) }, ...l.blobs.slice(1)] } : l));
    err(wrong, prototxt, /layer 'bn2b_branch2a' blob 0 has shape \[7\], expected \[8\]/);
    const fewer = layers.map((l) => (l.name === 'cls_score' ? { ...l, blobs: l.blobs.slice(0, 1) } : l));
    err(fewer, prototxt, /layer 'cls_score' has 1 blobs, expected 2/);
    err(layers, prototxt.replace(/layer \{\n  name: "attr_score"[\s\S]*?\n\}\n/, ''), /tiny\.prototxt: no layer named 'attr_score'/);
    err(layers, prototxt.replace(/'scales': !!python\/tuple \[2, 4, 8, 16\]/, "'scales': [2, 4]"), /2 scales = 6 anchors, but rpn_bbox_pred has 12/);
    // A block missing from the prototxt breaks the ResNet layout.
    const noBlock = prototxt.replace(/layer \{\n  bottom: "[^"]*"\n  top: "res4f_branch2a"[\s\S]*$/, '');
    assert.throws(() => caffeToDetector(writeCaffemodel(layers), noBlock, WHERE), CaffeError);
    const bad = new Map(ref);
    const nan = f32([21 * 4, 256], (ref.get('roi_heads.box_predictor.bbox_pred.weight')!.data as Float32Array).slice());
    (nan.data as Float32Array)[5] = NaN;
    bad.set('roi_heads.box_predictor.bbox_pred.weight', nan);
    const n = detectorToCaffe(tinyConfig, bad);
    assert.throws(() => caffeToDetector(writeCaffemodel(n.layers), n.prototxt, WHERE), /tensor 'roi_heads\.box_predictor\.bbox_pred\.weight' has a non-finite value \(NaN\) at flat index 5/);
  });

  it('reads the real BUTD test.prototxt shape (layer names and counts)', () => {
    // The ResNet-101 naming in the release's prototxt: res2a-c, res3a + res3b1-b3, res4a + res4b1-b22, res5a-c.
    const names = ['conv1', ...['a', 'b', 'c'].map((b) => `res2${b}`), 'res3a', 'res3b1', 'res3b2', 'res3b3', 'res4a', ...Array.from({ length: 22 }, (_, i) => `res4b${i + 1}`), 'res5a', 'res5b', 'res5c'];
    const refs = new Set(names.flatMap((n) => (n === 'conv1' ? ['conv1'] : [`${n}_branch2a`, `${n}_branch2b`, `${n}_branch2c`, ...(n.endsWith('a') ? [`${n}_branch1`] : [])])).map((n) => resnetConvTarget(n)!.ref));
    const want = new Set([...detectorTensorShapes({ ...VG_CONFIG }).keys()].filter((n) => n.endsWith('.weight') && !n.includes('norm') && /res\d|stem/.test(n)).map((n) => n.slice(0, -'.weight'.length)));
    assert.deepEqual([...refs].sort(), [...want].sort());
  });
});
