/**
 * Image-text retrieval metrics over a full caption x image score matrix (official
 * `utils/itm_eval.py::itm_eval`, same output keys):
 *
 * - image retrieval (IR, `img_r1/5/10`): for each caption, is its ground-truth image among the
 *   K best-scored images?
 * - text retrieval (TR, `txt_r1/5/10`): for each image, is ANY of its ground-truth captions among
 *   the K best-scored captions?
 * - `img_r_mean`, `txt_r_mean` (mean over K) and `r_mean` (mean of the two).
 *
 * Ranks are exact: the rank of an entry is the number of entries with a strictly higher score
 * plus the number of equal scores earlier in the list (a stable sort), so ties never depend on
 * a sort implementation. (The official IR count applies `< K` to both columns of `nonzero()`, so
 * it also counts caption ROW indices below K; the overcount is at most K captions. This module
 * computes the definition instead.)
 */

/** Caption x image scores, row-major: scores[t * imgIds.length + i]. */
export interface ScoreMatrix {
  txtIds: readonly string[];
  imgIds: readonly string[];
  scores: Float32Array;
}

export interface RetrievalMetrics {
  txt_r1: number;
  txt_r5: number;
  txt_r10: number;
  txt_r_mean: number;
  img_r1: number;
  img_r5: number;
  img_r10: number;
  img_r_mean: number;
  r_mean: number;
}

/** Ground truth: each caption's image (txt2img.json). */
export type Txt2Img = ReadonlyMap<string, string> | Readonly<Record<string, string>>;

function lookup(m: Txt2Img, key: string): string | undefined {
  return m instanceof Map ? m.get(key) : (m as Record<string, string>)[key];
}

/** 0-based rank of entry `target` among `n` scores read through `at` (stable: earlier wins ties). */
export function rankOf(n: number, at: (j: number) => number, target: number): number {
  const s = at(target);
  if (Number.isNaN(s)) throw new Error(`rankOf: score of entry ${target} is NaN`);
  let rank = 0;
  for (let j = 0; j < n; j++) {
    const v = at(j);
    if (v > s || (v === s && j < target)) rank++;
  }
  return rank;
}

/** Fraction of ranks (0-based) below k. */
export function recallAtK(ranks: readonly number[], k: number): number {
  if (ranks.length === 0) throw new Error('recallAtK: no ranks');
  if (!(Number.isInteger(k) && k >= 1)) throw new Error(`recallAtK: k must be a positive integer, got ${k}`);
  let hit = 0;
  for (const r of ranks) if (r < k) hit++;
  return hit / ranks.length;
}

export function checkScoreMatrix(m: ScoreMatrix): void {
  const nt = m.txtIds.length;
  const ni = m.imgIds.length;
  if (nt === 0 || ni === 0) throw new Error(`score matrix: needs at least one caption and one image, got ${nt} x ${ni}`);
  if (m.scores.length !== nt * ni) throw new Error(`score matrix: has ${m.scores.length} scores, expected ${nt} captions x ${ni} images = ${nt * ni}`);
  const dup = (ids: readonly string[], what: string) => {
    const seen = new Set<string>();
    for (const id of ids) {
      if (seen.has(id)) throw new Error(`score matrix: ${what} '${id}' appears twice`);
      seen.add(id);
    }
  };
  dup(m.txtIds, 'caption');
  dup(m.imgIds, 'image');
  for (let k = 0; k < m.scores.length; k++) {
    if (Number.isNaN(m.scores[k])) throw new Error(`score matrix: score of caption '${m.txtIds[Math.floor(k / ni)]}' x image '${m.imgIds[k % ni]}' is NaN`);
  }
}

/**
 * Ranks of the ground truth in both directions. Every caption's image must be in the gallery
 * and every gallery image must have at least one caption among the queries; otherwise an error
 * names the offending caption or image.
 */
export function retrievalRanks(m: ScoreMatrix, txt2img: Txt2Img): { imageRanks: number[]; textRanks: number[] } {
  checkScoreMatrix(m);
  const ni = m.imgIds.length;
  const imgIndex = new Map(m.imgIds.map((id, j) => [id, j]));
  const gtImage: number[] = m.txtIds.map((t) => {
    const img = lookup(txt2img, t);
    if (img === undefined) throw new Error(`retrieval: caption '${t}' has no ground-truth image in txt2img`);
    const j = imgIndex.get(img);
    if (j === undefined) throw new Error(`retrieval: caption '${t}' has no positive in the gallery (its image '${img}' is not among the ${ni} gallery images)`);
    return j;
  });
  const captionsOf: number[][] = m.imgIds.map(() => []);
  gtImage.forEach((j, t) => captionsOf[j].push(t));
  captionsOf.forEach((caps, j) => {
    if (caps.length === 0) throw new Error(`retrieval: gallery image '${m.imgIds[j]}' has no ground-truth caption among the ${m.txtIds.length} query captions`);
  });

  const s = m.scores;
  const imageRanks = gtImage.map((j, t) => rankOf(ni, (k) => s[t * ni + k], j));
  const nt = m.txtIds.length;
  // Ranks are a total order, so the best-ranked ground-truth caption is the highest-scored one
  // (earliest on ties): one rank computation per image instead of one per caption.
  const textRanks = captionsOf.map((caps, j) => {
    let best = caps[0];
    for (const t of caps) if (s[t * ni + j] > s[best * ni + j]) best = t;
    return rankOf(nt, (k) => s[k * ni + j], best);
  });
  return { imageRanks, textRanks };
}

/** The official retrieval metrics (recall as a fraction in [0, 1]) from the ground-truth ranks. */
export function metricsFromRanks(ranks: { imageRanks: readonly number[]; textRanks: readonly number[] }): RetrievalMetrics {
  const img = [1, 5, 10].map((k) => recallAtK(ranks.imageRanks, k));
  const txt = [1, 5, 10].map((k) => recallAtK(ranks.textRanks, k));
  const imgMean = (img[0] + img[1] + img[2]) / 3;
  const txtMean = (txt[0] + txt[1] + txt[2]) / 3;
  return {
    txt_r1: txt[0],
    txt_r5: txt[1],
    txt_r10: txt[2],
    txt_r_mean: txtMean,
    img_r1: img[0],
    img_r5: img[1],
    img_r10: img[2],
    img_r_mean: imgMean,
    r_mean: (txtMean + imgMean) / 2,
  };
}

/** The official retrieval metrics of a score matrix. */
export function retrievalMetrics(m: ScoreMatrix, txt2img: Txt2Img): RetrievalMetrics {
  return metricsFromRanks(retrievalRanks(m, txt2img));
}
