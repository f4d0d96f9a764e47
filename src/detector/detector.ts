/**
 * The region detector: an image in, the BUTD Faster R-CNN's selected regions out, in-process on
 * ONNX Runtime. `detect` gives the reference's final selection; `regions` the part UNITER reads
 * (UNITER's box-count rule, float16-rounded as an img_db stores it); `trace` every intermediate
 * stage under the golden fixtures' names, for parity checks.
 */
import { HostTensor, f32, i64 } from '../engine/host.js';
import { Program, compile } from '../engine/runtime.js';
import { computeNbb, roundToHalf } from '../data/imgdb.js';
import type { Tensor } from '../engine/graph.js';
import { DetectorConfig, detectorDims } from './config.js';
import { applyDeltas, gridAnchors, rpnProposals, selectDetections } from './boxes.js';
import { FEATURE_STRIDE, buildBackbone, buildBoxHead } from './network.js';
import { preprocess } from './preprocess.js';
import { ImageInput, toRgbImage } from '../vision/decode.js';
import { BoxCountRule, Detection, Regions, RgbImage, UNITER_BOX_RULE } from './types.js';
import { CELL_ANCHORS, checkDetectorWeights, foldBatchNorms, readDetectorFolder } from './weights.js';

export interface DetectorOptions {
  /** ONNX Runtime intra-op threads (default: all cores). */
  threads?: number;
  /** Proposals per box-head run: bounds the memory of res5 on 14x14 maps (default 50). */
  roiChunk?: number;
}

export interface TraceOptions {
  /** How many proposals' RoIPool and res5 maps to record (they are large). Default 8 and 2. */
  pooledRows?: number;
  res5Rows?: number;
}


type Stages = Map<string, HostTensor>;

/** Where the last `detect` spent its time (seconds) and how much box-head work it had. */
export interface DetectorRunStats {
  seconds: { preprocess: number; backbone: number; proposals: number; boxHead: number; selection: number };
  proposals: number;
  /** Proposals with distinct RoIPool grid boxes: the box head's real workload. */
  distinctRois: number;
}

export class Detector {
  readonly config: DetectorConfig;
  private readonly weights: Map<string, HostTensor>;
  private readonly cellAnchors: Float32Array;
  private readonly threads?: number;
  private readonly roiChunk: number;
  private programs = new Map<string, Program>();
  /** Timings and workload of the most recent run. */
  lastRun: DetectorRunStats | null = null;

  private constructor(config: DetectorConfig, tensors: Map<string, HostTensor>, opts: DetectorOptions) {
    this.config = config;
    this.cellAnchors = Float32Array.from(tensors.get(CELL_ANCHORS)!.data as Float32Array);
    this.weights = foldBatchNorms(tensors);
    this.weights.delete(CELL_ANCHORS);
    this.threads = opts.threads;
    this.roiChunk = opts.roiChunk ?? 50;
    if (!(Number.isInteger(this.roiChunk) && this.roiChunk >= 1)) throw new Error(`Detector: roiChunk must be a positive integer, got ${opts.roiChunk}`);
  }

  /** Load a detector folder (config.json + model.safetensors under the reference's names). */
  static async fromPretrained(dir: string, opts: DetectorOptions = {}): Promise<Detector> {
    const { config, tensors } = readDetectorFolder(dir);
    return new Detector(config, tensors, opts);
  }

  /** A detector from a config and a state dict (checked strictly). */
  static fromWeights(config: DetectorConfig, tensors: Map<string, HostTensor>, opts: DetectorOptions = {}, where = 'detector weights'): Detector {
    return new Detector(config, checkDetectorWeights(config, tensors, where), opts);
  }

  private program(key: string, build: () => { graph: import('../engine/graph.js').Graph; outputs: Record<string, Tensor> }): Program {
    let p = this.programs.get(key);
    if (!p) {
      const { graph, outputs } = build();
      p = compile(graph, outputs, { initializers: this.weights, threads: this.threads, name: key });
      this.programs.set(key, p);
    }
    return p;
  }

  private backbone(withStages: boolean): Program {
    return this.program(withStages ? 'backbone_stages' : 'backbone', () => {
      const { graph, outputs: o } = buildBackbone(this.config);
      const outputs: Record<string, Tensor> = { res4: o.res4, objectness: o.objectness, anchor_deltas: o.anchorDeltas };
      if (withStages) Object.assign(outputs, { stem: o.stem, res2: o.res2, res3: o.res3 });
      return { graph, outputs };
    });
  }

  private boxHead(withMaps: boolean): Program {
    return this.program(withMaps ? 'box_head_maps' : 'box_head', () => {
      const { graph, outputs: o } = buildBoxHead(this.config);
      const outputs: Record<string, Tensor> = {
        features: o.features,
        cls_logits: o.clsLogits,
        cls_probs: o.clsProbs,
        attr_class_input: o.attrClassInput,
        attr_hidden: o.attrHidden,
        attr_logits: o.attrLogits,
        attr_probs_all: o.attrProbsAll,
        box_deltas: o.boxDeltas,
      };
      if (withMaps) Object.assign(outputs, { pooled: o.pooled, res5: o.res5 });
      return { graph, outputs };
    });
  }

  /** The reference's final selection for one decoded image. */
  async detect(image: RgbImage): Promise<Detection> {
    return (await this.run(image, null)).detection;
  }

  /** Every stage under the golden fixtures' names (`preprocess/image`, `rpn/proposals`, ...). */
  async trace(image: RgbImage, opts: TraceOptions = {}): Promise<{ detection: Detection; stages: Stages }> {
    const stages: Stages = new Map();
    const detection = (await this.run(image, { stages, pooledRows: opts.pooledRows ?? 8, res5Rows: opts.res5Rows ?? 2 })).detection;
    return { detection, stages };
  }

  /** What UNITER reads: the first nbb rows by its box-count rule, float16-rounded like a stored img_db. */
  async regions(input: ImageInput, rule: Partial<BoxCountRule> = {}): Promise<Regions> {
    const image = await toRgbImage(input);
    const detection = await this.detect(image);
    return regionsOf(detection, rule);
  }

  private async run(image: RgbImage, trace: { stages: Stages; pooledRows: number; res5Rows: number } | null): Promise<{ detection: Detection }> {
    const cfg = this.config;
    const dims = detectorDims(cfg);
    const K = cfg.roi_heads.num_classes;
    const NA = cfg.roi_box_head.num_attrs;
    const clock = stopwatch();
    const pre = preprocess(image, cfg);
    const tPre = clock();
    const put = (name: string, t: HostTensor) => trace?.stages.set(name, t);
    put('preprocess/image', f32([1, 3, pre.height, pre.width], pre.data));
    put('preprocess/image_size', i64([2], [pre.height, pre.width]));
    put('preprocess/scales_yx', f32([2], [pre.scaleY, pre.scaleX]));
    put('preprocess/raw_size', i64([2], [pre.rawHeight, pre.rawWidth]));

    const bb = await this.backbone(!!trace).run({ image: f32([1, 3, pre.height, pre.width], pre.data) });
    const tBackbone = clock();
    const res4 = bb.get('res4')!;
    const [, , fh, fw] = res4.shape;
    const objectness = bb.get('objectness')!;
    const anchorDeltas = bb.get('anchor_deltas')!;
    for (const s of ['stem', 'res2', 'res3']) if (bb.has(s)) put(`backbone/${s}`, bb.get(s)!);
    put('backbone/res4', res4);
    put('rpn/objectness_logits', objectness);
    put('rpn/anchor_deltas', anchorDeltas);

    const A = dims.anchors;
    const anchors = gridAnchors(this.cellAnchors, fh, fw, FEATURE_STRIDE, cfg.anchor_generator.offset);
    const props = rpnProposals(objectness.data as Float32Array, anchorDeltas.data as Float32Array, anchors, A, fh, fw, pre.height, pre.width, {
      preNmsTopk: cfg.rpn.pre_nms_topk_test,
      postNmsTopk: cfg.rpn.post_nms_topk_test,
      nmsThresh: cfg.rpn.nms_thresh,
      minSize: cfg.proposal_generator.min_size,
      weights: cfg.rpn.bbox_reg_weights,
    });
    const P = props.count;
    put('rpn/anchors', f32([fh * fw * A, 4], anchors));
    put('rpn/proposals_all', f32([fh * fw * A, 4], props.all));
    put('rpn/proposals', f32([P, 4], props.boxes));
    put('rpn/proposal_logits', f32([P], props.logits));
    if (P === 0) throw new Error(`detector: the RPN kept no proposal for this ${pre.rawWidth}x${pre.rawHeight} image`);

    const tProposals = clock();
    const { head, distinct } = await this.runBoxHead(res4, props.boxes, P);
    const tHead = clock();
    const clsProbs = head.get('cls_probs')!.data as Float32Array;
    const boxDeltas = head.get('box_deltas')!.data as Float32Array;
    const attrAll = head.get('attr_probs_all')!.data as Float32Array;
    const attrProbs = new Float32Array(P);
    const attrIds = new Int32Array(P);
    for (let i = 0; i < P; i++) {
      let best = 0;
      for (let a = 1; a < NA; a++) if (attrAll[i * NA + a] > attrAll[i * NA + best]) best = a;
      attrIds[i] = best;
      attrProbs[i] = attrAll[i * NA + best];
    }
    if (trace) {
      // The 14x14 maps are large: one run over the first proposals gives both, cut to their counts.
      const maps = await this.boxHead(true).run({ res4, rois: roisTensor(props.boxes, Math.min(Math.max(trace.pooledRows, trace.res5Rows), P)) });
      put('roi/pooled', firstRows(maps.get('pooled')!, Math.min(trace.pooledRows, P)));
      put('roi/res5', firstRows(maps.get('res5')!, Math.min(trace.res5Rows, P)));
      for (const name of ['features', 'cls_logits', 'cls_probs', 'attr_class_input', 'attr_hidden', 'attr_logits', 'attr_probs_all']) put(`roi/${name}`, head.get(name)!);
      put('roi/attr_probs', f32([P], attrProbs));
      put('roi/attr_ids', i64([P], attrIds));
      put('roi/box_deltas', head.get('box_deltas')!);
      put('roi/boxes', f32([P, 4 * K], applyDeltas(boxDeltas, props.boxes, P, cfg.roi_box_head.bbox_reg_weights)));
    }

    const sel = selectDetections(clsProbs, boxDeltas, props.boxes, P, K, pre.height, pre.width, cfg.roi_box_head.bbox_reg_weights, cfg.roi_heads.nms_thresh_test, cfg.min_detections, cfg.max_detections);
    put('det/max_classes', i64([P], sel.maxClasses));
    put('det/max_scores', f32([P], sel.maxScores));
    put('det/box_deltas', f32([P, 4], sel.boxDeltas));
    put('det/boxes_unclipped', f32([P, 4], sel.boxesUnclipped));
    put('det/max_boxes', f32([P, 4], sel.maxBoxes));
    put('det/nms_thresholds_tried', f32([sel.thresholdsTried.length], sel.thresholdsTried));
    put('det/keep', i64([sel.keep.length], sel.keep));

    const detection = finalRegions(sel, head.get('features')!.data as Float32Array, dims.res5, clsProbs, K, attrIds, attrProbs, pre, cfg);
    this.lastRun = { seconds: { preprocess: tPre, backbone: tBackbone, proposals: tProposals, boxHead: tHead, selection: clock() }, proposals: P, distinctRois: distinct };
    const n = detection.numBoxes;
    put('final/num_detections', i64([], [n]));
    put('final/boxes', f32([n, 4], detection.boxes));
    put('final/obj_ids', i64([n], detection.objectIds));
    put('final/obj_probs', f32([n], detection.conf));
    put('final/attr_ids', i64([n], detection.attrIds));
    put('final/attr_probs', f32([n], detection.attrProbs));
    put('final/features', f32([n, dims.res5], detection.features));
    const normalized = new Float32Array(n * 4);
    for (let i = 0; i < n; i++) normalized.set(detection.normBb.subarray(i * 6, i * 6 + 4), i * 4);
    put('final/normalized_boxes', f32([n, 4], normalized));
    const origH = Math.fround(pre.height * pre.scaleY);
    const origW = Math.fround(pre.width * pre.scaleX);
    put('final/original_size', f32([2], [origH, origW]));
    put('uniter/norm_bb', f32([n, 6], roundToHalf(detection.normBb)));
    put('uniter/features', f32([n, dims.res5], roundToHalf(detection.features)));
    put('uniter/conf', f32([n, 1], roundToHalf(detection.conf)));
    put('uniter/soft_labels', f32([n, K + 1], roundToHalf(detection.softLabels)));
    put('uniter/nbb', i64([], [computeNbb(detection.conf, UNITER_BOX_RULE.confTh, UNITER_BOX_RULE.minBb, UNITER_BOX_RULE.maxBb)]));
    return { detection };
  }

  /**
   * The box head over every proposal. RoIPool sees a proposal only through its coordinates
   * rounded to the 1/16 grid, so proposals that round alike have bit-identical outputs: each
   * distinct grid box runs once (res5 on 14x14 maps is nearly all of the detector's work).
   */
  private async runBoxHead(res4: HostTensor, proposals: Float32Array, P: number): Promise<{ head: Map<string, HostTensor>; distinct: number }> {
    const { unique, rowOf } = distinctGridBoxes(proposals, P, 1 / FEATURE_STRIDE);
    const U = unique.length;
    const uniqueBoxes = new Float32Array(U * 4);
    unique.forEach((p, u) => uniqueBoxes.set(proposals.subarray(p * 4, p * 4 + 4), u * 4));
    const parts = new Map<string, HostTensor[]>();
    for (let start = 0; start < U; start += this.roiChunk) {
      const end = Math.min(U, start + this.roiChunk);
      const out = await this.boxHead(false).run({ res4, rois: roisTensor(uniqueBoxes.subarray(start * 4, end * 4), end - start) });
      for (const [k, v] of out) {
        if (!parts.has(k)) parts.set(k, []);
        parts.get(k)!.push(v);
      }
    }
    const joined = new Map<string, HostTensor>();
    for (const [k, list] of parts) joined.set(k, gatherRows(concatRows(list), rowOf));
    for (const [k, t] of joined) {
      if (t.dtype !== 'float32') continue;
      const d = t.data as Float32Array;
      for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) throw new Error(`detector: the box head's '${k}' holds ${d[i]} (non-finite; are the weights sane?)`);
    }
    return { head: joined, distinct: U };
  }
}

/** Seconds since the previous call (or creation). */
function stopwatch(): () => number {
  let last = performance.now();
  return () => {
    const now = performance.now();
    const s = (now - last) / 1000;
    last = now;
    return s;
  };
}

function roisTensor(boxes: Float32Array, n: number): HostTensor {
  const rois = new Float32Array(n * 5);
  for (let i = 0; i < n; i++) rois.set(boxes.subarray(i * 4, i * 4 + 4), i * 5 + 1);
  return f32([n, 5], rois);
}

/** The proposals with distinct RoIPool grid boxes (first of each), and each proposal's row among them. */
export function distinctGridBoxes(boxes: Float32Array, n: number, scale: number): { unique: number[]; rowOf: Int32Array } {
  const f = Math.fround;
  const s = f(scale);
  const seen = new Map<string, number>();
  const unique: number[] = [];
  const rowOf = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    // Coordinates are clipped to >= 0, where Math.round is C's round (half away from zero).
    const key = [0, 1, 2, 3].map((c) => Math.round(f(boxes[i * 4 + c] * s))).join(',');
    let row = seen.get(key);
    if (row === undefined) {
      row = unique.length;
      seen.set(key, row);
      unique.push(i);
    }
    rowOf[i] = row;
  }
  return { unique, rowOf };
}

function gatherRows(t: HostTensor, rowOf: Int32Array): HostTensor {
  const width = t.data.length / t.shape[0];
  const shape = [rowOf.length, ...t.shape.slice(1)];
  if (t.dtype === 'int64') {
    const src = t.data as BigInt64Array;
    const data = new BigInt64Array(rowOf.length * width);
    rowOf.forEach((r, i) => data.set(src.subarray(r * width, (r + 1) * width), i * width));
    return { dtype: 'int64', shape, data };
  }
  const src = t.data as Float32Array;
  const data = new Float32Array(rowOf.length * width);
  rowOf.forEach((r, i) => data.set(src.subarray(r * width, (r + 1) * width), i * width));
  return { dtype: t.dtype, shape, data };
}

function concatRows(list: HostTensor[]): HostTensor {
  if (list.length === 1) return list[0];
  const rows = list.reduce((s, t) => s + t.shape[0], 0);
  const shape = [rows, ...list[0].shape.slice(1)];
  const total = list.reduce((s, t) => s + t.data.length, 0);
  if (list[0].dtype === 'int64') {
    const data = new BigInt64Array(total);
    list.reduce((off, t) => (data.set(t.data as BigInt64Array, off), off + t.data.length), 0);
    return { dtype: 'int64', shape, data };
  }
  const data = new Float32Array(total);
  list.reduce((off, t) => (data.set(t.data as Float32Array, off), off + t.data.length), 0);
  return { dtype: list[0].dtype, shape, data };
}

function firstRows(t: HostTensor, n: number): HostTensor {
  const width = t.data.length / t.shape[0];
  return { dtype: t.dtype, shape: [n, ...t.shape.slice(1)], data: t.data.slice(0, n * width) as HostTensor['data'] };
}

/** The selected rows in UNITER's conventions: boxes back in original pixels, norm_bb, soft labels background first. */
function finalRegions(
  sel: ReturnType<typeof selectDetections>,
  features: Float32Array,
  featureDim: number,
  clsProbs: Float32Array,
  K: number,
  attrIds: Int32Array,
  attrProbs: Float32Array,
  pre: ReturnType<typeof preprocess>,
  cfg: DetectorConfig,
): Detection {
  const f = Math.fround;
  const n = sel.keep.length;
  const origH = f(pre.height * pre.scaleY);
  const origW = f(pre.width * pre.scaleX);
  const boxes = new Float32Array(n * 4);
  const normBb = new Float32Array(n * 6);
  const feats = new Float32Array(n * featureDim);
  const conf = new Float32Array(n);
  const soft = new Float32Array(n * (K + 1));
  const objectIds = new Int32Array(n);
  const aIds = new Int32Array(n);
  const aProbs = new Float32Array(n);
  sel.keep.forEach((p, r) => {
    const b = sel.maxBoxes.subarray(p * 4, p * 4 + 4);
    const x1 = f(b[0] * pre.scaleX);
    const y1 = f(b[1] * pre.scaleY);
    const x2 = f(b[2] * pre.scaleX);
    const y2 = f(b[3] * pre.scaleY);
    boxes.set([x1, y1, x2, y2], r * 4);
    const nx1 = f(x1 / origW);
    const ny1 = f(y1 / origH);
    const nx2 = f(x2 / origW);
    const ny2 = f(y2 / origH);
    normBb.set([nx1, ny1, nx2, ny2, f(nx2 - nx1), f(ny2 - ny1)], r * 6);
    feats.set(features.subarray(p * featureDim, (p + 1) * featureDim), r * featureDim);
    conf[r] = sel.maxScores[p];
    objectIds[r] = sel.maxClasses[p];
    // The reference's background is the last class; UNITER's soft labels put it first.
    soft[r * (K + 1)] = clsProbs[p * (K + 1) + K];
    soft.set(clsProbs.subarray(p * (K + 1), p * (K + 1) + K), r * (K + 1) + 1);
    aIds[r] = attrIds[p];
    aProbs[r] = attrProbs[p];
  });
  return {
    height: pre.rawHeight,
    width: pre.rawWidth,
    numBoxes: n,
    boxes,
    normBb,
    features: feats,
    featureDim,
    conf,
    softLabels: soft,
    labelDim: K + 1,
    objectIds,
    attrIds: aIds,
    attrProbs: aProbs,
    objectNames: cfg.object_names,
    attributeNames: cfg.attribute_names,
  };
}

/** UNITER's view of a detection: the first nbb rows (conf rule), float16-rounded. */
export function regionsOf(detection: Detection, rule: Partial<BoxCountRule> = {}): Regions {
  const r = { ...UNITER_BOX_RULE, ...Object.fromEntries(Object.entries(rule).filter(([, v]) => v !== undefined)) };
  const nbb = Math.min(detection.numBoxes, computeNbb(detection.conf, r.confTh, r.minBb, r.maxBb));
  return {
    nbb,
    features: roundToHalf(detection.features.slice(0, nbb * detection.featureDim)),
    normBb: roundToHalf(detection.normBb.slice(0, nbb * 6)),
    detection,
  };
}

