/**
 * "What it learned": a few held-out examples scored by the freshly pre-trained model: masked
 * words filled in (MLM), matched vs. swapped images (ITM) and the word-region alignment plan
 * (WRA) for a caption.
 */
import { defaultTokenizer } from '../data/tokenizer.js';
import { ItmDataset, MlmDataset } from '../data/datasets.js';
import { UniterRunner } from '../model/runner.js';
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
}

function detok(tokens: string[]): string {
  return tokens.map((t, i) => (t.startsWith('##') ? t.slice(2) : i ? ' ' + t : t)).join('');
}
