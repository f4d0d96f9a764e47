/**
 * The accuracy cost of int8 inference (issue 19) on held-out data: ITM probabilities of a model
 * folder in float32 and int8 on the synthetic world's test split (every caption with its own image
 * and with a random other one), reported as max and mean |p_int8 - p_float32| and the ITM accuracy
 * of each. Retrieval R@1 and the VQA score come from `uniter evaluate ... --split test [--int8]`
 * (docs/benchmarks.md lists the commands).
 *
 *   node dist/bench/uniter/int8-accuracy.js --checkpoint DIR [--max-captions 1000] [--batch 64] [--threads 1]
 */
import { ItmDataset } from '../../src/data/datasets.js';
import { toNumbers } from '../../src/engine/host.js';
import { setDefaultThreads } from '../../src/engine/runtime.js';
import { getTask, openTaskData } from '../../src/finetune/task-registry.js';
import { parseConfig } from '../../src/model/config.js';
import { readWeightsAny } from '../../src/model/load.js';
import { UniterRunner } from '../../src/model/runner.js';
import { configNextToWeights, resolveWeightsPath } from '../../src/finetune/trainer.js';
import { Rng } from '../../src/util/rng.js';

function flag(name: string, def?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

async function main(): Promise<void> {
  const checkpoint = flag('checkpoint');
  if (!checkpoint) throw new Error('int8-accuracy: --checkpoint DIR is required');
  const maxCaptions = Number(flag('max-captions', '1000'));
  const batchSize = Number(flag('batch', '64'));
  setDefaultThreads(Number(flag('threads', '1')));
  const weights = resolveWeightsPath(checkpoint);
  const cfg = parseConfig(configNextToWeights(weights)!, weights);
  const params = new Map(readWeightsAny(weights));
  const runner = new UniterRunner(cfg, params);
  const data = openTaskData(getTask('retrieval'), {});
  try {
    const split = data.test;
    if (!split) throw new Error('int8-accuracy: the data has no test split');
    const ds = new ItmDataset(split.txt, split.img, { negProb: 0.5, ot: false });
    ds.newEpoch(new Rng(19, 'int8-accuracy'));
    const n = Math.min(ds.ids.length, maxCaptions);
    const diffs: number[] = [];
    const correct = { float32: 0, int8: 0 };
    for (let start = 0; start < n; start += batchSize) {
      const rows = Array.from({ length: Math.min(batchSize, n - start) }, (_, i) => ds.get(start + i));
      const batch = ds.collate(rows);
      const targets = toNumbers(batch.get('targets')!);
      const probs: Record<string, number[]> = {};
      for (const precision of ['float32', 'int8'] as const) {
        const s = toNumbers((await runner.run('itm', batch, { training: false, grads: false, inference: true, precision, outputs: ['itm_scores'] })).get('itm_scores')!);
        probs[precision] = targets.map((_, i) => 1 / (1 + Math.exp(s[2 * i] - s[2 * i + 1])));
        probs[precision].forEach((p, i) => (correct[precision] += Number((p > 0.5) === (targets[i] === 1))));
      }
      probs.float32.forEach((p, i) => diffs.push(Math.abs(p - probs.int8[i])));
    }
    const mean = diffs.reduce((a, b) => a + b, 0) / diffs.length;
    const sorted = [...diffs].sort((a, b) => a - b);
    console.log(
      JSON.stringify({
        checkpoint: weights,
        pairs: diffs.length,
        itm_prob_abs_diff: { max: sorted.at(-1), mean, p99: sorted[Math.floor(0.99 * (sorted.length - 1))] },
        itm_accuracy: { float32: correct.float32 / diffs.length, int8: correct.int8 / diffs.length },
      }),
    );
  } finally {
    data.close();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
