/**
 * Parity against a detector golden fixture (laid out like test/fixtures/detector/frcnn-tiny, made
 * by the reference PyTorch port): every image is traced stage by stage and each tensor compared
 * by the rule its manifest names. Proposals are matched by box (their order may differ only
 * between near-equal logits), selections by the proposals they keep; near ties the manifest lists
 * as fragile are exempt on the rows they decide.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HostTensor, maxMagnitude } from '../engine/host.js';
import { readSafetensors } from '../engine/safetensors.js';
import { isJsonObject, readJsonObject } from '../util/json.js';
import { readDetectorConfig } from './config.js';
import { Detector } from './detector.js';
import type { RgbImage } from './types.js';

export interface DetectorGoldenRow {
  name: string;
  maxAbs: number;
  scale: number;
  tolerance: number;
  ok: boolean;
  note?: string;
}

export interface DetectorGoldenReport {
  rows: DetectorGoldenRow[];
  computed: Map<string, HostTensor>;
  failures: number;
}

interface TensorRule {
  shape: number[];
  dtype: string;
  compare: string;
  required?: boolean;
  tolerance: { rtol?: number; atol?: number; scale?: 'max1' | 'elem'; exact?: boolean } | null;
}

/** Whether a fixture directory holds a detector fixture (its manifest or config says so). */
export function isDetectorFixture(dir: string): boolean {
  const manifestFile = path.join(dir, 'manifest.json');
  if (!fs.existsSync(manifestFile)) return false;
  const m = readJsonObject(manifestFile, 'fixture manifest');
  if (m.kind === 'frcnn' || /frcnn/i.test(String(m.fixture ?? '')) || /frcnn/i.test(String(m.generator ?? ''))) return true;
  const cfg = path.join(dir, 'config.json');
  return fs.existsSync(cfg) && isJsonObject(readJsonObject(cfg, 'fixture config').resnets);
}

function fail(msg: string): never {
  throw new Error(`check-golden: ${msg}`);
}

export async function checkDetectorGolden(dir: string, opts: { threads?: number } = {}): Promise<DetectorGoldenReport> {
  const manifest = readJsonObject(path.join(dir, 'manifest.json'), 'fixture manifest');
  const config = readDetectorConfig(path.join(dir, 'config.json'));
  const weightsFile = ['weights.safetensors', 'model.safetensors'].map((f) => path.join(dir, f)).find((f) => fs.existsSync(f));
  if (!weightsFile) fail(`${dir}: no weights.safetensors`);
  const detector = Detector.fromWeights(config, readSafetensors(weightsFile).tensors, { threads: opts.threads }, weightsFile);
  const inputs = readSafetensors(path.join(dir, 'inputs.safetensors')).tensors;
  const expected = readSafetensors(path.join(dir, 'outputs.safetensors')).tensors;
  const rules = manifest.tensors as Record<string, TensorRule>;
  if (!isJsonObject(rules)) fail(`${dir}/manifest.json: no 'tensors' object`);
  const images = manifest.images as Array<{ name: string; rgb_tensor?: string }>;
  if (!Array.isArray(images) || images.length === 0) fail(`${dir}/manifest.json: no 'images' list`);

  const rows: DetectorGoldenRow[] = [];
  const computed = new Map<string, HostTensor>();
  for (const img of images) {
    const rgbName = img.rgb_tensor ?? `${img.name}/rgb`;
    const rgb = inputs.get(rgbName);
    if (!rgb || rgb.shape.length !== 3 || rgb.shape[2] !== 3) fail(`${dir}/inputs.safetensors: '${rgbName}' must be U8 [H, W, 3]`);
    const image: RgbImage = { height: rgb.shape[0], width: rgb.shape[1], data: rgb.data as Uint8Array };
    const prefix = `${img.name}/`;
    const own = Object.entries(rules).filter(([k]) => k.startsWith(prefix));
    const storedRows = (stage: string) => expected.get(`${prefix}${stage}`)?.shape[0];
    const { stages } = await detector.trace(image, { pooledRows: storedRows('roi/pooled') ?? 8, res5Rows: storedRows('roi/res5') ?? 2 });
    for (const [k, v] of stages) computed.set(`${prefix}${k}`, v);
    rows.push(...compareImage(prefix, own, stages, expected, (manifest.tie_eps ?? {}) as TieEps));
  }
  return { rows, computed, failures: rows.filter((r) => !r.ok).length };
}

const num = (t: HostTensor, i: number) => Number(t.data[i]);

interface TieEps {
  argmax_logit?: number;
  roi_round?: number;
}

/**
 * Rows exempt per tensor family (proposal indices): the fixture's diag/fragile_* lists, or, for
 * a fixture made without them, the same near ties found from its expected tensors with its
 * manifest's tie_eps (arg-max top-2 logit gaps, RoIPool coordinates near a rounding boundary).
 */
function fragileRows(prefix: string, expected: Map<string, HostTensor>, eps: TieEps): { roipool: Set<number>; fg: Set<number>; all: Set<number>; attr: Set<number> } {
  const listed = (n: string) => expected.get(`${prefix}diag/${n}`);
  const set = (t: HostTensor) => new Set(Array.from(t.data, Number));
  const logits = (n: string) => expected.get(`${prefix}roi/${n}`);
  const gaps = (n: string, dropLast: boolean) => {
    const t = logits(n);
    if (!t || eps.argmax_logit === undefined) return new Set<number>();
    const [rows, cols] = t.shape;
    const out = new Set<number>();
    for (let r = 0; r < rows; r++) {
      let a = -Infinity;
      let b = -Infinity;
      for (let c = 0; c < cols - (dropLast ? 1 : 0); c++) {
        const v = num(t, r * cols + c);
        if (v > a) [a, b] = [v, a];
        else if (v > b) b = v;
      }
      if (a - b < eps.argmax_logit) out.add(r);
    }
    return out;
  };
  const roiRound = () => {
    const props = expected.get(`${prefix}rpn/proposals`);
    const size = expected.get(`${prefix}preprocess/image_size`);
    const out = new Set<number>();
    if (!props || !size || eps.roi_round === undefined) return out;
    const [h, w] = [num(size, 0), num(size, 1)];
    for (let r = 0; r < props.shape[0]; r++) {
      for (let c = 0; c < 4; c++) {
        const v = num(props, r * 4 + c);
        if (v <= 0 || v >= (c % 2 === 0 ? w : h)) continue; // clipped coordinates are exact
        const g = v / 16;
        if (Math.abs(g - Math.floor(g) - 0.5) < eps.roi_round) out.add(r);
      }
    }
    return out;
  };
  return {
    roipool: listed('fragile_roipool') ? set(listed('fragile_roipool')!) : roiRound(),
    fg: listed('fragile_fg_argmax') ? set(listed('fragile_fg_argmax')!) : gaps('cls_logits', true),
    all: listed('fragile_all_argmax') ? set(listed('fragile_all_argmax')!) : gaps('cls_logits', false),
    attr: listed('fragile_attr_argmax') ? set(listed('fragile_attr_argmax')!) : gaps('attr_logits', true),
  };
}

function exemptFor(stage: string, fr: ReturnType<typeof fragileRows>): Set<number> {
  const s = new Set<number>();
  const add = (x: Set<number>) => x.forEach((i) => s.add(i));
  if (/^(roi|det|final|uniter)\//.test(stage)) add(fr.roipool);
  if (/^det\/(max_classes|box_deltas|boxes_unclipped|max_boxes)$|^final\/(obj_ids|boxes|normalized_boxes)$|^uniter\/norm_bb$/.test(stage)) add(fr.fg);
  if (/^roi\/attr_|^final\/attr_/.test(stage)) add(fr.all);
  if (/^roi\/attr_ids$|^final\/attr_ids$/.test(stage)) add(fr.attr);
  return s;
}

function compareImage(prefix: string, rules: Array<[string, TensorRule]>, got: Map<string, HostTensor>, expected: Map<string, HostTensor>, eps: TieEps): DetectorGoldenRow[] {
  const rows: DetectorGoldenRow[] = [];
  const fr = fragileRows(prefix, expected, eps);
  const stage = (name: string) => name.slice(prefix.length);

  // Proposals: match each expected box to one of ours.
  const expProps = expected.get(`${prefix}rpn/proposals`);
  const gotProps = got.get('rpn/proposals');
  let perm: number[] | null = null;
  if (expProps && gotProps) {
    const tol = 1e-4 * Math.max(1, maxMagnitude(expProps));
    perm = matchRows(expProps, gotProps, 4, tol);
  }
  // Selections: expected keep -> our keep position of the same proposal.
  const expKeep = expected.get(`${prefix}det/keep`);
  const gotKeep = got.get('det/keep');
  let selPerm: number[] | null = null;
  if (expKeep && gotKeep && perm) {
    const pos = new Map<number, number>();
    for (let s = 0; s < gotKeep.data.length; s++) pos.set(num(gotKeep, s), s);
    selPerm = Array.from({ length: expKeep.data.length }, (_, r) => pos.get(perm![num(expKeep, r)]) ?? -1);
  }

  for (const [name, rule] of rules) {
    if (rule.compare === 'none') continue;
    const st = stage(name);
    const exp = expected.get(name);
    const mine = got.get(st);
    if (!exp) {
      if (rule.required) rows.push({ name, maxAbs: NaN, scale: 0, tolerance: 0, ok: false, note: 'missing from outputs.safetensors' });
      continue;
    }
    if (!mine) {
      rows.push({ name, maxAbs: NaN, scale: 0, tolerance: 0, ok: !rule.required, note: 'not produced' });
      continue;
    }
    const tol = rule.tolerance ?? {};
    const exact = !!tol.exact;
    const scale = maxMagnitude(exp);
    const bound = (e: number) => (exact ? 0 : tol.scale === 'elem' ? (tol.atol ?? 0) + (tol.rtol ?? 0) * Math.abs(e) : (tol.atol ?? 0) + (tol.rtol ?? 0) * Math.max(1, scale));
    const tolerance = exact ? 0 : tol.scale === 'elem' ? (tol.rtol ?? 0) : bound(0);
    const width = exp.shape.slice(1).reduce((a, b) => a * b, 1);
    let rowMap: ((i: number) => number) | null;
    let exempt = new Set<number>();
    switch (rule.compare) {
      case 'dense':
      case 'exact':
      case 'exact_float':
        rowMap = (i) => i;
        if (exp.shape.join() !== mine.shape.join()) {
          rows.push({ name, maxAbs: NaN, scale, tolerance, ok: false, note: `shape [${mine.shape}] vs expected [${exp.shape}]` });
          continue;
        }
        break;
      case 'proposals':
      case 'proposal_rows':
      case 'proposal_rows_exact':
        rowMap = perm ? (i) => perm![i] : null;
        exempt = exemptFor(st, fr);
        break;
      case 'keep':
        rowMap = null;
        break;
      case 'selection_rows':
      case 'selection_rows_exact': {
        rowMap = selPerm ? (i) => selPerm![i] : null;
        const selExempt = exemptFor(st, fr);
        if (expKeep) for (let r = 0; r < expKeep.data.length; r++) if (selExempt.has(num(expKeep, r))) exempt.add(r);
        break;
      }
      default:
        rows.push({ name, maxAbs: NaN, scale, tolerance, ok: false, note: `unknown compare rule '${rule.compare}'` });
        continue;
    }
    if (rule.compare === 'keep') {
      const ok = !!selPerm && selPerm.every((s) => s >= 0) && gotKeep!.data.length === expKeep!.data.length;
      const orderOk = ok && keepOrderOk(selPerm!, expected.get(`${prefix}final/obj_probs`), got.get('final/obj_probs'));
      rows.push({ name, maxAbs: ok ? 0 : NaN, scale, tolerance: 0, ok: ok && orderOk, note: !ok ? 'selects other proposals than the reference' : orderOk ? undefined : 'order differs between boxes whose scores differ' });
      continue;
    }
    if (!rowMap) {
      rows.push({ name, maxAbs: NaN, scale, tolerance, ok: false, note: 'rows could not be matched (proposals or selection differ)' });
      continue;
    }
    const expRows = exp.shape.length ? exp.shape[0] : 1;
    const mineRows = mine.shape.length ? mine.shape[0] : 1;
    const mineWidth = mine.shape.slice(1).reduce((a, b) => a * b, 1);
    if (exp.shape.length && mineWidth !== width) {
      rows.push({ name, maxAbs: NaN, scale, tolerance, ok: false, note: `row shape [${mine.shape.slice(1)}] vs expected [${exp.shape.slice(1)}]` });
      continue;
    }
    let maxAbs = 0;
    let ok = true;
    let note: string | undefined;
    for (let r = 0; r < expRows; r++) {
      if (exempt.has(r)) continue;
      const m = rowMap(r);
      if (m < 0 || m >= mineRows) {
        ok = false;
        note = `row ${r} has no counterpart`;
        continue;
      }
      for (let c = 0; c < width; c++) {
        const e = num(exp, r * width + c);
        const v = num(mine, m * width + c);
        const d = Math.abs(v - e);
        if (!(d <= bound(e))) ok = false;
        if (!Number.isNaN(d)) maxAbs = Math.max(maxAbs, d);
        else ok = false;
      }
    }
    if (['proposals', 'proposal_rows', 'proposal_rows_exact'].includes(rule.compare) && exp.shape.length && expRows !== mineRows && !/^roi\/(pooled|res5)$/.test(st)) {
      ok = false;
      note = `${mineRows} rows vs expected ${expRows}`;
    }
    if (rule.compare.startsWith('selection') && mineRows !== expRows) {
      ok = false;
      note = `${mineRows} rows vs expected ${expRows}`;
    }
    rows.push({ name, maxAbs, scale, tolerance, ok, note: note ?? (exempt.size ? `${exempt.size} fragile row(s) exempt` : undefined) });
  }
  return rows;
}

/** For each expected row, the index of a matching row of ours (same index first), -1 when none. */
function matchRows(exp: HostTensor, got: HostTensor, width: number, tol: number): number[] {
  const n = exp.shape[0];
  const m = got.shape[0];
  const used = new Uint8Array(m);
  const same = (i: number, j: number) => {
    for (let c = 0; c < width; c++) if (!(Math.abs(num(exp, i * width + c) - num(got, j * width + c)) <= tol)) return false;
    return true;
  };
  const perm = new Array<number>(n).fill(-1);
  for (let i = 0; i < n; i++) {
    if (i < m && same(i, i)) {
      perm[i] = i;
      used[i] = 1;
    }
  }
  for (let i = 0; i < n; i++) {
    if (perm[i] >= 0) continue;
    for (let j = 0; j < m; j++) {
      if (!used[j] && same(i, j)) {
        perm[i] = j;
        used[j] = 1;
        break;
      }
    }
  }
  return perm;
}

/** The selection's order may differ from the reference only between boxes of (near) equal score. */
function keepOrderOk(selPerm: number[], expProbs?: HostTensor, gotProbs?: HostTensor): boolean {
  if (!expProbs || !gotProbs) return true;
  const tol = 1e-4;
  for (let r = 0; r + 1 < selPerm.length; r++) {
    if (selPerm[r] > selPerm[r + 1] && Math.abs(num(expProbs, r) - num(expProbs, r + 1)) > tol) return false;
  }
  return true;
}
