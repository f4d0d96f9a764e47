/**
 * The BUTD Faster R-CNN as two traced graphs (run by ONNX Runtime with the weights inside):
 *
 *  backbone: image [1, 3, h, w] -> stem (conv 7x7/2, ReLU, Caffe max pool 3x3/2 ceil) -> res2..res4
 *            (bottlenecks, stride in the 1x1 conv) -> RPN head (3x3 conv, ReLU, objectness and
 *            anchor-delta 1x1 convs)
 *  box head: res4 + proposals -> RoIPool 14x14 at 1/16 -> res5 (stride 1, 3x3 convs dilated 2)
 *            -> mean over 14x14 = the region feature -> class logits (background last), class
 *            probabilities, class-specific box deltas, and the attribute head (embedding of the
 *            arg-max class incl. background, concatenated, fc + ReLU, attribute logits; the last
 *            attribute logit is dropped before the softmax).
 *
 * Frozen BatchNorms arrive folded into the convs (weights.ts). What lies between the graphs
 * (anchors, top-k, NMS, box selection) is data-dependent and runs in boxes.ts.
 */
import { Graph, Tensor } from '../engine/graph.js';
import { argMax, concat, conv2d, gather, linear, maxPool2d, maxRoiPool, mean, relu, add, slice, softmax } from '../engine/ops.js';
import { DetectorConfig, detectorDims } from './config.js';
import { BlockSpec, resnetBlocks } from './weights.js';

/** Stride of res4 relative to the input image (RoIPool's 1/16 and the anchors' step). */
export const FEATURE_STRIDE = 16;

function convBias(g: Graph, x: Tensor, name: string, out: number, inp: number, k: number, opts: { stride?: number; pad?: number; dilation?: number } = {}): Tensor {
  return conv2d(x, g.param(`${name}.weight`, [out, inp, k, k]), g.param(`${name}.bias`, [out]), opts);
}

function bottleneck(g: Graph, x: Tensor, b: BlockSpec): Tensor {
  let y = relu(convBias(g, x, `${b.prefix}.conv1`, b.bottleneck, b.inChannels, 1, { stride: b.stride }));
  y = relu(convBias(g, y, `${b.prefix}.conv2`, b.bottleneck, b.bottleneck, 3, { pad: b.dilation, dilation: b.dilation }));
  y = convBias(g, y, `${b.prefix}.conv3`, b.outChannels, b.bottleneck, 1);
  const shortcut = b.hasShortcut ? convBias(g, x, `${b.prefix}.shortcut`, b.outChannels, b.inChannels, 1, { stride: b.stride }) : x;
  return relu(add(y, shortcut));
}

export interface BackboneOutputs {
  res4: Tensor;
  objectness: Tensor;
  anchorDeltas: Tensor;
  stem: Tensor;
  res2: Tensor;
  res3: Tensor;
}

/** The backbone and RPN head over one preprocessed image `image` [1, 3, h, w]. */
export function buildBackbone(cfg: DetectorConfig): { graph: Graph; outputs: BackboneOutputs } {
  const g = new Graph('butd_backbone');
  const d = detectorDims(cfg);
  const image = g.input('image', 'float32', [1, 3, 'h', 'w']);
  const stemCh = cfg.resnets.stem_out_channels;
  const stemConv = relu(convBias(g, image, 'backbone.stem.conv1', stemCh, 3, 7, { stride: 2, pad: 3 }));
  const stem = maxPool2d(stemConv, 3, 2, 0, true);
  const stages: Tensor[] = [];
  let x = stem;
  for (const blocks of resnetBlocks(cfg).backbone) {
    for (const b of blocks) x = bottleneck(g, x, b);
    stages.push(x);
  }
  const res4 = x;
  const hidden = cfg.proposal_generator.hidden_channels;
  const t = relu(convBias(g, res4, 'proposal_generator.rpn_head.conv', hidden, d.res4, 3, { pad: 1 }));
  const objectness = convBias(g, t, 'proposal_generator.rpn_head.objectness_logits', d.anchors, hidden, 1);
  const anchorDeltas = convBias(g, t, 'proposal_generator.rpn_head.anchor_deltas', d.anchors * 4, hidden, 1);
  return { graph: g, outputs: { res4, objectness, anchorDeltas, stem, res2: stages[0], res3: stages[1] } };
}

export interface BoxHeadOutputs {
  pooled: Tensor;
  res5: Tensor;
  features: Tensor;
  clsLogits: Tensor;
  clsProbs: Tensor;
  attrClassInput: Tensor;
  attrHidden: Tensor;
  attrLogits: Tensor;
  attrProbsAll: Tensor;
  boxDeltas: Tensor;
}

/** The RoI head over res4 [1, C4, fh, fw] and proposals `rois` [r, 5] (0, x1, y1, x2, y2). */
export function buildBoxHead(cfg: DetectorConfig): { graph: Graph; outputs: BoxHeadOutputs } {
  const g = new Graph('butd_box_head');
  const d = detectorDims(cfg);
  const res4 = g.input('res4', 'float32', [1, d.res4, 'fh', 'fw']);
  const rois = g.input('rois', 'float32', ['r', 5]);
  const res = cfg.roi_box_head.pooler_resolution;
  const pooled = maxRoiPool(res4, rois, res, 1 / FEATURE_STRIDE);
  let x = pooled;
  for (const b of resnetBlocks(cfg).res5) x = bottleneck(g, x, b);
  const res5 = x;
  const features = mean(res5, [2, 3]);
  const K = cfg.roi_heads.num_classes;
  const NA = cfg.roi_box_head.num_attrs;
  const p = 'roi_heads.box_predictor';
  const clsLogits = linear(features, g.param(`${p}.cls_score.weight`, [K + 1, d.res5]), g.param(`${p}.cls_score.bias`, [K + 1]));
  const boxDeltas = linear(features, g.param(`${p}.bbox_pred.weight`, [K * 4, d.res5]), g.param(`${p}.bbox_pred.bias`, [K * 4]));
  const attrClassInput = argMax(clsLogits, 1);
  const embedded = gather(g.param(`${p}.cls_embedding.weight`, [K + 1, d.clsEmbed]), attrClassInput);
  const attrHidden = relu(linear(concat([features, embedded], 1), g.param(`${p}.fc_attr.weight`, [d.attrHidden, d.res5 + d.clsEmbed]), g.param(`${p}.fc_attr.bias`, [d.attrHidden])));
  const attrLogits = linear(attrHidden, g.param(`${p}.attr_score.weight`, [NA + 1, d.attrHidden]), g.param(`${p}.attr_score.bias`, [NA + 1]));
  const attrProbsAll = softmax(slice(attrLogits, 1, 0, NA), -1);
  return {
    graph: g,
    outputs: { pooled, res5, features, clsLogits, clsProbs: softmax(clsLogits, -1), attrClassInput, attrHidden, attrLogits, attrProbsAll, boxDeltas },
  };
}
