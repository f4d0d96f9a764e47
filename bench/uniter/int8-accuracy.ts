/**
 * The accuracy cost of int8 inference (issue 19) on held-out data: ITM probabilities of a model
 * folder in float32 and int8 on the synthetic world's test split (every caption with its own image
 * and with a random other one), reported as max and mean |p_int8 - p_float32| and the ITM accuracy
 * of each. Retrieval R@1 and the VQA score come from `uniter evaluate ... --split test [--int8]`
 * (docs/benchmarks.md lists the commands).
 *
 *   node dist/bench/uniter/int8-accuracy.js --checkpoint DIR [--max-captions 1000] [--batch 64] [--threads 1] [--per-layer]
 *
 * --per-layer adds, per encoder layer, the int8 output's error against float32 over the real
 * (unpadded) tokens, relative to each token's float32 norm (mean and max), and how unequal the rows
 * entering the layer are: the largest row's max |value| over the median row's (a per-tensor
 * activation scale is set by the largest row, so a large ratio costs the other rows resolution).
 */
import { ItmDataset } from '../../src/data/datasets.js';
import { HostTensor, toNumbers } from '../../src/engine/host.js';
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
  const perLayer = process.argv.includes('--per-layer');
  const layerStats: Record<string, { relErr: number[]; rowMax: number[] }> = {};
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
      if (perLayer) {
        const got: Record<string, Map<string, HostTensor>> = {};
        for (const precision of ['float32', 'int8'] as const) got[precision] = await runner.run('itm', batch, { training: false, grads: false, inference: true, precision, capture: true });
        const attn = toNumbers(batch.get('attn_masks')!);
        for (let l = -1; l < cfg.num_hidden_layers; l++) {
          const name = l < 0 ? 'embedding_output' : `encoder_layer_${l}`;
          const f = got.float32.get(name)!;
          const q = got.int8.get(name)!;
          const H = f.shape[2];
          const acc = (layerStats[name] ??= { relErr: [], rowMax: [] });
          for (let r = 0; r < attn.length; r++) {
            if (!attn[r]) continue;
            let num = 0;
            let den = 0;
            let mx = 0;
            for (let h = 0; h < H; h++) {
              const a = Number(f.data[r * H + h]);
              const d = a - Number(q.data[r * H + h]);
              num += d * d;
              den += a * a;
              mx = Math.max(mx, Math.abs(a));
            }
            acc.relErr.push(Math.sqrt(num / den));
            acc.rowMax.push(mx);
          }
        }
      }
    }
    const mean = diffs.reduce((a, b) => a + b, 0) / diffs.length;
    const sorted = [...diffs].sort((a, b) => a - b);
    console.log(
      JSON.stringify({
        checkpoint: weights,
        pairs: diffs.length,
        itm_prob_abs_diff: { max: sorted.at(-1), mean, p99: sorted[Math.floor(0.99 * (sorted.length - 1))] },
        itm_accuracy: { float32: correct.float32 / diffs.length, int8: correct.int8 / diffs.length },
        ...(perLayer
          ? {
              // Rows entering layer l are the output of layer l - 1 (embedding_output for layer 0).
              per_layer: Object.fromEntries(
                Object.entries(layerStats).map(([name, st]) => {
                  const sortedMax = [...st.rowMax].sort((a, b) => a - b);
                  return [name, { rel_err_mean: st.relErr.reduce((a, b) => a + b, 0) / st.relErr.length, rel_err_max: Math.max(...st.relErr), row_max_abs_largest_over_median: sortedMax.at(-1)! / sortedMax[sortedMax.length >> 1] }];
                }),
              ),
            }
          : {}),
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
