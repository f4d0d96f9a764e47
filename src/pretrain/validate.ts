/**
 * Held-out evaluation of the pre-training tasks (one pass over the split, eval mode):
 * MLM accuracy, MRFR loss, MRC / MRC-kl accuracy (argmax of the prediction against argmax of the
 * detector's distribution), ITM accuracy and the mean OT distance of matched and mismatched pairs.
 */
import type { HostTensor } from '../engine/host.js';
import { toNumbers } from '../engine/host.js';
import type { TaskDataset } from '../data/datasets.js';
import { TaskLoader } from '../data/sampler.js';
import type { UniterRunner } from '../model/runner.js';
import type { OtOptions, PretrainTask } from '../model/task-graphs.js';

export type TaskMetrics = Record<string, number>;

export function argmaxRows(t: HostTensor): number[] {
  const [n, c] = t.shape;
  const d = t.data as Float32Array;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < c; j++) if (d[i * c + j] > d[i * c + best]) best = j;
    out.push(best);
  }
  return out;
}

export async function evaluateTask(
  runner: UniterRunner,
  task: PretrainTask,
  dataset: TaskDataset<unknown>,
  opts: { tokens: number; seed: number; ot: OtOptions | null; maxBatches?: number },
): Promise<TaskMetrics> {
  const loader = new TaskLoader(dataset, { seed: opts.seed + 7919, batchTokens: opts.tokens, dropLast: false });
  let correct = 0;
  let total = 0;
  let lossSum = 0;
  let batches = 0;
  let otPos = 0;
  let nPos = 0;
  let otNeg = 0;
  let nNeg = 0;
  for (const { batch } of loader.restOfEpoch()) {
    const out = await runner.run(task, batch, { training: false, grads: false, ot: task === 'itm' ? opts.ot : null, imgMasks: batch.has('img_masks') });
    lossSum += Number(out.get('loss')!.data[0]);
    batches++;
    if (task === 'mlm') {
      const pred = argmaxRows(out.get('prediction_scores')!);
      const labels = toNumbers(batch.get('txt_labels')!).filter((v) => v !== -1);
      pred.forEach((p, i) => (correct += p === labels[i] ? 1 : 0));
      total += pred.length;
    } else if (task === 'mrc' || task === 'mrckl') {
      const pred = argmaxRows(out.get('prediction_logits')!);
      const tgt = argmaxRows(batch.get('label_targets')!);
      pred.forEach((p, i) => (correct += p === tgt[i] ? 1 : 0));
      total += pred.length;
    } else if (task === 'itm') {
      const pred = argmaxRows(out.get('itm_scores')!);
      const tgt = toNumbers(batch.get('targets')!);
      pred.forEach((p, i) => (correct += p === tgt[i] ? 1 : 0));
      total += pred.length;
      const d = out.get('ot_dist');
      if (d) {
        tgt.forEach((t, i) => {
          const v = (d.data as Float32Array)[i];
          if (t === 1) {
            otPos += v;
            nPos++;
          } else {
            otNeg += v;
            nNeg++;
          }
        });
      }
    }
    if (opts.maxBatches && batches >= opts.maxBatches) break;
  }
  if (batches === 0) throw new Error(`validation of ${task}: the split produced no batch (empty or all captions filtered)`);
  const loss = lossSum / batches;
  switch (task) {
    case 'mlm':
      return { mlm_acc: correct / total, mlm_loss: loss };
    case 'mrfr':
      return { mrfr_loss: loss };
    case 'mrc':
      return { mrc_acc: correct / total, mrc_loss: loss };
    case 'mrckl':
      return { mrckl_acc: correct / total, mrckl_loss: loss };
    case 'itm': {
      const m: TaskMetrics = { itm_acc: correct / total, itm_loss: loss };
      if (nPos) m.ot_pos = otPos / nPos;
      if (nNeg) m.ot_neg = otNeg / nNeg;
      return m;
    }
  }
}
