/**
 * The original bottom-up-attention release (Caffe: `resnet101_faster_rcnn_final.caffemodel` with
 * `models/vg/ResNet-101/faster_rcnn_end2end_final/test.prototxt`) -> the reference port's state
 * dict (`backbone.*`, `proposal_generator.*`, `roi_heads.*`) and a DetectorConfig.
 *
 * What changes on the way (facts from the BUTD prototxt and py-faster-rcnn code it runs):
 *  - ResNet layer names: conv1 -> stem.conv1; res{S}{B}_branch1 -> res{S}.{i}.shortcut;
 *    _branch2a/b/c -> conv1/2/3; block B is a letter (a = 0, b = 1, ... as in Caffe ResNet-50)
 *    or b<n> (= n, as res3b1..b3 and res4b1..b22 in ResNet-101). res2-4 are the backbone, res5
 *    the box head. Each conv's BatchNorm and Scale are found by following its output blob.
 *  - BatchNorm (mean, variance, moving-average factor f) + Scale (gamma, beta) -> one BatchNorm
 *    with running_mean = mean / f, running_var = var / f computed as Caffe does (float32
 *    product with 1/f; f == 0 gives 0), weight = gamma, bias = beta. The reference's eps is
 *    1e-5 (Caffe's default, and what the BUTD prototxt uses); another eps in the prototxt is
 *    absorbed into running_var (var + eps - 1e-5).
 *  - RPN objectness: Caffe has 2A channels read as a [2, A*H, W] softmax (bg = channels 0..A-1,
 *    fg = A..2A-1); softmax's fg probability equals sigmoid(fg - bg), so the reference's A
 *    logits get W_fg - W_bg and b_fg - b_bg (same proposal order, same probabilities).
 *  - Anchors: py-faster-rcnn's (ratios outer, scales inner, integer boxes around (7.5, 7.5)),
 *    stored in Caffe's channel order with x2 + 1 and y2 + 1, so that the reference's decoding
 *    (w = x2 - x1, centre x1 + w / 2) reproduces Caffe's (w = x2 - x1 + 1) exactly.
 *  - Classes: Caffe's background is class 0, the reference's is last: cls_score rows and
 *    cls_embedding rows move row 0 to the end; bbox_pred drops the background's 4 rows and is
 *    multiplied by the reference's bbox_reg_weights (10, 10, 5, 5), because the Caffe snapshot
 *    already outputs un-normalised deltas and the reference divides by those weights.
 *  - Attributes: Caffe's attribute 0 is "no attribute"; the reference drops the LAST attribute
 *    logit, so attr_score rows move row 0 to the end too.
 * What stays different is documented in docs/detector.md ("Weights").
 */
import { HostTensor, f32 } from '../engine/host.js';
import { BLOCKS_PER_STAGE, DetectorConfig, VG_CONFIG, parseDetectorConfig } from '../detector/config.js';
import { CaffeBlob, CaffeError, CaffeLayer, PrototxtLayer, TextMessage, parseCaffemodel, parsePrototxt, prototxtLayers } from './caffe.js';
import { CELL_ANCHORS, checkDetectorTensors } from '../detector/weights.js';
import type { PhaseProgress } from '../util/progress.js';

/** The reference's BatchNorm eps (torch BatchNorm2d / detectron2 FrozenBN). */
export const REFERENCE_BN_EPS = 1e-5;
/** Caffe's BatchNorm eps when batch_norm_param has none. */
export const CAFFE_BN_EPS = 1e-5;

export interface CaffeConversion {
  config: DetectorConfig;
  tensors: Map<string, HostTensor>;
  /** What the conversion noticed or adjusted (eps, double data, unused layers...). */
  notes: string[];
}

export type ResnetNaming = 'letters' | 'numbered';

/**
 * Caffe's name of a ResNet block: 'a' for block 0; then letters (res4b, res4c, ... as in
 * ResNet-50) or b1, b2, ... (res4b1..res4b22 as in ResNet-101/152, whose res2 and res5 still use
 * letters).
 */
export function caffeBlockName(stage: number, block: number, naming: ResnetNaming): string {
  if (block === 0) return `res${stage}a`;
  if (naming === 'numbered') return `res${stage}b${block}`;
  if (block > 25) throw new CaffeError(`res${stage}: block ${block} has no letter name`);
  return `res${stage}${String.fromCharCode(97 + block)}`;
}

/** The naming Caffe's ResNet releases use for a stage of a given depth. */
export function caffeStageNaming(depth: 50 | 101 | 152, stage: number): ResnetNaming {
  return depth !== 50 && (stage === 3 || stage === 4) ? 'numbered' : 'letters';
}

const BRANCH_TO_REF: Record<string, string> = { '1': 'shortcut', '2a': 'conv1', '2b': 'conv2', '2c': 'conv3' };

/** The reference prefix of a Caffe ResNet conv layer name (conv1, resNx_branchY), or null. */
export function resnetConvTarget(name: string): { stage: number; block: number; ref: string } | null {
  if (name === 'conv1') return { stage: 1, block: 0, ref: 'backbone.stem.conv1' };
  const m = /^res([2-5])([a-z])(\d*)_branch(1|2a|2b|2c)$/.exec(name);
  if (!m) return null;
  const stage = Number(m[1]);
  let block: number;
  if (m[3] !== '') {
    if (m[2] !== 'b' || Number(m[3]) < 1 || m[3].startsWith('0')) return null;
    block = Number(m[3]);
  } else block = m[2].charCodeAt(0) - 97;
  const owner = stage === 5 ? 'roi_heads.res5' : `backbone.res${stage}`;
  return { stage, block, ref: `${owner}.${block}.${BRANCH_TO_REF[m[4]]}` };
}

/** Drop size-1 dims: Caffe files may store a vector as [1, 1, 1, C] or a matrix as [1, 1, N, K]. */
const squeeze = (s: number[]) => s.filter((d) => d !== 1);

class Converter {
  readonly notes: string[] = [];
  private readonly blobs = new Map<string, CaffeLayer>();
  private readonly used = new Set<string>();
  private readonly layers: PrototxtLayer[];
  private readonly byName = new Map<string, PrototxtLayer>();
  readonly tensors = new Map<string, HostTensor>();

  constructor(
    caffemodel: Uint8Array,
    prototxt: string,
    readonly where: { caffemodel: string; prototxt: string },
    onProgress?: PhaseProgress,
  ) {
    const model = parseCaffemodel(caffemodel, where.caffemodel, onProgress);
    for (const l of model.layers) {
      // A training net repeats no layer names, but a caffemodel may: the last copy wins in Caffe.
      this.blobs.set(l.name, l);
    }
    this.layers = prototxtLayers(parsePrototxt(prototxt, where.prototxt));
    for (const l of this.layers) this.byName.set(l.name, l);
  }

  layer(name: string, type: string): PrototxtLayer {
    const l = this.byName.get(name);
    if (!l) throw new CaffeError(`${this.where.prototxt}: no layer named '${name}' (the BUTD network needs it)`);
    if (l.type !== type) throw new CaffeError(`${this.where.prototxt}:${l.line}: layer '${name}' is a ${l.type}, expected ${type}`);
    return l;
  }

  /** The blobs of a prototxt layer from the caffemodel, checked for count. */
  weights(l: PrototxtLayer, counts: number[]): CaffeBlob[] {
    const w = this.blobs.get(l.name);
    if (!w || w.blobs.length === 0) throw new CaffeError(`${this.where.caffemodel}: no weights for layer '${l.name}' (${l.type}, ${this.where.prototxt}:${l.line})`);
    if (w.type && w.type !== l.type) throw new CaffeError(`${this.where.caffemodel}: layer '${l.name}' is a ${w.type} there but a ${l.type} in ${this.where.prototxt}`);
    if (!counts.includes(w.blobs.length)) throw new CaffeError(`${this.where.caffemodel}: layer '${l.name}' has ${w.blobs.length} blobs, expected ${counts.join(' or ')}`);
    if (w.blobs.some((b) => b.fromDouble)) this.notes.push(`layer '${l.name}' stored double_data; rounded to float32`);
    this.used.add(l.name);
    return w.blobs;
  }

  /** Check a blob's shape against what the prototxt and the other blobs imply. */
  blob(l: PrototxtLayer, b: CaffeBlob, k: number, shape: number[]): Float32Array {
    const a = squeeze(b.shape);
    const e = squeeze(shape);
    if (a.length !== e.length || a.some((d, i) => d !== e[i])) {
      throw new CaffeError(`${this.where.caffemodel}: layer '${l.name}' blob ${k} has shape [${b.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    return b.data;
  }

  /** The first layer after `after` that reads `blob` (in-place layers keep the blob name). */
  consumer(after: PrototxtLayer, blob: string, type: string): PrototxtLayer {
    const i = this.layers.indexOf(after);
    const next = this.layers.slice(i + 1).find((l) => l.bottoms.includes(blob));
    if (!next || next.type !== type) {
      throw new CaffeError(`${this.where.prototxt}:${after.line}: layer '${after.name}' must be followed by a ${type} on '${blob}', found ${next ? `${next.type} '${next.name}'` : 'nothing'}`);
    }
    return next;
  }

  convParam(l: PrototxtLayer): TextMessage {
    const p = l.msg.message('convolution_param');
    if (!p) throw new CaffeError(`${this.where.prototxt}:${l.line}: layer '${l.name}' has no convolution_param`);
    return p;
  }

  /** A Convolution (+ BatchNorm + Scale) of the ResNet trunk, written under `ref`. */
  convBn(l: PrototxtLayer, ref: string): { cout: number; cin: number; k: number; stride: number; dilation: number } {
    const p = this.convParam(l);
    const biasTerm = p.bool('bias_term') ?? true;
    const blobs = this.weights(l, biasTerm ? [2] : [1]);
    const w = blobs[0];
    if (w.shape.length !== 4) throw new CaffeError(`${this.where.caffemodel}: layer '${l.name}' weights have shape [${w.shape.join(', ')}], expected 4 dims`);
    const [cout, cin, kh, kw] = w.shape;
    if ((p.num('group') ?? 1) !== 1) throw new CaffeError(`${this.where.prototxt}:${l.line}: layer '${l.name}': grouped convolutions are not supported`);
    const num = p.num('num_output');
    if (num !== undefined && num !== cout) throw new CaffeError(`${this.where.caffemodel}: layer '${l.name}' has ${cout} filters, the prototxt says num_output ${num}`);
    if (kh !== kw) throw new CaffeError(`${this.where.caffemodel}: layer '${l.name}' has a ${kh}x${kw} kernel, expected square`);
    this.tensors.set(`${ref}.weight`, f32([cout, cin, kh, kw], w.data.slice()));
    const bias = biasTerm ? this.blob(l, blobs[1], 1, [cout]) : null;

    const top = l.tops[0];
    const bn = this.consumer(l, top, 'BatchNorm');
    const sc = this.consumer(bn, bn.tops[0] ?? top, 'Scale');
    const [mean, vari, factor] = this.weights(bn, [3]);
    const m = this.blob(bn, mean, 0, [cout]);
    const v = this.blob(bn, vari, 1, [cout]);
    const f = this.blob(bn, factor, 2, [1]);
    const bnp = bn.msg.message('batch_norm_param');
    if (bnp?.bool('use_global_stats') === false) this.notes.push(`${bn.name}: use_global_stats false in the prototxt; the stored statistics are used (inference)`);
    const eps = bnp?.num('eps') ?? CAFFE_BN_EPS;
    // Caffe: scale = (f == 0 ? 0 : 1 / f) in float, then mean = blob0 * scale per element.
    const scale = f[0] === 0 ? 0 : Math.fround(1 / f[0]);
    const rm = new Float32Array(cout);
    const rv = new Float32Array(cout);
    for (let c = 0; c < cout; c++) {
      rm[c] = Math.fround(m[c] * scale);
      rv[c] = Math.fround(v[c] * scale);
      // A conv bias before BatchNorm only shifts the mean.
      if (bias) rm[c] = Math.fround(rm[c] - bias[c]);
      if (eps !== REFERENCE_BN_EPS) rv[c] = Math.fround(rv[c] + (eps - REFERENCE_BN_EPS));
    }
    if (eps !== REFERENCE_BN_EPS) this.notes.push(`${bn.name}: eps ${eps} differs from the reference's ${REFERENCE_BN_EPS}; running_var holds var + ${eps} - ${REFERENCE_BN_EPS}`);
    if (bias) this.notes.push(`${l.name}: conv bias folded into running_mean`);

    const scp = sc.msg.message('scale_param');
    const scaleBias = scp?.bool('bias_term') ?? false;
    const sb = this.weights(sc, scaleBias ? [2] : [1]);
    const gamma = this.blob(sc, sb[0], 0, [cout]);
    const beta = scaleBias ? this.blob(sc, sb[1], 1, [cout]) : new Float32Array(cout);
    this.tensors.set(`${ref}.norm.weight`, f32([cout], gamma.slice()));
    this.tensors.set(`${ref}.norm.bias`, f32([cout], beta.slice()));
    this.tensors.set(`${ref}.norm.running_mean`, f32([cout], rm));
    this.tensors.set(`${ref}.norm.running_var`, f32([cout], rv));
    const ints = (key: string, dflt: number) => {
      const list = p.nums(key);
      if (list.length > 1 && list.some((x) => x !== list[0])) throw new CaffeError(`${this.where.prototxt}:${l.line}: layer '${l.name}': non-square ${key} is not supported`);
      return list[0] ?? dflt;
    };
    return { cout, cin, k: kh, stride: ints('stride', 1), dilation: ints('dilation', 1) };
  }

  /** A plain Convolution with bias (RPN). */
  conv(name: string): { w: Float32Array; b: Float32Array; shape: number[] } {
    const l = this.layer(name, 'Convolution');
    const p = this.convParam(l);
    if (p.bool('bias_term') === false) throw new CaffeError(`${this.where.prototxt}:${l.line}: layer '${name}' must have a bias`);
    const [w, b] = this.weights(l, [2]);
    if (w.shape.length !== 4) throw new CaffeError(`${this.where.caffemodel}: layer '${name}' weights have shape [${w.shape.join(', ')}], expected 4 dims`);
    return { w: w.data, b: this.blob(l, b, 1, [w.shape[0]]), shape: w.shape };
  }

  /** An InnerProduct as [out, in] (transposed when the prototxt says transpose: true). */
  fc(name: string, inputs: number): { w: Float32Array; b: Float32Array; out: number } {
    const l = this.layer(name, 'InnerProduct');
    const p = l.msg.message('inner_product_param');
    const out = p?.num('num_output');
    if (out === undefined) throw new CaffeError(`${this.where.prototxt}:${l.line}: layer '${name}' has no inner_product_param.num_output`);
    if (p?.bool('bias_term') === false) throw new CaffeError(`${this.where.prototxt}:${l.line}: layer '${name}' must have a bias`);
    const [wb, bb] = this.weights(l, [2]);
    const transpose = p?.bool('transpose') ?? false;
    const w = this.blob(l, wb, 0, transpose ? [inputs, out] : [out, inputs]);
    const b = this.blob(l, bb, 1, [out]);
    return { w: transpose ? transposed(w, inputs, out) : w, b, out };
  }

  unusedWithWeights(): string[] {
    return [...this.blobs.values()].filter((l) => l.blobs.length > 0 && !this.used.has(l.name)).map((l) => l.name);
  }

  get allLayers(): PrototxtLayer[] {
    return this.layers;
  }
}

function transposed(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c];
  return out;
}

/** Move row 0 (Caffe's background / no-attribute) of a [rows, cols] matrix to the end. */
export function rowZeroLast(w: Float32Array, rows: number): Float32Array {
  const cols = w.length / rows;
  const out = new Float32Array(w.length);
  out.set(w.subarray(cols), 0);
  out.set(w.subarray(0, cols), (rows - 1) * cols);
  return out;
}

/** py-faster-rcnn's generate_anchors (base 16, ratios outer, scales inner; inclusive boxes). */
export function pyFasterRcnnAnchors(scales: number[], ratios: number[], base = 16): number[][] {
  const ctr = (base - 1) / 2;
  const out: number[][] = [];
  for (const r of ratios) {
    // _ratio_enum on the base box: numpy's round is half-to-even.
    const ws = roundHalfEven(Math.sqrt((base * base) / r));
    const hs = roundHalfEven(ws * r);
    for (const s of scales) {
      const w = ws * s;
      const h = hs * s;
      out.push([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)]);
    }
  }
  return out;
}

function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** The proposal layer's settings from its python_param.param_str (a small YAML dict). */
function proposalParams(l: PrototxtLayer, file: string): { featStride: number; scales: number[]; ratios: number[] } {
  const s = l.msg.message('python_param')?.str('param_str') ?? '';
  const list = (key: string): number[] | undefined => {
    const m = new RegExp(`['"]?${key}['"]?\\s*:\\s*(?:!!python/tuple\\s*)?\\[([^\\]]*)\\]`).exec(s);
    if (!m) return undefined;
    const v = m[1].split(',').map((x) => x.trim()).filter((x) => x !== '').map(Number);
    if (!v.length || v.some((x) => !Number.isFinite(x) || x <= 0)) throw new CaffeError(`${file}:${l.line}: proposal param_str '${key}' must be a list of positive numbers, got [${m[1]}]`);
    return v;
  };
  const fs = /['"]?feat_stride['"]?\s*:\s*([0-9.]+)/.exec(s);
  // py-faster-rcnn's defaults when param_str leaves them out.
  return { featStride: fs ? Number(fs[1]) : 16, scales: list('scales') ?? [8, 16, 32], ratios: list('ratios') ?? [0.5, 1, 2] };
}

/**
 * Convert the BUTD Caffe release (weights + test prototxt) into the reference's state dict and
 * a config: VG_CONFIG with every value the network's shapes and parameters determine.
 */
export function caffeToDetector(caffemodelBytes: Uint8Array, prototxtText: string, where: { caffemodel: string; prototxt: string }, onProgress?: PhaseProgress): CaffeConversion {
  const cv = new Converter(caffemodelBytes, prototxtText, where, onProgress);
  const P = where.prototxt;

  // --- ResNet trunk (res2-4) and box head (res5), keyed by the reference's block index.
  const seen = new Map<string, { stage: number; block: number; branch: string; info: ReturnType<Converter['convBn']>; name: string }>();
  const blocks = new Map<number, Set<number>>();
  for (const l of cv.allLayers) {
    if (l.type !== 'Convolution') continue;
    const t = resnetConvTarget(l.name);
    if (!t) continue;
    if (seen.has(t.ref)) throw new CaffeError(`${P}:${l.line}: layers '${seen.get(t.ref)!.name}' and '${l.name}' both map to ${t.ref}`);
    const info = cv.convBn(l, t.ref);
    seen.set(t.ref, { ...t, branch: t.ref.slice(t.ref.lastIndexOf('.') + 1), info, name: l.name });
    if (t.stage >= 2) {
      const set = blocks.get(t.stage) ?? new Set<number>();
      set.add(t.block);
      blocks.set(t.stage, set);
    }
  }
  const stem = seen.get('backbone.stem.conv1');
  if (!stem) throw new CaffeError(`${P}: no 'conv1' Convolution layer (the ResNet stem)`);
  const counts = [2, 3, 4, 5].map((s) => {
    const set = blocks.get(s) ?? new Set<number>();
    for (let b = 0; b < set.size; b++) if (!set.has(b)) throw new CaffeError(`${P}: res${s} has ${set.size} blocks but block ${b} is missing (names: a, b/b1, c/b2, ...)`);
    return set.size;
  });
  const depthEntry = Object.entries(BLOCKS_PER_STAGE).find(([, b]) => b.every((v, i) => v === counts[i]));
  if (!depthEntry) throw new CaffeError(`${P}: blocks per stage res2..res5 are [${counts.join(', ')}]; expected a ResNet-50/101/152 layout (${Object.values(BLOCKS_PER_STAGE).map((b) => b.join('/')).join(', ')})`);
  const depth = Number(depthEntry[0]) as 50 | 101 | 152;
  for (let s = 2; s <= 5; s++) {
    for (let b = 0; b < counts[s - 2]; b++) {
      const owner = s === 5 ? 'roi_heads.res5' : `backbone.res${s}`;
      for (const br of b === 0 ? ['conv1', 'conv2', 'conv3', 'shortcut'] : ['conv1', 'conv2', 'conv3']) {
        if (!seen.has(`${owner}.${b}.${br}`)) throw new CaffeError(`${P}: ${caffeBlockName(s, b, caffeStageNaming(depth, s))} has no ${br === 'shortcut' ? '_branch1' : `_branch2${'abc'[Number(br.slice(4)) - 1]}`} convolution`);
      }
    }
  }
  const get = (ref: string) => seen.get(ref)!.info;
  const width = get('backbone.res2.0.conv1').cout;
  const res2 = get('backbone.res2.0.conv3').cout;
  const strideIn1x1 = get('backbone.res3.0.conv1').stride === 2;
  if (!strideIn1x1 && get('backbone.res3.0.conv2').stride !== 2) throw new CaffeError(`${P}: res3a has no stride-2 convolution in branch2a or branch2b`);
  const r5 = get('roi_heads.res5.0.conv1').stride * get('roi_heads.res5.0.conv2').stride;
  if (r5 !== 1) throw new CaffeError(`${P}: res5a has stride ${r5}; the BUTD box head (RES5HALVE False) needs stride 1`);
  for (let b = 0; b < counts[3]; b++) {
    const d = get(`roi_heads.res5.${b}.conv2`).dilation;
    if (d !== 2) throw new CaffeError(`${P}: ${caffeBlockName(5, b, 'letters')}_branch2b has dilation ${d}; the BUTD box head uses dilation 2`);
  }
  const c4 = res2 * 4;
  const c5 = res2 * 8;

  // --- RPN
  const rpnConv = cv.conv('rpn_conv/3x3');
  const hidden = rpnConv.shape[0];
  if (rpnConv.shape[1] !== c4 || rpnConv.shape[2] !== 3) throw new CaffeError(`${where.caffemodel}: rpn_conv/3x3 has shape [${rpnConv.shape.join(', ')}], expected [${hidden}, ${c4}, 3, 3]`);
  const cls = cv.conv('rpn_cls_score');
  const box = cv.conv('rpn_bbox_pred');
  const A = box.shape[0] / 4;
  if (!Number.isInteger(A) || cls.shape[0] !== 2 * A || cls.shape[1] !== hidden || box.shape[1] !== hidden) {
    throw new CaffeError(`${where.caffemodel}: rpn_cls_score [${cls.shape.join(', ')}] and rpn_bbox_pred [${box.shape.join(', ')}] do not fit 2A and 4A outputs over ${hidden} channels`);
  }
  const proposal = cv.allLayers.find((l) => l.type === 'Python' && l.msg.message('python_param')?.str('layer') === 'ProposalLayer');
  if (!proposal) throw new CaffeError(`${P}: no Python ProposalLayer (needed for the anchor scales)`);
  const pp = proposalParams(proposal, P);
  if (pp.featStride !== 16) throw new CaffeError(`${P}:${proposal.line}: feat_stride ${pp.featStride}; the reference detector runs at stride 16`);
  const caffeAnchors = pyFasterRcnnAnchors(pp.scales, pp.ratios);
  if (caffeAnchors.length !== A) throw new CaffeError(`${P}:${proposal.line}: ${pp.ratios.length} ratios x ${pp.scales.length} scales = ${caffeAnchors.length} anchors, but rpn_bbox_pred has ${A}`);
  const cell = new Float32Array(A * 4);
  caffeAnchors.forEach(([x1, y1, x2, y2], a) => cell.set([x1, y1, x2 + 1, y2 + 1], a * 4));
  cv.tensors.set(CELL_ANCHORS, f32([A, 4], cell));
  cv.tensors.set('proposal_generator.rpn_head.conv.weight', f32(rpnConv.shape.slice(), rpnConv.w.slice()));
  cv.tensors.set('proposal_generator.rpn_head.conv.bias', f32([hidden], rpnConv.b.slice()));
  const logitW = new Float32Array(A * hidden);
  const logitB = new Float32Array(A);
  for (let a = 0; a < A; a++) {
    for (let c = 0; c < hidden; c++) logitW[a * hidden + c] = Math.fround(cls.w[(A + a) * hidden + c] - cls.w[a * hidden + c]);
    logitB[a] = Math.fround(cls.b[A + a] - cls.b[a]);
  }
  cv.tensors.set('proposal_generator.rpn_head.objectness_logits.weight', f32([A, hidden, 1, 1], logitW));
  cv.tensors.set('proposal_generator.rpn_head.objectness_logits.bias', f32([A], logitB));
  cv.tensors.set('proposal_generator.rpn_head.anchor_deltas.weight', f32([4 * A, hidden, 1, 1], box.w.slice()));
  cv.tensors.set('proposal_generator.rpn_head.anchor_deltas.bias', f32([4 * A], box.b.slice()));

  // --- RoI pooling
  const pool = cv.allLayers.find((l) => l.type === 'ROIPooling');
  if (!pool) throw new CaffeError(`${P}: no ROIPooling layer`);
  const rp = pool.msg.message('roi_pooling_param');
  const res = rp?.num('pooled_w');
  if (res === undefined || rp?.num('pooled_h') !== res) throw new CaffeError(`${P}:${pool.line}: ROIPooling needs pooled_w == pooled_h`);
  if (rp?.num('spatial_scale') !== 0.0625) throw new CaffeError(`${P}:${pool.line}: ROIPooling spatial_scale must be 0.0625 (stride 16), got ${rp?.num('spatial_scale')}`);

  // --- Box predictor and attribute head
  const clsScore = cv.fc('cls_score', c5);
  const K = clsScore.out - 1;
  const bbox = cv.fc('bbox_pred', c5);
  if (bbox.out !== 4 * (K + 1)) throw new CaffeError(`${P}: bbox_pred has ${bbox.out} outputs, expected 4 x ${K + 1} (class-specific, background included)`);
  const bp = 'roi_heads.box_predictor';
  cv.tensors.set(`${bp}.cls_score.weight`, f32([K + 1, c5], rowZeroLast(clsScore.w, K + 1)));
  cv.tensors.set(`${bp}.cls_score.bias`, f32([K + 1], rowZeroLast(clsScore.b, K + 1)));
  const regW = VG_CONFIG.roi_box_head.bbox_reg_weights;
  const bw = new Float32Array(4 * K * c5);
  const bb = new Float32Array(4 * K);
  for (let r = 0; r < 4 * K; r++) {
    const s = regW[r % 4];
    for (let c = 0; c < c5; c++) bw[r * c5 + c] = Math.fround(bbox.w[(r + 4) * c5 + c] * s);
    bb[r] = Math.fround(bbox.b[r + 4] * s);
  }
  cv.tensors.set(`${bp}.bbox_pred.weight`, f32([4 * K, c5], bw));
  cv.tensors.set(`${bp}.bbox_pred.bias`, f32([4 * K], bb));

  const embL = cv.layer('cls_embedding', 'Embed');
  const ep = embL.msg.message('embed_param');
  const embBias = ep?.bool('bias_term') ?? true;
  const E = c5 / 8;
  if (ep?.num('input_dim') !== undefined && ep.num('input_dim') !== K + 1) throw new CaffeError(`${P}:${embL.line}: cls_embedding input_dim ${ep.num('input_dim')}, expected ${K + 1} (classes with background)`);
  const eb = cv.weights(embL, embBias ? [2] : [1]);
  const emb = cv.blob(embL, eb[0], 0, [K + 1, E]).slice();
  if (embBias) {
    // An Embed bias is added to whichever row is looked up: fold it into every row.
    const b = cv.blob(embL, eb[1], 1, [E]);
    for (let i = 0; i < emb.length; i++) emb[i] = Math.fround(emb[i] + b[i % E]);
    cv.notes.push('cls_embedding: Embed bias folded into the embedding rows');
  }
  cv.tensors.set(`${bp}.cls_embedding.weight`, f32([K + 1, E], rowZeroLast(emb, K + 1)));
  const fcAttr = cv.fc('fc_attr', c5 + E);
  cv.tensors.set(`${bp}.fc_attr.weight`, f32([fcAttr.out, c5 + E], fcAttr.w.slice()));
  cv.tensors.set(`${bp}.fc_attr.bias`, f32([fcAttr.out], fcAttr.b.slice()));
  const attr = cv.fc('attr_score', fcAttr.out);
  cv.tensors.set(`${bp}.attr_score.weight`, f32([attr.out, fcAttr.out], rowZeroLast(attr.w, attr.out)));
  cv.tensors.set(`${bp}.attr_score.bias`, f32([attr.out], rowZeroLast(attr.b, attr.out)));

  // --- Config: VG values with what this network says.
  const raw = structuredClone(VG_CONFIG) as DetectorConfig;
  raw.resnets = { ...raw.resnets, depth, stem_out_channels: stem.info.cout, width_per_group: width, res2_out_channels: res2, stride_in_1x1: strideIn1x1 };
  raw.proposal_generator = { ...raw.proposal_generator, hidden_channels: hidden };
  // Counts only: the network uses the stored cell anchors (Caffe's order, ratios outer).
  raw.anchor_generator = { ...raw.anchor_generator, sizes: [pp.scales.map((s) => s * 16)], aspect_ratios: [pp.ratios.slice()] };
  raw.roi_heads = { ...raw.roi_heads, num_classes: K };
  raw.roi_box_head = { ...raw.roi_box_head, num_attrs: attr.out - 1, pooler_resolution: res };
  const config = parseDetectorConfig(raw, `${where.caffemodel} (derived config)`);
  const unused = cv.unusedWithWeights();
  if (unused.length) cv.notes.push(`layers with weights that the test network does not use (ignored): ${unused.slice(0, 8).join(', ')}${unused.length > 8 ? ', ...' : ''}`);
  const extra = checkDetectorTensors(config, cv.tensors, where.caffemodel).unexpected;
  if (extra.length) throw new CaffeError(`${where.caffemodel}: internal: produced names the reference lacks: ${extra.join(', ')}`);
  return { config, tensors: cv.tensors, notes: cv.notes };
}

