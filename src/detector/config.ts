/**
 * Configuration of the bottom-up-attention (BUTD) Faster R-CNN region detector: the nested,
 * lower-case keys of the reference port's `config.yaml` (the LXMERT demo's `frcnn-vg-finetuned`),
 * so the reference's own config loads as it is. `VG_CONFIG` holds the real detector's values
 * (ResNet-101 C4, Visual Genome 1600 objects / 400 attributes, test scale 600 / 1000) with the
 * box counts UNITER's features use (10-100).
 */
import { writeFileAtomic } from '../util/atomic.js';
import { isJsonObject, readJsonObject } from '../util/json.js';

export class DetectorConfigError extends Error {}

export interface DetectorConfig {
  model: { max_pool: boolean; pixel_mean: [number, number, number]; pixel_std: [number, number, number] };
  input: { format: string; min_size_test: number; max_size_test: number };
  resnets: {
    depth: 50 | 101 | 152;
    num_groups: number;
    res2_out_channels: number;
    stem_out_channels: number;
    stride_in_1x1: boolean;
    width_per_group: number;
    res5_dilation: number;
  };
  anchor_generator: { aspect_ratios: number[][]; offset: number; sizes: number[][] };
  proposal_generator: { hidden_channels: number; min_size: number };
  rpn: { bbox_reg_weights: [number, number, number, number]; nms_thresh: number; post_nms_topk_test: number; pre_nms_topk_test: number };
  roi_heads: { nms_thresh_test: number[]; num_classes: number; score_thresh_test: number };
  roi_box_head: {
    attr: boolean;
    bbox_reg_weights: [number, number, number, number];
    cls_agnostic_bbox_reg: boolean;
    num_attrs: number;
    pooler_resolution: number;
    res5halve: boolean;
  };
  max_detections: number;
  min_detections: number;
  size_divisibility: number;
  /** Names of the object classes (num_classes entries, background excluded), when known. */
  object_names?: string[];
  /** Names of the attribute classes (num_attrs entries), when known. */
  attribute_names?: string[];
  /** Other keys of the reference config (training-only values), kept as they were. */
  [key: string]: unknown;
}

/** Bottleneck blocks per stage (res2, res3, res4, res5) for each ResNet depth. */
export const BLOCKS_PER_STAGE: Record<50 | 101 | 152, [number, number, number, number]> = {
  50: [3, 4, 6, 3],
  101: [3, 4, 23, 3],
  152: [3, 8, 36, 3],
};

/** The real BUTD detector (the reference's frcnn-vg-finetuned values, boxes as UNITER extracts them). */
export const VG_CONFIG: DetectorConfig = {
  model: { max_pool: true, pixel_mean: [102.9801, 115.9465, 122.7717], pixel_std: [1, 1, 1] },
  input: { format: 'BGR', min_size_test: 600, max_size_test: 1000 },
  resnets: { depth: 101, num_groups: 1, res2_out_channels: 256, stem_out_channels: 64, stride_in_1x1: true, width_per_group: 64, res5_dilation: 1 },
  anchor_generator: { aspect_ratios: [[0.5, 1.0, 2.0]], offset: 0, sizes: [[64, 128, 256, 512]] },
  proposal_generator: { hidden_channels: 512, min_size: 0 },
  rpn: { bbox_reg_weights: [1, 1, 1, 1], nms_thresh: 0.7, post_nms_topk_test: 300, pre_nms_topk_test: 6000 },
  roi_heads: { nms_thresh_test: [0.3, 0.6], num_classes: 1600, score_thresh_test: 0.2 },
  roi_box_head: { attr: true, bbox_reg_weights: [10, 10, 5, 5], cls_agnostic_bbox_reg: false, num_attrs: 400, pooler_resolution: 14, res5halve: false },
  max_detections: 100,
  min_detections: 10,
  size_divisibility: 0,
};

/** Channel widths that follow from the config. */
export function detectorDims(cfg: DetectorConfig): { res4: number; res5: number; bottleneck5: number; anchors: number; clsEmbed: number; attrHidden: number } {
  const w = cfg.resnets.num_groups * cfg.resnets.width_per_group;
  const res2 = cfg.resnets.res2_out_channels;
  return {
    res4: res2 * 4,
    res5: res2 * 8,
    bottleneck5: w * 8,
    anchors: cfg.anchor_generator.sizes[0].length * cfg.anchor_generator.aspect_ratios[0].length,
    clsEmbed: (res2 * 8) / 8,
    attrHidden: (res2 * 8) / 4,
  };
}

function fail(where: string, key: string, expected: string, got: unknown): never {
  throw new DetectorConfigError(`${where}: '${key}' must be ${expected}, got ${JSON.stringify(got)}`);
}

function section(o: Record<string, unknown>, key: string, where: string): Record<string, unknown> {
  const s = o[key];
  if (!isJsonObject(s)) fail(where, key, 'an object', s);
  return s;
}

function num(o: Record<string, unknown>, key: string, where: string, path: string, check: (v: number) => boolean, expected: string): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) fail(where, `${path}.${key}`, expected, v);
  return v;
}

const posInt = (v: number) => Number.isInteger(v) && v > 0;
const nonNegInt = (v: number) => Number.isInteger(v) && v >= 0;
const unit = (v: number) => v >= 0 && v <= 1;

function numList(v: unknown, n: number | null, where: string, key: string, check: (x: number) => boolean, expected: string): number[] {
  if (!Array.isArray(v) || (n !== null && v.length !== n) || v.length === 0 || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && check(x))) {
    fail(where, key, `a list of ${n ?? 'one or more'} ${expected}`, v);
  }
  return v as number[];
}

function bool(o: Record<string, unknown>, key: string, where: string, path: string): boolean {
  const v = o[key];
  if (typeof v !== 'boolean') fail(where, `${path}.${key}`, 'true or false', v);
  return v;
}

/**
 * Validate a detector config (the reference's nested keys; the upper-case aliases of its Config
 * class are not accepted). `where` names the source in errors. Unknown keys are kept.
 */
export function parseDetectorConfig(raw: unknown, where = 'detector config'): DetectorConfig {
  if (!isJsonObject(raw)) throw new DetectorConfigError(`${where}: expected a JSON object with the reference detector's config sections (model, input, resnets, ...)`);
  const model = section(raw, 'model', where);
  const input = section(raw, 'input', where);
  const resnets = section(raw, 'resnets', where);
  const anchors = section(raw, 'anchor_generator', where);
  const proposal = section(raw, 'proposal_generator', where);
  const rpn = section(raw, 'rpn', where);
  const roiHeads = section(raw, 'roi_heads', where);
  const boxHead = section(raw, 'roi_box_head', where);

  if (model.max_pool !== true) fail(where, 'model.max_pool', 'true (the Caffe-style max pool; the reference ignores false)', model.max_pool);
  const mean = numList(model.pixel_mean, 3, where, 'model.pixel_mean', () => true, 'numbers (B, G, R)');
  const std = numList(model.pixel_std, 3, where, 'model.pixel_std', (x) => x > 0, 'positive numbers');
  if (input.format !== undefined && input.format !== 'BGR' && input.format !== 'RGB') fail(where, 'input.format', '"BGR" or "RGB"', input.format);
  const minSize = num(input, 'min_size_test', where, 'input', posInt, 'a positive integer');
  const maxSize = num(input, 'max_size_test', where, 'input', (v) => posInt(v) && v >= minSize, `an integer >= min_size_test (${minSize})`);

  const depth = num(resnets, 'depth', where, 'resnets', (v) => v === 50 || v === 101 || v === 152, '50, 101 or 152');
  if (resnets.norm !== undefined && resnets.norm !== 'BN' && resnets.norm !== 'FrozenBN') fail(where, 'resnets.norm', '"BN" (frozen at inference)', resnets.norm);
  const groups = num(resnets, 'num_groups', where, 'resnets', (v) => v === 1, '1 (grouped convolutions are not supported)');
  const res2 = num(resnets, 'res2_out_channels', where, 'resnets', posInt, 'a positive integer');
  const stem = num(resnets, 'stem_out_channels', where, 'resnets', posInt, 'a positive integer');
  const strideIn1x1 = bool(resnets, 'stride_in_1x1', where, 'resnets');
  const width = num(resnets, 'width_per_group', where, 'resnets', posInt, 'a positive integer');
  const res5Dilation = resnets.res5_dilation === undefined ? 1 : num(resnets, 'res5_dilation', where, 'resnets', (v) => v === 1, '1 (res5 lives in the box head)');
  if (resnets.out_features !== undefined && JSON.stringify(resnets.out_features) !== '["res4"]') fail(where, 'resnets.out_features', '["res4"] (the C4 detector)', resnets.out_features);

  const ratios = anchors.aspect_ratios;
  const sizes = anchors.sizes;
  if (!Array.isArray(ratios) || ratios.length !== 1) fail(where, 'anchor_generator.aspect_ratios', 'one list of ratios (one feature map)', ratios);
  if (!Array.isArray(sizes) || sizes.length !== 1) fail(where, 'anchor_generator.sizes', 'one list of sizes (one feature map)', sizes);
  numList(ratios[0], null, where, 'anchor_generator.aspect_ratios[0]', (x) => x > 0, 'positive ratios');
  numList(sizes[0], null, where, 'anchor_generator.sizes[0]', (x) => x > 0, 'positive sizes');
  const offset = num(anchors, 'offset', where, 'anchor_generator', (v) => v >= 0 && v < 1, 'a number in [0, 1)');

  const hidden = num(proposal, 'hidden_channels', where, 'proposal_generator', posInt, 'a positive integer');
  const minBoxSize = num(proposal, 'min_size', where, 'proposal_generator', (v) => v >= 0, 'a non-negative number');
  const rpnWeights = numList(rpn.bbox_reg_weights, 4, where, 'rpn.bbox_reg_weights', (x) => x > 0, 'positive numbers');
  const rpnNms = num(rpn, 'nms_thresh', where, 'rpn', unit, 'a number in [0, 1]');
  const preTopk = num(rpn, 'pre_nms_topk_test', where, 'rpn', posInt, 'a positive integer');
  const postTopk = num(rpn, 'post_nms_topk_test', where, 'rpn', posInt, 'a positive integer');
  if (rpn.in_features !== undefined && JSON.stringify(rpn.in_features) !== '["res4"]') fail(where, 'rpn.in_features', '["res4"]', rpn.in_features);

  const nmsTest = roiHeads.nms_thresh_test;
  const nmsList = typeof nmsTest === 'number' ? [nmsTest] : numList(nmsTest, null, where, 'roi_heads.nms_thresh_test', unit, 'numbers in [0, 1]');
  const numClasses = num(roiHeads, 'num_classes', where, 'roi_heads', posInt, 'a positive integer');
  const scoreTh = roiHeads.score_thresh_test === undefined ? 0.2 : num(roiHeads, 'score_thresh_test', where, 'roi_heads', unit, 'a number in [0, 1]');

  const attr = bool(boxHead, 'attr', where, 'roi_box_head');
  if (!attr) fail(where, 'roi_box_head.attr', 'true (the BUTD detector has an attribute head)', boxHead.attr);
  const boxWeights = numList(boxHead.bbox_reg_weights, 4, where, 'roi_box_head.bbox_reg_weights', (x) => x > 0, 'positive numbers');
  const agnostic = bool(boxHead, 'cls_agnostic_bbox_reg', where, 'roi_box_head');
  if (agnostic) fail(where, 'roi_box_head.cls_agnostic_bbox_reg', 'false (class-specific boxes, as in the VG model)', agnostic);
  const numAttrs = num(boxHead, 'num_attrs', where, 'roi_box_head', posInt, 'a positive integer');
  const poolRes = num(boxHead, 'pooler_resolution', where, 'roi_box_head', posInt, 'a positive integer');
  const res5halve = bool(boxHead, 'res5halve', where, 'roi_box_head');
  if (res5halve) fail(where, 'roi_box_head.res5halve', 'false (the VG model: res5 at stride 1, dilation 2)', res5halve);

  const maxDet = num(raw, 'max_detections', where, 'config', posInt, 'a positive integer');
  const minDet = num(raw, 'min_detections', where, 'config', (v) => nonNegInt(v) && v <= maxDet, `an integer in [0, max_detections]`);
  const sizeDiv = raw.size_divisibility === undefined ? 0 : num(raw, 'size_divisibility', where, 'config', (v) => v === 0, '0 (the reference refuses anything else)');

  const names = (key: 'object_names' | 'attribute_names', n: number): string[] | undefined => {
    const v = raw[key];
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || v.length !== n || !v.every((s) => typeof s === 'string')) fail(where, key, `a list of ${n} strings`, Array.isArray(v) ? `${v.length} entries` : v);
    return v as string[];
  };

  return {
    ...raw,
    model: { ...model, max_pool: true, pixel_mean: mean as [number, number, number], pixel_std: std as [number, number, number] },
    input: { ...input, format: (input.format as string | undefined) ?? 'BGR', min_size_test: minSize, max_size_test: maxSize },
    resnets: { ...resnets, depth: depth as 50 | 101 | 152, num_groups: groups, res2_out_channels: res2, stem_out_channels: stem, stride_in_1x1: strideIn1x1, width_per_group: width, res5_dilation: res5Dilation },
    anchor_generator: { ...anchors, aspect_ratios: ratios as number[][], offset, sizes: sizes as number[][] },
    proposal_generator: { ...proposal, hidden_channels: hidden, min_size: minBoxSize },
    rpn: { ...rpn, bbox_reg_weights: rpnWeights as [number, number, number, number], nms_thresh: rpnNms, pre_nms_topk_test: preTopk, post_nms_topk_test: postTopk },
    roi_heads: { ...roiHeads, nms_thresh_test: nmsList, num_classes: numClasses, score_thresh_test: scoreTh },
    roi_box_head: { ...boxHead, attr, bbox_reg_weights: boxWeights as [number, number, number, number], cls_agnostic_bbox_reg: agnostic, num_attrs: numAttrs, pooler_resolution: poolRes, res5halve },
    max_detections: maxDet,
    min_detections: minDet,
    size_divisibility: sizeDiv,
    object_names: names('object_names', numClasses),
    attribute_names: names('attribute_names', numAttrs),
  };
}

export function readDetectorConfig(file: string): DetectorConfig {
  return parseDetectorConfig(readJsonObject(file, 'detector config', (m) => new DetectorConfigError(m)), file);
}

/** What marks a detector folder's config.json (next to the reference's own keys). */
export const DETECTOR_MODEL_TYPE = 'butd-frcnn';

export function writeDetectorConfig(file: string, cfg: DetectorConfig): void {
  const out: Record<string, unknown> = { model_type: DETECTOR_MODEL_TYPE, ...cfg };
  for (const k of ['object_names', 'attribute_names']) if (out[k] === undefined) delete out[k];
  writeFileAtomic(file, JSON.stringify(out, null, 1) + '\n');
}
