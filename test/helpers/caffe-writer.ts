/**
 * Test-only Caffe writer: a binary NetParameter and a BUTD-shaped test prototxt built from the
 * reference detector's tensors by the inverse of caffeToDetector's mapping, so that reading them
 * back must give the tensors again.
 */
import { HostTensor } from '../../src/engine/host.js';
import { PbWriter } from '../../src/engine/protobuf.js';
import { BLOCKS_PER_STAGE, DetectorConfig } from '../../src/detector/config.js';
import { ResnetNaming, caffeBlockName, caffeStageNaming } from '../../src/interop/caffe-detector.js';

export interface WBlob {
  shape: number[];
  data: Float32Array;
  /** Store num/channels/height/width (padded to 4 dims) instead of BlobShape. */
  legacyDims?: boolean;
  /** One float per field entry instead of a packed run. */
  unpacked?: boolean;
  /** Store double_data. */
  double?: boolean;
}

export interface WLayer {
  name: string;
  type: string;
  blobs: WBlob[];
}

function varints(values: number[]): Uint8Array {
  const out: number[] = [];
  for (let v of values) {
    while (v >= 0x80) {
      out.push((v & 0x7f) | 0x80);
      v = Math.floor(v / 128);
    }
    out.push(v);
  }
  return Uint8Array.from(out);
}

function blobMessage(b: WBlob): PbWriter {
  const w = new PbWriter();
  if (b.legacyDims) {
    const d = [1, 1, 1, 1, ...b.shape].slice(-4);
    d.forEach((v, i) => w.int(i + 1, v));
  }
  if (b.double) {
    const bytes = new Uint8Array(b.data.length * 8);
    const dv = new DataView(bytes.buffer);
    b.data.forEach((v, i) => dv.setFloat64(i * 8, v, true));
    w.bytes(8, bytes);
  } else if (b.unpacked) {
    for (const v of b.data) w.float(5, v);
  } else {
    w.bytes(5, new Uint8Array(b.data.buffer, b.data.byteOffset, b.data.byteLength));
  }
  if (!b.legacyDims) w.message(7, new PbWriter().bytes(1, varints(b.shape)));
  return w;
}

const V1_ENUM: Record<string, number> = { Convolution: 4, InnerProduct: 14, ReLU: 18, Pooling: 17 };

export function writeCaffemodel(layers: WLayer[], opts: { v1?: boolean; name?: string } = {}): Uint8Array {
  const net = new PbWriter().string(1, opts.name ?? 'test-net');
  for (const l of layers) {
    const m = new PbWriter();
    if (opts.v1) {
      m.string(4, l.name).int(5, V1_ENUM[l.type] ?? 0);
      for (const b of l.blobs) m.message(6, blobMessage(b));
      net.message(2, m);
    } else {
      m.string(1, l.name).string(2, l.type);
      for (const b of l.blobs) m.message(7, blobMessage(b));
      net.message(100, m);
    }
  }
  return net.finish();
}

export interface InverseOptions {
  /** Per-stage naming; default: what Caffe's ResNet release of that depth uses. */
  naming?: (stage: number) => ResnetNaming;
  /** BatchNorm moving-average factor stored in blob 2 (1 keeps the statistics bit-exact). */
  bnFactor?: number;
  /** batch_norm_param eps written to the prototxt (omitted when undefined). */
  bnEps?: number;
  /** RPN background weights/bias (the foreground gets logit + background); default zeros. */
  rpnBackground?: { w: Float32Array; b: Float32Array };
}

const f32 = (n: number) => new Float32Array(n);

/** Move the last row of a [rows, cols] matrix first (reference -> Caffe class order). */
function lastRowFirst(w: Float32Array, rows: number): Float32Array {
  const cols = w.length / rows;
  const out = new Float32Array(w.length);
  out.set(w.subarray((rows - 1) * cols), 0);
  out.set(w.subarray(0, (rows - 1) * cols), cols);
  return out;
}

/** The BUTD Caffe files for a reference state dict: layers with blobs and the test prototxt. */
export function detectorToCaffe(cfg: DetectorConfig, t: Map<string, HostTensor>, opts: InverseOptions = {}): { layers: WLayer[]; prototxt: string } {
  const get = (n: string) => {
    const x = t.get(n);
    if (!x) throw new Error(`detectorToCaffe: missing ${n}`);
    return x.data as Float32Array;
  };
  const shape = (n: string) => t.get(n)!.shape;
  const layers: WLayer[] = [];
  const txt: string[] = ['name: "BUTD-test"', 'input: "data"', 'input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }', 'input: "im_info"', 'input_shape { dim: 1 dim: 3 }'];
  const factor = opts.bnFactor ?? 1;
  const naming = opts.naming ?? ((s: number) => caffeStageNaming(cfg.resnets.depth, s));

  const convBn = (ref: string, conv: string, bnSuffix: string, bottom: string, stride: number, pad: number, dilation: number, relu: boolean) => {
    const w = get(`${ref}.weight`);
    const [cout, , k] = shape(`${ref}.weight`);
    layers.push({ name: conv, type: 'Convolution', blobs: [{ shape: shape(`${ref}.weight`), data: w }] });
    const mean = get(`${ref}.norm.running_mean`).map((v) => v * factor);
    const vari = get(`${ref}.norm.running_var`).map((v) => v * factor);
    layers.push({ name: `bn${bnSuffix}`, type: 'BatchNorm', blobs: [{ shape: [cout], data: mean }, { shape: [cout], data: vari }, { shape: [1], data: Float32Array.of(factor) }] });
    layers.push({ name: `scale${bnSuffix}`, type: 'Scale', blobs: [{ shape: [cout], data: get(`${ref}.norm.weight`) }, { shape: [cout], data: get(`${ref}.norm.bias`) }] });
    const eps = opts.bnEps === undefined ? '' : ` eps: ${opts.bnEps}`;
    txt.push(`layer {\n  bottom: "${bottom}"\n  top: "${conv}"\n  name: "${conv}"\n  type: "Convolution"\n  convolution_param {\n    num_output: ${cout}\n    kernel_size: ${k}\n    pad: ${pad}\n    stride: ${stride}${dilation !== 1 ? `\n    dilation: ${dilation}` : ''}\n    bias_term: false\n  }\n  param { lr_mult: 0.0 decay_mult: 0.0 }\n}`);
    txt.push(`layer { bottom: "${conv}" top: "${conv}" name: "bn${bnSuffix}" type: "BatchNorm" batch_norm_param { use_global_stats: true${eps} } }`);
    txt.push(`layer { bottom: "${conv}" top: "${conv}" name: "scale${bnSuffix}" type: "Scale" scale_param { bias_term: true } }`);
    if (relu) txt.push(`layer { top: "${conv}" bottom: "${conv}" name: "${conv}_relu" type: "ReLU" }`);
  };

  convBn('backbone.stem.conv1', 'conv1', '_conv1', 'data', 2, 3, 1, true);
  txt.push('layer { bottom: "conv1" top: "pool1" name: "pool1" type: "Pooling" pooling_param { kernel_size: 3 stride: 2 pool: MAX } }');
  let input = 'pool1';
  const blocks = BLOCKS_PER_STAGE[cfg.resnets.depth];
  const stage = (s: number, bottom: string): string => {
    for (let b = 0; b < blocks[s - 2]; b++) {
      const name = caffeBlockName(s, b, naming(s));
      const suf = name.slice(3);
      const owner = s === 5 ? 'roi_heads.res5' : `backbone.res${s}`;
      const stride = b === 0 && s >= 3 && s <= 4 ? 2 : 1;
      const dil = s === 5 ? 2 : 1;
      if (b === 0) convBn(`${owner}.0.shortcut`, `${name}_branch1`, `${suf}_branch1`, bottom, stride, 0, 1, false);
      convBn(`${owner}.${b}.conv1`, `${name}_branch2a`, `${suf}_branch2a`, bottom, stride, 0, 1, true);
      convBn(`${owner}.${b}.conv2`, `${name}_branch2b`, `${suf}_branch2b`, `${name}_branch2a`, 1, dil, dil, true);
      convBn(`${owner}.${b}.conv3`, `${name}_branch2c`, `${suf}_branch2c`, `${name}_branch2b`, 1, 0, 1, false);
      const short = b === 0 ? `${name}_branch1` : bottom;
      txt.push(`layer { bottom: "${short}" bottom: "${name}_branch2c" top: "${name}" name: "${name}" type: "Eltwise" }`);
      txt.push(`layer { bottom: "${name}" top: "${name}" name: "${name}_relu" type: "ReLU" }`);
      bottom = name;
    }
    return bottom;
  };
  for (const s of [2, 3, 4]) input = stage(s, input);
  const res4 = input;

  // RPN: Caffe's 2A softmax channels (bg first), the reference's logit = fg - bg.
  const A = shape('proposal_generator.rpn_head.objectness_logits.weight')[0];
  const H = shape('proposal_generator.rpn_head.conv.weight')[0];
  layers.push({ name: 'rpn_conv/3x3', type: 'Convolution', blobs: [{ shape: shape('proposal_generator.rpn_head.conv.weight'), data: get('proposal_generator.rpn_head.conv.weight') }, { shape: [H], data: get('proposal_generator.rpn_head.conv.bias') }] });
  const lw = get('proposal_generator.rpn_head.objectness_logits.weight');
  const lb = get('proposal_generator.rpn_head.objectness_logits.bias');
  const bg = opts.rpnBackground ?? { w: f32(A * H), b: f32(A) };
  const cw = f32(2 * A * H);
  const cb = f32(2 * A);
  cw.set(bg.w, 0);
  cb.set(bg.b, 0);
  for (let i = 0; i < A * H; i++) cw[A * H + i] = lw[i] + bg.w[i];
  for (let i = 0; i < A; i++) cb[A + i] = lb[i] + bg.b[i];
  layers.push({ name: 'rpn_cls_score', type: 'Convolution', blobs: [{ shape: [2 * A, H, 1, 1], data: cw }, { shape: [2 * A], data: cb }] });
  layers.push({ name: 'rpn_bbox_pred', type: 'Convolution', blobs: [{ shape: [4 * A, H, 1, 1], data: get('proposal_generator.rpn_head.anchor_deltas.weight') }, { shape: [4 * A], data: get('proposal_generator.rpn_head.anchor_deltas.bias') }] });
  const scales = cfg.anchor_generator.sizes[0].map((s) => s / 16);
  txt.push(`layer {\n  name: "rpn_conv/3x3"\n  type: "Convolution"\n  bottom: "${res4}"\n  top: "rpn/output"\n  param { lr_mult: 1.0 }\n  param { lr_mult: 2.0 }\n  convolution_param {\n    num_output: ${H}\n    kernel_size: 3 pad: 1 stride: 1\n    weight_filler { type: "gaussian" std: 0.01 }\n  }\n}`);
  txt.push('layer { name: "rpn_relu/3x3" type: "ReLU" bottom: "rpn/output" top: "rpn/output" }');
  txt.push(`layer { name: "rpn_cls_score" type: "Convolution" bottom: "rpn/output" top: "rpn_cls_score" convolution_param { num_output: ${2 * A}   # 2(bg/fg) * A\n kernel_size: 1 pad: 0 stride: 1 } }`);
  txt.push(`layer { name: "rpn_bbox_pred" type: "Convolution" bottom: "rpn/output" top: "rpn_bbox_pred" convolution_param { num_output: ${4 * A} kernel_size: 1 pad: 0 stride: 1 } }`);
  txt.push('layer { bottom: "rpn_cls_score" top: "rpn_cls_score_reshape" name: "rpn_cls_score_reshape" type: "Reshape" reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }');
  txt.push('layer { name: "rpn_cls_prob" type: "Softmax" bottom: "rpn_cls_score_reshape" top: "rpn_cls_prob" }');
  txt.push(`layer { name: 'rpn_cls_prob_reshape' type: 'Reshape' bottom: 'rpn_cls_prob' top: 'rpn_cls_prob_reshape' reshape_param { shape { dim: 0 dim: ${2 * A} dim: -1 dim: 0 } } }`);
  txt.push(`layer {\n  name: 'proposal'\n  type: 'Python'\n  bottom: 'rpn_cls_prob_reshape'\n  bottom: 'rpn_bbox_pred'\n  bottom: 'im_info'\n  top: 'rois'\n  python_param {\n    module: 'rpn.proposal_layer'\n    layer: 'ProposalLayer'\n    param_str: "'feat_stride': 16 \\n'scales': !!python/tuple [${scales.join(', ')}]"\n  }\n}`);
  txt.push(`layer { name: "roi_pool5" type: "ROIPooling" bottom: "${res4}" bottom: "rois" top: "roipool5" roi_pooling_param { pooled_w: ${cfg.roi_box_head.pooler_resolution} pooled_h: ${cfg.roi_box_head.pooler_resolution} spatial_scale: 0.0625 # 1/16\n } }`);
  const res5 = stage(5, 'roipool5');
  txt.push(`layer { bottom: "${res5}" top: "pool5" name: "pool5" type: "Pooling" pooling_param { global_pooling: true pool: AVE } }`);
  txt.push('layer { bottom: "pool5" top: "pool5_flat" name: "pool5_flat" type: "Flatten" flatten_param { axis: 1 } }');

  // Box predictor: background first in Caffe; bbox_pred with background rows, un-normalised deltas.
  const K = cfg.roi_heads.num_classes;
  const bp = 'roi_heads.box_predictor';
  const C5 = shape(`${bp}.cls_score.weight`)[1];
  layers.push({ name: 'cls_score', type: 'InnerProduct', blobs: [{ shape: [K + 1, C5], data: lastRowFirst(get(`${bp}.cls_score.weight`), K + 1) }, { shape: [K + 1], data: lastRowFirst(get(`${bp}.cls_score.bias`), K + 1) }] });
  const reg = cfg.roi_box_head.bbox_reg_weights;
  const bw = f32(4 * (K + 1) * C5);
  const bbias = f32(4 * (K + 1));
  const rw = get(`${bp}.bbox_pred.weight`);
  const rb = get(`${bp}.bbox_pred.bias`);
  for (let r = 0; r < 4 * K; r++) {
    for (let c = 0; c < C5; c++) bw[(r + 4) * C5 + c] = rw[r * C5 + c] / reg[r % 4];
    bbias[r + 4] = rb[r] / reg[r % 4];
  }
  layers.push({ name: 'bbox_pred', type: 'InnerProduct', blobs: [{ shape: [4 * (K + 1), C5], data: bw }, { shape: [4 * (K + 1)], data: bbias }] });
  const E = shape(`${bp}.cls_embedding.weight`)[1];
  layers.push({ name: 'cls_embedding', type: 'Embed', blobs: [{ shape: [K + 1, E], data: lastRowFirst(get(`${bp}.cls_embedding.weight`), K + 1) }] });
  const [AH, AI] = shape(`${bp}.fc_attr.weight`);
  layers.push({ name: 'fc_attr', type: 'InnerProduct', blobs: [{ shape: [AH, AI], data: get(`${bp}.fc_attr.weight`) }, { shape: [AH], data: get(`${bp}.fc_attr.bias`) }] });
  const NA1 = shape(`${bp}.attr_score.weight`)[0];
  layers.push({ name: 'attr_score', type: 'InnerProduct', blobs: [{ shape: [NA1, AH], data: lastRowFirst(get(`${bp}.attr_score.weight`), NA1) }, { shape: [NA1], data: lastRowFirst(get(`${bp}.attr_score.bias`), NA1) }] });
  const ip = (name: string, bottom: string, n: number) => `layer {\n  name: "${name}"\n  type: "InnerProduct"\n  bottom: "${bottom}"\n  top: "${name}"\n  param {\n    lr_mult: 1\n  }\n  inner_product_param {\n    num_output: ${n}\n    weight_filler {\n      type: "gaussian"\n      std: 0.01\n    }\n  }\n}`;
  txt.push(ip('cls_score', 'pool5', K + 1));
  txt.push(ip('bbox_pred', 'pool5', 4 * (K + 1)));
  txt.push('layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }');
  txt.push('layer { name: "predicted_cls" type: "ArgMax" bottom: "cls_score" top: "predicted_cls" argmax_param { axis: 1 } }');
  txt.push(`layer { name: "cls_embedding" type: "Embed" bottom: "predicted_cls" top: "cls_embedding" propagate_down: false embed_param { num_output: ${E} input_dim: ${K + 1} bias_term: false } }`);
  txt.push('layer { bottom: "cls_embedding" top: "cls_embedding_flat" name: "cls_embedding_flat" type: "Flatten" flatten_param { axis: 1 } }');
  txt.push('layer { name: "concat_pool5" type: "Concat" bottom: "pool5_flat" bottom: "cls_embedding_flat" top: "concat_pool5" concat_param { axis: 1 } }');
  txt.push(ip('fc_attr', 'concat_pool5', AH));
  txt.push('layer { name: "relu_attr" type: "ReLU" bottom: "fc_attr" top: "fc_attr" }');
  txt.push(ip('attr_score', 'fc_attr', NA1));
  txt.push('layer { name: "attr_prob" type: "Softmax" bottom: "attr_score" top: "attr_prob" }');
  return { layers, prototxt: txt.join('\n\n') + '\n' };
}
