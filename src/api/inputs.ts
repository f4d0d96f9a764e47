/**
 * Plain inputs -> official batches: a text (a string, or WordPiece ids) with one image's region
 * features (as any image store returns them), collated the way the task's official collate
 * does. Every check names the input, the field and what was expected.
 */
import type { Batch, ImageRecord } from '../data/types.js';
import { positionFeatures } from '../data/types.js';
import { SeqRow, collateRows, reCollate } from '../data/collate.js';
import type { BertTokenizer } from '../data/tokenizer.js';
import type { UniterConfig } from '../model/config.js';
import type { ScoringTask } from './scoring-heads.js';

/** One image's regions: what `ImageSource.get(name)` returns (features [nbb, img_dim], norm_bb [nbb, 6]). */
export type RegionFeatures = Pick<ImageRecord, 'nbb' | 'features' | 'normBb'>;

/** A text: a string (tokenized with the model's tokenizer) or WordPiece ids without [CLS]/[SEP]. */
export type TextInput = string | readonly number[];

/** Input of every single-image task (itm, vqa, ve, retrieval, refexp). */
export interface TextImageInput {
  text: TextInput;
  image: RegionFeatures;
}

/** Input of NLVR2: one statement about a pair of images (left, right). */
export interface TextImagePairInput {
  text: TextInput;
  images: readonly [RegionFeatures, RegionFeatures];
}

export type ModelInput = TextImageInput | TextImagePairInput;

/** Region types of NLVR2: the left image's regions are type 1, the right image's type 2. */
const LEFT_IMAGE_TYPE = 1;
const RIGHT_IMAGE_TYPE = 2;

/** [CLS] text [SEP] as ids, checked against the model's vocabulary and position table. */
export function textIds(text: TextInput, tokenizer: BertTokenizer, cfg: UniterConfig, where: string): number[] {
  let ids: number[];
  if (typeof text === 'string') ids = tokenizer.encode(text);
  else if (Array.isArray(text)) ids = [...text];
  else throw new Error(`${where}: field 'text' must be a string or an array of token ids, got ${typeof text}`);
  const out = [tokenizer.cls, ...ids, tokenizer.sep];
  for (const id of out) {
    if (!Number.isInteger(id) || id < 0 || id >= cfg.vocab_size) {
      throw new Error(`${where}: token id ${id} is outside the model's vocabulary (vocab_size ${cfg.vocab_size})`);
    }
  }
  if (out.length > cfg.max_position_embeddings) {
    throw new Error(`${where}: text has ${out.length} tokens with [CLS]/[SEP], more than the model's max_position_embeddings ${cfg.max_position_embeddings}`);
  }
  return out;
}

export function checkRegions(image: RegionFeatures | undefined, cfg: UniterConfig, where: string): RegionFeatures {
  if (!image || typeof image !== 'object') throw new Error(`${where}: missing (expected {nbb, features, normBb})`);
  const { nbb, features, normBb } = image;
  if (!Number.isInteger(nbb) || nbb < 0) throw new Error(`${where}: field 'nbb' must be a region count, got ${JSON.stringify(nbb)}`);
  if (!(features instanceof Float32Array) || features.length !== nbb * cfg.img_dim) {
    throw new Error(`${where}: field 'features' must be a Float32Array of ${nbb} x ${cfg.img_dim} values (img_dim ${cfg.img_dim}), got ${features instanceof Float32Array ? features.length : typeof features}`);
  }
  if (!(normBb instanceof Float32Array) || normBb.length !== nbb * 6) {
    throw new Error(`${where}: field 'normBb' must be a Float32Array of ${nbb} x 6 box values [x1, y1, x2, y2, w, h] (normalised), got ${normBb instanceof Float32Array ? normBb.length : typeof normBb}`);
  }
  return image;
}

/** One encoder row (text ids with [CLS]/[SEP], the images' regions concatenated). */
export function inputRow(ids: number[], images: readonly RegionFeatures[], types?: readonly number[]): SeqRow {
  const nbb = images.reduce((s, im) => s + im.nbb, 0);
  const imgFeat = new Float32Array(images.reduce((s, im) => s + im.features.length, 0));
  const imgPosFeat = new Float32Array(nbb * 7);
  let f = 0;
  let p = 0;
  for (const im of images) {
    imgFeat.set(im.features, f);
    f += im.features.length;
    imgPosFeat.set(positionFeatures(im.normBb, im.nbb), p);
    p += im.nbb * 7;
  }
  const r: SeqRow = { inputIds: ids, imgFeat, imgPosFeat, nbb };
  if (types) r.imgTypeIds = images.flatMap((im, k) => new Array<number>(im.nbb).fill(types[k]));
  return r;
}

/**
 * The official batch of `task` for plain inputs. NLVR2 inputs need `images` (a pair); the
 * other tasks `image`. VCR batches have a structure of their own: build them with vcrCollate.
 */
export function collateInputs(task: ScoringTask, inputs: readonly ModelInput[], tokenizer: BertTokenizer, cfg: UniterConfig): Batch {
  if (!Array.isArray(inputs) || inputs.length === 0) throw new Error(`${task}: expected a non-empty array of inputs`);
  if (task === 'vcr') throw new Error("vcr: build VCR batches with vcrCollate / VcrEvalDataset (question, answer and rationale parts carry their own token types)");
  const pairTask = task.startsWith('nlvr2');
  const rows: SeqRow[] = [];
  inputs.forEach((input, i) => {
    const where = `input ${i}`;
    if (!input || typeof input !== 'object') throw new Error(`${where}: expected an object with 'text' and ${pairTask ? "'images'" : "'image'"}`);
    const ids = textIds(input.text, tokenizer, cfg, where);
    if (pairTask) {
      const images = (input as TextImagePairInput).images;
      if (!Array.isArray(images) || images.length !== 2) throw new Error(`${where}: task ${task} needs field 'images' with 2 images (left, right)`);
      const [left, right] = images.map((im, k) => checkRegions(im, cfg, `${where}: images[${k}]`));
      if (task === 'nlvr2_triplet') rows.push(inputRow(ids, [left, right], [LEFT_IMAGE_TYPE, RIGHT_IMAGE_TYPE]));
      else rows.push(inputRow(ids, [left], [LEFT_IMAGE_TYPE]), inputRow(ids, [right], [RIGHT_IMAGE_TYPE]));
    } else {
      rows.push(inputRow(ids, [checkRegions((input as TextImageInput).image, cfg, `${where}: image`)]));
    }
  });
  if (task === 're_mlp1' || task === 're_mlp2') return reCollate(rows);
  return collateRows(rows, cfg.img_dim).batch;
}
