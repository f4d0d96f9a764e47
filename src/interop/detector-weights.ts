/**
 * Recognising a detector state dict among checkpoints, and inferring its config from the tensor
 * shapes when no config file comes with it (names, shapes and checks: src/detector/weights.ts).
 */
import { HostTensor } from '../engine/host.js';
import { generateCellAnchors } from '../detector/boxes.js';
import { BLOCKS_PER_STAGE, DetectorConfig, VG_CONFIG, parseDetectorConfig } from '../detector/config.js';
import { CELL_ANCHORS, DetectorWeightsError } from '../detector/weights.js';

/** The prefixes of every parameter of the reference detector. */
export const DETECTOR_PREFIXES = ['backbone.', 'proposal_generator.', 'roi_heads.'] as const;

/** True when a state dict's names are the detector's (and not UNITER's). */
export function looksLikeDetector(names: Iterable<string>): boolean {
  let any = false;
  for (const n of names) {
    if (!DETECTOR_PREFIXES.some((p) => n.startsWith(p))) return false;
    any = true;
  }
  return any;
}

export interface InferredConfig {
  config: DetectorConfig;
  /** "key = value (from ...)" lines: what was read off the shapes and what is a VG default. */
  inferred: string[];
  defaults: string[];
}

function shapeOf(tensors: Map<string, HostTensor>, name: string, where: string): number[] {
  const t = tensors.get(name);
  if (!t) throw new DetectorWeightsError(`${where}: cannot infer the config: tensor '${name}' is missing`);
  return t.shape;
}

/**
 * A config for a detector state dict without a config file: VG_CONFIG with every value the
 * tensor shapes determine replaced by what they say.
 */
export function inferDetectorConfig(tensors: Map<string, HostTensor>, where: string): InferredConfig {
  const inferred: string[] = [];
  const count = (prefix: string) => {
    let n = 0;
    while (tensors.has(`${prefix}.${n}.conv1.weight`)) n++;
    return n;
  };
  const counts = [count('backbone.res2'), count('backbone.res3'), count('backbone.res4'), count('roi_heads.res5')];
  const depthEntry = Object.entries(BLOCKS_PER_STAGE).find(([, b]) => b.every((v, i) => v === counts[i]));
  if (!depthEntry) {
    throw new DetectorWeightsError(`${where}: cannot infer the ResNet depth: blocks per stage (res2..res5) are [${counts.join(', ')}], expected one of ${Object.entries(BLOCKS_PER_STAGE).map(([d, b]) => `${d}: [${b.join(', ')}]`).join('; ')}`);
  }
  const depth = Number(depthEntry[0]) as 50 | 101 | 152;
  inferred.push(`resnets.depth = ${depth} (blocks per stage ${counts.join('/')})`);
  const stem = shapeOf(tensors, 'backbone.stem.conv1.weight', where)[0];
  const width = shapeOf(tensors, 'backbone.res2.0.conv1.weight', where)[0];
  const res2 = shapeOf(tensors, 'backbone.res2.0.conv3.weight', where)[0];
  const hidden = shapeOf(tensors, 'proposal_generator.rpn_head.conv.weight', where)[0];
  const k = shapeOf(tensors, 'roi_heads.box_predictor.cls_score.weight', where)[0] - 1;
  const na = shapeOf(tensors, 'roi_heads.box_predictor.attr_score.weight', where)[0] - 1;
  inferred.push(`resnets.stem_out_channels = ${stem} (backbone.stem.conv1.weight)`);
  inferred.push(`resnets.width_per_group = ${width} (backbone.res2.0.conv1.weight)`);
  inferred.push(`resnets.res2_out_channels = ${res2} (backbone.res2.0.conv3.weight)`);
  inferred.push(`proposal_generator.hidden_channels = ${hidden} (rpn_head.conv.weight)`);
  inferred.push(`roi_heads.num_classes = ${k} (cls_score.weight rows - 1)`);
  inferred.push(`roi_box_head.num_attrs = ${na} (attr_score.weight rows - 1)`);

  const anchors = tensors.get(CELL_ANCHORS);
  const nA = anchors ? anchors.shape[0] : shapeOf(tensors, 'proposal_generator.rpn_head.objectness_logits.weight', where)[0];
  let sizes = VG_CONFIG.anchor_generator.sizes[0];
  let ratios = VG_CONFIG.anchor_generator.aspect_ratios[0];
  let anchorNote: string | null = null;
  if (anchors && anchors.shape.length === 2 && anchors.shape[1] === 4) {
    const fit = fitReferenceAnchors(anchors.data as Float32Array);
    if (fit) {
      sizes = fit.sizes;
      ratios = fit.ratios;
      anchorNote = `anchor_generator.sizes = [[${sizes.join(', ')}]], aspect_ratios = [[${ratios.join(', ')}]] (from ${CELL_ANCHORS})`;
    }
  }
  if (anchorNote) inferred.push(anchorNote);
  else if (sizes.length * ratios.length !== nA) {
    throw new DetectorWeightsError(`${where}: ${nA} anchors per location do not fit the VG anchor sizes x ratios (${sizes.length} x ${ratios.length}) and the stored cell anchors are not reference-style; pass --config`);
  }

  const raw = structuredClone(VG_CONFIG) as DetectorConfig;
  raw.resnets = { ...raw.resnets, depth, stem_out_channels: stem, width_per_group: width, res2_out_channels: res2 };
  raw.proposal_generator = { ...raw.proposal_generator, hidden_channels: hidden };
  raw.roi_heads = { ...raw.roi_heads, num_classes: k };
  raw.roi_box_head = { ...raw.roi_box_head, num_attrs: na };
  raw.anchor_generator = { ...raw.anchor_generator, sizes: [sizes], aspect_ratios: [ratios] };
  const config = parseDetectorConfig(raw, `${where} (inferred config)`);
  const defaults = [
    `input.min_size_test/max_size_test = ${config.input.min_size_test}/${config.input.max_size_test}`,
    `model.pixel_mean = [${config.model.pixel_mean.join(', ')}]`,
    `rpn pre/post NMS top-k = ${config.rpn.pre_nms_topk_test}/${config.rpn.post_nms_topk_test}, NMS ${config.rpn.nms_thresh}`,
    `roi_heads.nms_thresh_test = [${config.roi_heads.nms_thresh_test.join(', ')}]`,
    `roi_box_head.bbox_reg_weights = [${config.roi_box_head.bbox_reg_weights.join(', ')}]`,
    `min/max detections = ${config.min_detections}/${config.max_detections}`,
  ];
  if (!anchorNote) defaults.push(`anchor_generator sizes/ratios = [[${sizes.join(', ')}]] x [[${ratios.join(', ')}]] (count only: the stored cell anchors are used as they are)`);
  return { config, inferred, defaults };
}

/** Sizes and ratios whose reference-style anchors reproduce `cell` (within 1e-3), or null. */
export function fitReferenceAnchors(cell: Float32Array): { sizes: number[]; ratios: number[] } | null {
  const n = cell.length / 4;
  const size: number[] = [];
  const ratio: number[] = [];
  for (let i = 0; i < n; i++) {
    const w = cell[4 * i + 2] - cell[4 * i];
    const h = cell[4 * i + 3] - cell[4 * i + 1];
    if (!(w > 0 && h > 0)) return null;
    size.push(Math.round(Math.sqrt(w * h) * 1000) / 1000);
    ratio.push(Math.round((h / w) * 1000) / 1000);
  }
  // Sizes outer, ratios inner: the ratios of the first size repeat for every size.
  let nr = 1;
  while (nr < n && size[nr] === size[0]) nr++;
  if (n % nr !== 0) return null;
  const ratios = ratio.slice(0, nr);
  const sizes: number[] = [];
  for (let i = 0; i < n; i += nr) sizes.push(size[i]);
  const expect = generateCellAnchors(sizes, ratios);
  for (let i = 0; i < cell.length; i++) if (Math.abs(expect[i] - cell[i]) > 1e-3 * Math.max(1, Math.abs(cell[i]))) return null;
  return { sizes, ratios };
}
