/**
 * "What it learned": a few held-out examples scored by the freshly pre-trained model: masked
 * words filled in (MLM), matched vs. swapped images (ITM) and the word-region alignment plan
 * (WRA) for a caption; then held-out measures: image use by MLM, MRC-kl against its baseline and
 * zero-shot retrieval with the ITM head.
 */
import { defaultTokenizer } from '../data/tokenizer.js';
import { ItmDataset, MlmDataset } from '../data/datasets.js';
import type { ImageSource, TextSource } from '../data/types.js';
import { COLOURS, SHAPES } from '../data/world/concepts.js';
import { UniterRunner } from '../model/runner.js';
import type { UniterConfig } from '../model/config.js';
import { initRankOutput } from '../model/surgery.js';
import { f32, type HostTensor } from '../engine/host.js';
import { buildGallery, evaluateRetrieval, type RetrievalEvaluation } from '../finetune/retrieval.js';
import { Rng } from '../util/rng.js';
import type { EmbeddedDefault } from './run.js';
import type { PretrainResult } from './trainer.js';
import { otOptions } from './trainer.js';
import { argmaxRows } from './validate.js';

export async function showWhatItLearned(result: PretrainResult, d: EmbeddedDefault, say: (m: string) => void): Promise<void> {
  const tok = defaultTokenizer();
  const runner = new UniterRunner(d.model, result.params);
  const val = d.val[0];
  // One caption from each of four different images, so "another image" really is another one.
  const ids: string[] = [];
  const seen = new Set<string>();
  for (const id of val.txt.ids()) {
    const f = String(val.txt.get(id).img_fname);
    if (seen.has(f)) continue;
    seen.add(f);
    ids.push(id);
    if (ids.length === 4) break;
  }
  say('\nwhat it learned (held-out images and captions):');
  // MLM: mask one content word per caption and let the model fill it in.
  const mlm = new MlmDataset(val.txt, val.img, { ids });
  const rng = new Rng(1);
  const examples = ids.map((id, i) => {
    const rec = val.txt.get(id);
    const words = rec.input_ids;
    const pos = Math.min(words.length - 1, 1 + rng.int(Math.max(1, words.length - 2)));
    return { ex: mlm.maskedExample(i, [{ position: pos, kind: 'mask', replacement: 103 }]), words, pos };
  });
  const batch = mlm.collate(examples.map((e) => e.ex));
  const out = await runner.run('mlm', batch, { training: false, grads: false });
  const pred = argmaxRows(out.get('prediction_scores')!);
  examples.forEach((e, i) => {
    const shown = e.words.map((w, j) => (j === e.pos ? '[MASK]' : tok.convertIdsToTokens([w])[0]));
    const verdict = pred[i] === e.words[e.pos] ? 'right' : 'wrong';
    say(`  MLM  "${detok(shown)}" -> '${tok.convertIdsToTokens([pred[i]])[0]}' (truth '${tok.convertIdsToTokens([e.words[e.pos]])[0]}', ${verdict})`);
  });
  // ITM: each caption with its own image and with another image.
  const itm = new ItmDataset(val.txt, val.img, { ids, ot: true });
  const own = ids.map((id) => String(val.txt.get(id).img_fname));
  const rows = ids.flatMap((_, i) => [itm.pairExample(i, own[i], 1), itm.pairExample(i, own[(i + 1) % own.length], 0)]);
  const itmOut = await runner.run('itm', itm.collate(rows), { training: false, grads: false, ot: otOptions(d.settings) });
  const s = itmOut.get('itm_scores')!.data as Float32Array;
  const dist = itmOut.get('ot_dist')!.data as Float32Array;
  ids.forEach((id, i) => {
    const p = (k: number) => 1 / (1 + Math.exp(s[k * 2] - s[k * 2 + 1]));
    say(`  ITM  "${String(val.txt.get(id).caption ?? id)}": P(match) own image ${p(2 * i).toFixed(3)}, other image ${p(2 * i + 1).toFixed(3)}; OT distance ${dist[2 * i].toFixed(3)} vs ${dist[2 * i + 1].toFixed(3)}`);
  });
  const use = await imageUse(runner, val.txt, val.img);
  say(`  image use: masked colour/shape words right ${(100 * use.own).toFixed(1)}% with the caption's own image, ${(100 * use.other).toFixed(1)}% with another image (${use.words} words; chance 12.5%)`);
  const mrckl = result.validation['mrckl']?.['mrckl_acc'];
  if (mrckl !== undefined) {
    const base = majorityClassRate(val.txt, val.img);
    say(`  region classes (MRC-kl): a masked region's class right ${(100 * mrckl).toFixed(1)}% of the time; always naming the most frequent class gives ${(100 * base.rate).toFixed(1)}% (${base.classes} classes seen in ${base.regions} held-out regions)`);
  }
  if (result.params.has('itm_output.weight')) {
    const zs = await zeroShotRetrieval(d.model, result.params, val.txt, val.img, ZERO_SHOT_IMAGES);
    const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
    const m = zs.metrics;
    say(`  retrieval (zero-shot, ITM head): ${zs.captions} held-out captions x ${zs.images} images; image R@1 ${pct(m.img_r1)}, R@5 ${pct(m.img_r5)}, R@10 ${pct(m.img_r10)}; text R@1 ${pct(m.txt_r1)}, R@5 ${pct(m.txt_r5)}, R@10 ${pct(m.txt_r10)} (chance R@1 ${pct(1 / zs.images)})`);
  }
}

/** Gallery size of the main job's retrieval check (all pairs scored: captions x images). */
const ZERO_SHOT_IMAGES = 100;

/**
 * Image-text retrieval with the pre-trained ITM head alone, as the official inf_itm.py scores a
 * pre-trained model: rank_output := itm_output's "matched" row, every caption of the first
 * `maxImages` images against every one of them. The given parameters are left as they are.
 */
export async function zeroShotRetrieval(cfg: UniterConfig, params: ReadonlyMap<string, HostTensor>, txt: TextSource, img: ImageSource, maxImages: number): Promise<RetrievalEvaluation> {
  const withRank = new Map(params);
  initRankOutput(withRank);
  return evaluateRetrieval(new UniterRunner(cfg, withRank), buildGallery({ txt, img }, { maxImages }));
}

/**
 * The MRC-kl baseline without looking at anything: how often the held-out regions' most frequent
 * class (argmax of the detector's soft label) is the right answer.
 */
export function majorityClassRate(txt: TextSource, img: ImageSource): { rate: number; classes: number; regions: number } {
  const counts = new Map<number, number>();
  let regions = 0;
  for (const fname of new Set(txt.ids().map((id) => String(txt.get(id).img_fname)))) {
    const rec = img.get(fname);
    if (!rec.softLabels) continue;
    // The same argmax the MRC-kl validation takes of its targets.
    for (const best of argmaxRows(f32([rec.nbb, img.labelDim], rec.softLabels))) {
      counts.set(best, (counts.get(best) ?? 0) + 1);
      regions++;
    }
  }
  const top = Math.max(0, ...counts.values());
  return { rate: regions ? top / regions : 0, classes: counts.size, regions };
}

/**
 * Masked colour and shape words predicted with each caption's own image and with another image.
 * Only the image can tell these words (chance is 1/8), so equal accuracies mean MLM ignores the
 * image, whatever its overall accuracy says.
 */
export async function imageUse(runner: UniterRunner, txt: TextSource, img: MlmDataset['img'], maxCaptions = 200): Promise<{ own: number; other: number; words: number }> {
  const tok = defaultTokenizer();
  const visual = new Set<number>();
  for (const w of [...COLOURS, ...SHAPES]) {
    const ids = tok.convertTokensToIds(tok.tokenize(w));
    if (ids.length === 1) visual.add(ids[0]);
  }
  const ids = txt.ids().slice(0, maxCaptions);
  const images = ids.map((id) => String(txt.get(id).img_fname));
  // Another image for caption i: the next caption's image that differs from its own.
  const otherImage = (i: number): string => {
    for (let k = 1; k < ids.length; k++) if (images[(i + k) % ids.length] !== images[i]) return images[(i + k) % ids.length];
    throw new Error('imageUse: the captions all share one image');
  };
  const indexOf = new Map(ids.map((id, i) => [id, i]));
  const swapped: TextSource = { ids: () => ids, len: (id) => txt.len(id), get: (id) => ({ ...txt.get(id), img_fname: otherImage(indexOf.get(id)!) }) };
  const accuracy = async (source: TextSource): Promise<{ right: number; total: number }> => {
    const ds = new MlmDataset(source, img, { ids });
    const examples: ReturnType<MlmDataset['maskedExample']>[] = [];
    const truth: number[] = [];
    ids.forEach((id, i) => {
      txt.get(id).input_ids.forEach((w, pos) => {
        if (!visual.has(w)) return;
        examples.push(ds.maskedExample(i, [{ position: pos, kind: 'mask', replacement: tok.mask }]));
        truth.push(w);
      });
    });
    let right = 0;
    for (let s = 0; s < examples.length; s += 64) {
      const out = await runner.run('mlm', ds.collate(examples.slice(s, s + 64)), { training: false, grads: false });
      argmaxRows(out.get('prediction_scores')!).forEach((p, k) => (right += p === truth[s + k] ? 1 : 0));
    }
    return { right, total: examples.length };
  };
  const own = await accuracy(txt);
  const other = await accuracy(swapped);
  return { own: own.right / Math.max(1, own.total), other: other.right / Math.max(1, other.total), words: own.total };
}

function detok(tokens: string[]): string {
  return tokens.map((t, i) => (t.startsWith('##') ? t.slice(2) : i ? ' ' + t : t)).join('');
}
