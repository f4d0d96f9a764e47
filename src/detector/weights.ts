/**
 * The detector's weights under the reference's state-dict names: which tensors a config needs
 * (with shapes), strict loading of a detector folder, and the inference form the graphs use,
 * where every frozen BatchNorm is folded into the convolution before it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HostTensor } from '../engine/host.js';
import { readSafetensors } from '../engine/safetensors.js';
import { BLOCKS_PER_STAGE, DetectorConfig, detectorDims, readDetectorConfig } from './config.js';

export class DetectorWeightsError extends Error {}

/** BatchNorm eps of the reference (eval-mode torch BatchNorm2d = detectron2's FrozenBN). */
export const BN_EPS = 1e-5;

export interface BlockSpec {
  /** State-dict prefix, e.g. `backbone.res3.0`. */
  prefix: string;
  inChannels: number;
  bottleneck: number;
  outChannels: number;
  /** Stride of the first 1x1 conv (stride_in_1x1) and of the shortcut. */
  stride: number;
  dilation: number;
  hasShortcut: boolean;
}

/** The bottleneck blocks of res2..res4 (backbone) and res5 (box head), in order. */
export function resnetBlocks(cfg: DetectorConfig): { backbone: BlockSpec[][]; res5: BlockSpec[] } {
  const r = cfg.resnets;
  if (!r.stride_in_1x1) throw new DetectorWeightsError('detector config: resnets.stride_in_1x1 false is not supported (the BUTD model strides in the 1x1 conv)');
  const counts = BLOCKS_PER_STAGE[r.depth];
  const width = r.num_groups * r.width_per_group;
  const stages: BlockSpec[][] = [];
  let inCh = r.stem_out_channels;
  for (let s = 0; s < 4; s++) {
    const out = r.res2_out_channels * 2 ** s;
    const bottleneck = width * 2 ** s;
    const blocks: BlockSpec[] = [];
    for (let b = 0; b < counts[s]; b++) {
      const prefix = s < 3 ? `backbone.res${s + 2}.${b}` : `roi_heads.res5.${b}`;
      // res5 keeps stride 1 and dilates its 3x3 convs (the VG model's RES5HALVE False).
      const stride = b === 0 && (s === 1 || s === 2) ? 2 : 1;
      blocks.push({ prefix, inChannels: b === 0 ? inCh : out, bottleneck, outChannels: out, stride, dilation: s === 3 ? 2 : 1, hasShortcut: b === 0 });
    }
    stages.push(blocks);
    inCh = out;
  }
  return { backbone: stages.slice(0, 3), res5: stages[3] };
}

/** The cell anchors are a parameter of the reference: the checkpoint's values are the ones used. */
export const CELL_ANCHORS = 'proposal_generator.anchor_generator.cell_anchors.0';

/** Every tensor a config needs, by reference name, with its shape (BatchNorm counters excluded). */
export function detectorParamShapes(cfg: DetectorConfig): Map<string, number[]> {
  const d = detectorDims(cfg);
  const shapes = new Map<string, number[]>();
  const conv = (name: string, out: number, inp: number, k: number, bias = false) => {
    shapes.set(`${name}.weight`, [out, inp, k, k]);
    if (bias) shapes.set(`${name}.bias`, [out]);
  };
  const bn = (name: string, ch: number) => {
    for (const f of ['weight', 'bias', 'running_mean', 'running_var']) shapes.set(`${name}.norm.${f}`, [ch]);
  };
  conv('backbone.stem.conv1', cfg.resnets.stem_out_channels, 3, 7);
  bn('backbone.stem.conv1', cfg.resnets.stem_out_channels);
  const { backbone, res5 } = resnetBlocks(cfg);
  for (const b of [...backbone.flat(), ...res5]) {
    conv(`${b.prefix}.conv1`, b.bottleneck, b.inChannels, 1);
    bn(`${b.prefix}.conv1`, b.bottleneck);
    conv(`${b.prefix}.conv2`, b.bottleneck, b.bottleneck, 3);
    bn(`${b.prefix}.conv2`, b.bottleneck);
    conv(`${b.prefix}.conv3`, b.outChannels, b.bottleneck, 1);
    bn(`${b.prefix}.conv3`, b.outChannels);
    if (b.hasShortcut) {
      conv(`${b.prefix}.shortcut`, b.outChannels, b.inChannels, 1);
      bn(`${b.prefix}.shortcut`, b.outChannels);
    }
  }
  const hidden = cfg.proposal_generator.hidden_channels;
  conv('proposal_generator.rpn_head.conv', hidden, d.res4, 3, true);
  conv('proposal_generator.rpn_head.objectness_logits', d.anchors, hidden, 1, true);
  conv('proposal_generator.rpn_head.anchor_deltas', d.anchors * 4, hidden, 1, true);
  shapes.set(CELL_ANCHORS, [d.anchors, 4]);
  const K = cfg.roi_heads.num_classes;
  const lin = (name: string, out: number, inp: number) => {
    shapes.set(`${name}.weight`, [out, inp]);
    shapes.set(`${name}.bias`, [out]);
  };
  lin('roi_heads.box_predictor.cls_score', K + 1, d.res5);
  lin('roi_heads.box_predictor.bbox_pred', K * 4, d.res5);
  shapes.set('roi_heads.box_predictor.cls_embedding.weight', [K + 1, d.clsEmbed]);
  lin('roi_heads.box_predictor.fc_attr', d.attrHidden, d.res5 + d.clsEmbed);
  lin('roi_heads.box_predictor.attr_score', cfg.roi_box_head.num_attrs + 1, d.attrHidden);
  return shapes;
}

/** Throw unless `t` is float32 with only finite values; names the tensor and the first bad index. */
export function checkFinite(name: string, t: HostTensor, where: string): void {
  if (t.dtype !== 'float32') throw new DetectorWeightsError(`${where}: tensor '${name}' has dtype ${t.dtype}, expected float`);
  const d = t.data as Float32Array;
  for (let i = 0; i < d.length; i++) {
    if (!Number.isFinite(d[i])) throw new DetectorWeightsError(`${where}: tensor '${name}' has a non-finite value (${d[i]}) at flat index ${i}`);
  }
}

/**
 * Check a state dict against a config: every tensor present with its shape, float and finite.
 * Returns the names the config does not use (BatchNorm counters aside); the caller decides.
 */
export function checkDetectorTensors(cfg: DetectorConfig, tensors: Map<string, HostTensor>, where: string): { unexpected: string[] } {
  const shapes = detectorParamShapes(cfg);
  const missing = [...shapes.keys()].filter((k) => !tensors.has(k));
  if (missing.length) {
    throw new DetectorWeightsError(`${where}: ${missing.length} detector tensor(s) missing for this config (depth ${cfg.resnets.depth}, ${cfg.roi_heads.num_classes} classes), e.g. ${missing.slice(0, 4).join(', ')}`);
  }
  for (const [name, shape] of shapes) {
    const t = tensors.get(name)!;
    if (t.shape.join() !== shape.join()) throw new DetectorWeightsError(`${where}: tensor '${name}' has shape [${t.shape.join(', ')}], the config needs [${shape.join(', ')}]`);
    checkFinite(name, t, where);
  }
  return { unexpected: [...tensors.keys()].filter((k) => !shapes.has(k) && !k.endsWith('.num_batches_tracked')) };
}

/** As checkDetectorTensors, refusing unused tensors too; returns exactly the config's tensors. */
export function checkDetectorWeights(cfg: DetectorConfig, tensors: Map<string, HostTensor>, where: string): Map<string, HostTensor> {
  const { unexpected } = checkDetectorTensors(cfg, tensors, where);
  if (unexpected.length) {
    throw new DetectorWeightsError(`${where}: ${unexpected.length} tensor(s) the detector config does not use, e.g. ${unexpected.slice(0, 4).join(', ')} (is the config's depth or class count right?)`);
  }
  return new Map([...detectorParamShapes(cfg).keys()].map((k) => [k, tensors.get(k)!]));
}

/** A detector folder: config.json + model.safetensors (the reference's names). */
export function readDetectorFolder(dir: string): { config: DetectorConfig; tensors: Map<string, HostTensor> } {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new DetectorWeightsError(`detector folder '${dir}' does not exist or is not a directory`);
  const cfgFile = path.join(dir, 'config.json');
  const weightsFile = path.join(dir, 'model.safetensors');
  if (!fs.existsSync(cfgFile)) throw new DetectorWeightsError(`${dir}: no config.json (a detector folder holds config.json and model.safetensors; 'uniter convert' writes one)`);
  if (!fs.existsSync(weightsFile)) throw new DetectorWeightsError(`${dir}: no model.safetensors (a detector folder holds config.json and model.safetensors; 'uniter convert' writes one)`);
  const config = readDetectorConfig(cfgFile);
  const tensors = checkDetectorWeights(config, readSafetensors(weightsFile).tensors, weightsFile);
  return { config, tensors };
}

/**
 * The inference weights: each conv followed by a frozen BatchNorm becomes one conv with a bias
 * (w * s, beta - mean * s with s = gamma / sqrt(var + eps)); the graphs then need no BN op,
 * and ONNX Runtime can fuse the ReLU into the conv.
 */
export function foldBatchNorms(tensors: Map<string, HostTensor>): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [name, t] of tensors) {
    if (name.includes('.norm.')) continue;
    const m = /^(.*)\.weight$/.exec(name);
    const bnPrefix = m ? `${m[1]}.norm` : '';
    if (!m || !tensors.has(`${bnPrefix}.weight`)) {
      out.set(name, t);
      continue;
    }
    const g = tensors.get(`${bnPrefix}.weight`)!.data as Float32Array;
    const b = tensors.get(`${bnPrefix}.bias`)!.data as Float32Array;
    const mean = tensors.get(`${bnPrefix}.running_mean`)!.data as Float32Array;
    const v = tensors.get(`${bnPrefix}.running_var`)!.data as Float32Array;
    const w = t.data as Float32Array;
    const per = w.length / g.length;
    const fw = new Float32Array(w.length);
    const fb = new Float32Array(g.length);
    for (let o = 0; o < g.length; o++) {
      const s = g[o] / Math.sqrt(v[o] + BN_EPS);
      fb[o] = b[o] - mean[o] * s;
      for (let i = o * per; i < (o + 1) * per; i++) fw[i] = w[i] * s;
    }
    out.set(name, { dtype: 'float32', shape: t.shape, data: fw });
    out.set(`${m[1]}.bias`, { dtype: 'float32', shape: [g.length], data: fb });
  }
  return out;
}
