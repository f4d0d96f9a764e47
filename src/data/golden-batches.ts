/**
 * Rebuild the golden fixture batches (`<fixtureDir>/**\/batch*.safetensors`, made by the official
 * collate functions) from `examples.json` + `inputs.safetensors` with this package's datasets and
 * collate functions, replaying the random choices the official run recorded (MLM decisions,
 * masked regions, ITM labels and images, retrieval pairs) and the raw downstream inputs.
 *
 * Nothing here depends on a particular set's sizes: dims come from the tensors, the VQA answer
 * count from the set's own files. Also exports two small in-memory sources used to feed records
 * and images to the datasets.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readSafetensors } from '../engine/safetensors.js';
import { asFloat32 } from '../engine/host.js';
import { type Batch, type ImageRecord, type ImageSource, type TextRecord, type TextSource, positionFeatures } from './types.js';
import { ItmDataset, ItmRankDataset, MlmDataset, MrcDataset, MrfrDataset, Nlvr2PairedDataset, Nlvr2TripletDataset, ReDataset, VeDataset, VqaDataset } from './datasets.js';
import { type MlmDecision, type MlmKind, type SpecialIds, imgMaskFromRegions } from './masking.js';

/** Text records held in memory (ids in insertion order; len = wordpieces). */
export class MemoryTextSource implements TextSource {
  private readonly byId: Map<string, TextRecord>;

  constructor(records: readonly TextRecord[]) {
    this.byId = new Map();
    for (const r of records) {
      if (this.byId.has(r.id)) throw new Error(`MemoryTextSource: duplicate record id '${r.id}'`);
      this.byId.set(r.id, r);
    }
  }

  ids(): string[] {
    return [...this.byId.keys()];
  }

  get(id: string): TextRecord {
    const r = this.byId.get(id);
    if (!r) throw new Error(`MemoryTextSource: no record '${id}'`);
    return r;
  }

  len(id: string): number {
    return this.get(id).input_ids.length;
  }
}

/** Images held in memory. */
export class MemoryImageSource implements ImageSource {
  constructor(
    private readonly images: ReadonlyMap<string, ImageRecord>,
    readonly imgDim: number,
    readonly labelDim: number,
  ) {}

  has(fname: string): boolean {
    return this.images.has(fname);
  }

  get(fname: string): ImageRecord {
    const r = this.images.get(fname);
    if (!r) throw new Error(`MemoryImageSource: no image '${fname}'`);
    return r;
  }

  nbb(fname: string): number {
    return this.get(fname).nbb;
  }

  keys(): string[] {
    return [...this.images.keys()];
  }
}

interface GoldenExample {
  index: number;
  id: string;
  wordpieces: number[];
  image: string;
  itm?: { label: number; image: string };
  mlm?: { positions: number[]; replacement_ids: number[]; kinds: MlmKind[]; masked_wordpieces: number[] };
  mrm?: { masked_regions: number[] };
}

interface GoldenFile {
  special_ids: { CLS: number; SEP: number; MASK: number; v_range: [number, number] };
  mask_prob?: number;
  examples: GoldenExample[];
  images: Record<string, { num_regions: number; tensors: string[] }>;
  downstream?: {
    vqa?: Array<{ example: number; image: string; answer_labels: number[]; answer_scores: number[] }>;
    ve?: Array<{ example: number; image: string; label: number }>;
    nlvr2?: Array<{ example: number; left_image: string; right_image: string; target: number }>;
    re?: Array<{ example: number; image: string; image_id: number; target_region: number; ann_ids: number[] }>;
    itm_retrieval?: Array<{ caption: number; pairs: Array<[string, string]> }>;
  };
}

/** The images of a fixture set as an ImageSource (checks the stored pos_i against positionFeatures). */
export function goldenImageSource(fixtureDir: string, gold: GoldenFile): MemoryImageSource {
  const file = path.join(fixtureDir, 'inputs.safetensors');
  const { tensors } = readSafetensors(file);
  const pick = (img: string, names: string[], prefix: string, required: boolean) => {
    const name = names.find((n) => n.startsWith(prefix));
    const t = name === undefined ? undefined : tensors.get(name);
    if (!t && required) throw new Error(`${file}: image '${img}' has no '${prefix}*' tensor`);
    return t;
  };
  const images = new Map<string, ImageRecord>();
  let imgDim = -1;
  let labelDim = 0;
  for (const [name, info] of Object.entries(gold.images)) {
    const feat = pick(name, info.tensors, 'feat_', true)!;
    const normBb = pick(name, info.tensors, 'norm_bb_', true)!;
    const soft = pick(name, info.tensors, 'soft_', false);
    const pos = pick(name, info.tensors, 'pos_', false);
    const nbb = feat.shape[0];
    if (nbb !== info.num_regions) throw new Error(`${file}: image '${name}' has ${nbb} feature rows, examples.json says ${info.num_regions}`);
    if (imgDim < 0) imgDim = feat.shape[1];
    if (feat.shape[1] !== imgDim) throw new Error(`${file}: image '${name}' features are ${feat.shape[1]}-d, others ${imgDim}-d`);
    const record: ImageRecord = { nbb, features: asFloat32(feat), normBb: asFloat32(normBb) };
    if (soft) {
      record.softLabels = asFloat32(soft);
      labelDim = soft.shape[1];
    }
    if (pos) {
      const mine = positionFeatures(record.normBb, nbb);
      const theirs = asFloat32(pos);
      if (mine.length !== theirs.length || mine.some((v, i) => !Object.is(v, theirs[i]))) {
        throw new Error(`${file}: image '${name}': positionFeatures(norm_bb) differs from the stored ${info.tensors.find((n) => n.startsWith('pos_'))}`);
      }
    }
    images.set(name, record);
  }
  if (imgDim < 0) throw new Error(`${file}: examples.json lists no images`);
  return new MemoryImageSource(images, imgDim, labelDim);
}

function specialIds(gold: GoldenFile): SpecialIds {
  const s = gold.special_ids;
  return { cls: s.CLS, sep: s.SEP, mask: s.MASK, vRange: [s.v_range[0], s.v_range[1]] };
}

/** VQA answer count: the expected file's metadata, else the head's output rows, else max label + 1. */
function vqaAnswerCount(fixtureDir: string, entries: NonNullable<GoldenFile['downstream']>['vqa']): number {
  const dir = path.join(fixtureDir, 'downstream', 'vqa');
  const expected = path.join(dir, 'expected.safetensors');
  if (fs.existsSync(expected)) {
    const n = Number(readSafetensors(expected).metadata.num_answer);
    if (Number.isInteger(n) && n > 0) return n;
  }
  const head = path.join(dir, 'head.safetensors');
  if (fs.existsSync(head)) {
    const t = readSafetensors(head).tensors;
    const lastWeight = [...t.keys()].filter((k) => /^vqa_output\.\d+\.weight$/.test(k) && t.get(k)!.shape.length === 2).sort((a, b) => Number(a.split('.')[1]) - Number(b.split('.')[1])).pop();
    if (lastWeight) return t.get(lastWeight)!.shape[0];
  }
  return Math.max(0, ...(entries ?? []).flatMap((e) => e.answer_labels)) + 1;
}

/**
 * Rebuild every batch the fixture set records inputs for, keyed by the batch file path relative
 * to `fixtureDir` (e.g. `mlm/batch.safetensors`, `downstream/nlvr2/batch_paired.safetensors`).
 */
export function buildGoldenBatches(fixtureDir: string): Map<string, Batch> {
  const goldFile = path.join(fixtureDir, 'examples.json');
  const gold = JSON.parse(fs.readFileSync(goldFile, 'utf8')) as GoldenFile;
  const images = goldenImageSource(fixtureDir, gold);
  const specials = specialIds(gold);
  const exs = gold.examples;
  const out = new Map<string, Batch>();
  const exampleRecord = (e: GoldenExample): TextRecord => ({ id: e.id, input_ids: e.wordpieces, img_fname: e.image });
  const pretrainText = new MemoryTextSource(exs.map(exampleRecord));

  if (exs.every((e) => e.mlm)) {
    const ds = new MlmDataset(pretrainText, images, { specialIds: specials });
    const batch = exs.map((e, i) => {
      const m = e.mlm!;
      const decisions: MlmDecision[] = m.positions.map((p, k) => ({ position: p, kind: m.kinds[k], replacement: m.replacement_ids[k] }));
      const ex = ds.maskedExample(i, decisions);
      const fed = ex.inputIds.slice(1, -1);
      if (fed.length !== m.masked_wordpieces.length || fed.some((t, k) => t !== m.masked_wordpieces[k])) {
        throw new Error(`${goldFile}: example ${e.id}: replayed MLM masking gives [${fed}], recorded masked_wordpieces [${m.masked_wordpieces}]`);
      }
      return ex;
    });
    out.set('mlm/batch.safetensors', ds.collate(batch));
  }

  if (exs.every((e) => e.mrm)) {
    const masks = exs.map((e) => imgMaskFromRegions(images.nbb(e.image), e.mrm!.masked_regions));
    const mrfr = new MrfrDataset(pretrainText, images, { specialIds: specials });
    out.set('mrfr/batch.safetensors', mrfr.collate(masks.map((m, i) => mrfr.maskedExample(i, m))));
    for (const task of ['mrc', 'mrckl'] as const) {
      const mrc = new MrcDataset(pretrainText, images, { specialIds: specials }, task);
      out.set(`${task}/batch.safetensors`, mrc.collate(masks.map((m, i) => mrc.maskedExample(i, m))));
    }
  }

  if (exs.every((e) => e.itm)) {
    const ds = new ItmDataset(pretrainText, images, { specialIds: specials, ot: true });
    out.set('itm/batch.safetensors', ds.collate(exs.map((e, i) => ds.pairExample(i, e.itm!.image, e.itm!.label))));
  }

  const down = gold.downstream ?? {};
  const wordpieces = (k: number): number[] => {
    const e = exs[k];
    if (!e) throw new Error(`${goldFile}: downstream entry refers to missing example ${k}`);
    return e.wordpieces;
  };

  if (down.vqa) {
    const numAnswers = vqaAnswerCount(fixtureDir, down.vqa);
    const text = new MemoryTextSource(
      down.vqa.map((d, k) => ({ id: `vqa${k}`, input_ids: wordpieces(d.example), img_fname: d.image, target: { labels: d.answer_labels, scores: d.answer_scores } })),
    );
    const ds = new VqaDataset(text, images, { numAnswers, specialIds: specials });
    out.set('downstream/vqa/batch.safetensors', ds.collate(down.vqa.map((_, k) => ds.get(k))));
  }

  if (down.ve) {
    const text = new MemoryTextSource(down.ve.map((d, k) => ({ id: `ve${k}`, input_ids: wordpieces(d.example), img_fname: d.image, target: { labels: [d.label], scores: [1.0] } })));
    const ds = new VeDataset(text, images, { specialIds: specials });
    out.set('downstream/ve/batch.safetensors', ds.collate(down.ve.map((_, k) => ds.get(k))));
  }

  if (down.nlvr2) {
    const text = new MemoryTextSource(
      down.nlvr2.map((d, k) => ({ id: `nlvr2_${k}`, input_ids: wordpieces(d.example), img_fname: [d.left_image, d.right_image], target: d.target })),
    );
    const paired = new Nlvr2PairedDataset(text, images, { specialIds: specials });
    out.set('downstream/nlvr2/batch_paired.safetensors', paired.collate(down.nlvr2.map((_, k) => paired.get(k))));
    const triplet = new Nlvr2TripletDataset(text, images, { specialIds: specials });
    out.set('downstream/nlvr2/batch_triplet.safetensors', triplet.collate(down.nlvr2.map((_, k) => triplet.get(k))));
  }

  if (down.re) {
    const text = new MemoryTextSource(
      down.re.map((d, k) => ({ id: `re${k}`, input_ids: wordpieces(d.example), img_fname: d.image, image_id: d.image_id, ann_id: d.ann_ids[d.target_region] })),
    );
    const imageOfId = new Map(down.re.map((d) => [d.image_id, d.image]));
    const table = new Map(down.re.map((d) => [d.image_id, { ann_ids: d.ann_ids }]));
    const ds = new ReDataset(text, images, {
      specialIds: specials,
      images: table,
      imgFname: (id) => {
        const name = imageOfId.get(id);
        if (name === undefined) throw new Error(`${goldFile}: no image for RE image_id ${id}`);
        return name;
      },
    });
    out.set('downstream/re/batch.safetensors', ds.collate(down.re.map((_, k) => ds.get(k))));
  }

  if (down.itm_retrieval) {
    // Caption ids are `capK` = the wordpieces (and own image) of examples[K].
    const text = new MemoryTextSource(exs.map((e, k) => ({ id: `cap${k}`, input_ids: e.wordpieces, img_fname: e.image })));
    const ds = new ItmRankDataset(text, images, { specialIds: specials });
    out.set('downstream/itm_retrieval/batch.safetensors', ds.collate(down.itm_retrieval.map((d) => ds.pairsExample(d.pairs))));
  }

  return out;
}
