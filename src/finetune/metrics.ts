/**
 * Task metrics of the downstream evaluations, as the official scripts compute them:
 *   VQA score      (train_vqa.py compute_score_with_logits): the soft target score of the argmax answer
 *   accuracy       argmax == label (SNLI-VE, NLVR2, VCR)
 *   NLVR2 consistency (scripts/eval_nlvr2.py): share of statement groups whose predictions are all right;
 *                  a group is the identifier `split-set-pair-sentence` with the pair field blanked
 *   VCR            Q->A, QA->R (rationales conditioned on the GT answer) and Q->AR (both right)
 * plus the summed losses the official validation loops report per example (BCE sum, CE sum).
 * Score matrices are row-major Float32Arrays [rows, columns].
 */

/** Column index of the largest value of each row (first one on ties, as torch.max). */
export function argmaxRows(scores: ArrayLike<number>, columns: number): number[] {
  if (!(Number.isInteger(columns) && columns > 0)) throw new Error(`argmaxRows: columns must be a positive integer, got ${columns}`);
  if (scores.length % columns !== 0) throw new Error(`argmaxRows: ${scores.length} values do not form rows of ${columns}`);
  const out: number[] = [];
  for (let r = 0; r < scores.length / columns; r++) {
    let best = 0;
    for (let c = 1; c < columns; c++) if (scores[r * columns + c] > scores[r * columns + best]) best = c;
    out.push(best);
  }
  return out;
}

/** Per-question VQA score: the soft target (0..1) of the highest-scoring answer. */
export function vqaScores(logits: ArrayLike<number>, targets: ArrayLike<number>, numAnswers: number): number[] {
  if (logits.length !== targets.length) throw new Error(`vqaScores: ${logits.length} logits but ${targets.length} target values`);
  return argmaxRows(logits, numAnswers).map((a, r) => targets[r * numAnswers + a]);
}

/** Fraction of predictions equal to their label. */
export function accuracy(predictions: readonly number[], labels: readonly number[]): number {
  if (predictions.length !== labels.length) throw new Error(`accuracy: ${predictions.length} predictions but ${labels.length} labels`);
  if (predictions.length === 0) throw new Error('accuracy: no predictions');
  let right = 0;
  predictions.forEach((p, i) => (right += p === labels[i] ? 1 : 0));
  return right / predictions.length;
}

/** Sum over all elements of binary cross-entropy with logits (numerically stable form). */
export function bceWithLogitsSum(logits: ArrayLike<number>, targets: ArrayLike<number>): number {
  if (logits.length !== targets.length) throw new Error(`bceWithLogitsSum: ${logits.length} logits but ${targets.length} targets`);
  let s = 0;
  for (let i = 0; i < logits.length; i++) {
    const x = logits[i];
    s += Math.max(x, 0) - x * targets[i] + Math.log1p(Math.exp(-Math.abs(x)));
  }
  return s;
}

/** Sum over rows of softmax cross-entropy of the row's logits against its label. */
export function crossEntropySum(logits: ArrayLike<number>, columns: number, labels: readonly number[]): number {
  if (logits.length !== labels.length * columns) throw new Error(`crossEntropySum: ${logits.length} logits do not form ${labels.length} rows of ${columns}`);
  let s = 0;
  labels.forEach((label, r) => {
    if (!(Number.isInteger(label) && label >= 0 && label < columns)) throw new Error(`crossEntropySum: row ${r} label ${label} is not in 0..${columns - 1}`);
    let max = -Infinity;
    for (let c = 0; c < columns; c++) max = Math.max(max, logits[r * columns + c]);
    let z = 0;
    for (let c = 0; c < columns; c++) z += Math.exp(logits[r * columns + c] - max);
    s += max + Math.log(z) - logits[r * columns + label];
  });
  return s;
}

/**
 * NLVR2 consistency group of an identifier: `split-set-pair-sentence` with the pair field
 * emptied (`dev-850-0-0` -> `dev-850--0`), as the official evaluation script does.
 */
export function nlvr2GroupOf(identifier: string): string {
  const parts = identifier.split('-');
  if (parts.length < 3) throw new Error(`NLVR2 identifier '${identifier}': expected 'split-set-pair-sentence'`);
  parts[2] = '';
  return parts.join('-');
}

/** Accuracy and consistency over labelled identifiers; every label needs a prediction. */
export function nlvr2Metrics(predictions: ReadonlyMap<string, boolean>, labels: ReadonlyMap<string, boolean>): { acc: number; consistency: number } {
  if (labels.size === 0) throw new Error('nlvr2Metrics: no labelled examples');
  let right = 0;
  const groups = new Map<string, boolean>();
  for (const [id, label] of labels) {
    const p = predictions.get(id);
    if (p === undefined) throw new Error(`nlvr2Metrics: no prediction for identifier '${id}'`);
    const ok = p === label;
    if (ok) right++;
    const g = nlvr2GroupOf(id);
    groups.set(g, (groups.get(g) ?? true) && ok);
  }
  let consistent = 0;
  for (const ok of groups.values()) if (ok) consistent++;
  return { acc: right / labels.size, consistency: consistent / groups.size };
}

/** Counts of right Q->A, QA->R and Q->AR (both right) predictions. */
export function vcrCorrect(qaPred: readonly number[], qaLabels: readonly number[], qarPred: readonly number[], qarLabels: readonly number[]): { qa: number; qar: number; joint: number } {
  const n = qaPred.length;
  if (qaLabels.length !== n || qarPred.length !== n || qarLabels.length !== n) throw new Error(`vcrCorrect: inputs have different lengths (${n}, ${qaLabels.length}, ${qarPred.length}, ${qarLabels.length})`);
  let qa = 0;
  let qar = 0;
  let joint = 0;
  for (let i = 0; i < n; i++) {
    const a = qaPred[i] === qaLabels[i];
    const r = qarPred[i] === qarLabels[i];
    qa += a ? 1 : 0;
    qar += r ? 1 : 0;
    joint += a && r ? 1 : 0;
  }
  return { qa, qar, joint };
}
