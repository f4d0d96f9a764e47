/**
 * What the model aligned, as data: for a (text, image) pair, the word-region transport plan
 * that WRA optimises (IPOT over the last layer's text and region states, pads masked, exactly
 * the pre-training graph's otDistance) and every layer's and head's attention between tokens
 * and regions. One inference graph computes both; training graphs are untouched (the encoder
 * only collects attention probabilities when asked).
 */
import { Graph, Tensor } from '../engine/index.js';
import { Program, compile } from '../engine/runtime.js';
import type { HostTensor } from '../engine/host.js';
import { toNumbers } from '../engine/host.js';
import { itmCollate } from '../data/collate.js';
import type { BertTokenizer } from '../data/tokenizer.js';
import type { UniterConfig } from '../model/config.js';
import { DEFAULT_OT } from '../model/task-graphs.js';
import { Params, declareInputs, otDistance, otSplit, uniterForward } from '../model/uniter.js';
import { TextImageInput, checkRegions, inputRow, textIds } from './inputs.js';

/** IPOT settings (default: pre-training's beta 0.5, 50 iterations). */
export interface AlignmentOptions {
  beta?: number;
  iterations?: number;
}

/** A word of the text and the token positions (in `tokens`) its WordPieces occupy. */
export interface AlignedWord {
  text: string;
  tokens: number[];
}

export interface Alignment {
  /** WordPieces of the sequence, [CLS] first and [SEP] last (the text side of the plan). */
  tokens: string[];
  /** Whole words (WordPieces joined), each with its token positions; [CLS]/[SEP] excluded. */
  words: AlignedWord[];
  /** Region count (the image side). */
  regions: number;
  /** [token][region] transport mass; sums to about 1 over the whole plan. */
  plan: number[][];
  /** The OT distance (trace of cost x plan), as WRA's loss reads it. */
  distance: number;
  /** [token][region] cost 1 - cos(text state, region state). */
  cost: number[][];
  attention: {
    layers: number;
    heads: number;
    /** [layer][head][token][region]: how much each token (query) attends to each region (key). */
    textToRegion: number[][][][];
    /** [layer][head][region][token]: how much each region (query) attends to each token. */
    regionToText: number[][][][];
  };
}

/** Whole words from WordPieces: a piece starting with '##' continues the word before it. */
export function groupWords(tokens: readonly string[]): AlignedWord[] {
  const words: AlignedWord[] = [];
  tokens.forEach((t, i) => {
    if (t === '[CLS]' || t === '[SEP]' || t === '[PAD]') return;
    const last = words[words.length - 1];
    if (t.startsWith('##') && last && last.tokens[last.tokens.length - 1] === i - 1) {
      last.text += t.slice(2);
      last.tokens.push(i);
    } else words.push({ text: t, tokens: [i] });
  });
  return words;
}

export class Aligner {
  private program: Program | null = null;
  private paramNames: string[] = [];
  private readonly beta: number;
  private readonly iterations: number;

  constructor(
    private readonly cfg: UniterConfig,
    private readonly params: ReadonlyMap<string, HostTensor>,
    private readonly tokenizer: BertTokenizer,
    private readonly threads?: number,
    opts: AlignmentOptions = {},
  ) {
    this.beta = opts.beta ?? DEFAULT_OT.beta;
    this.iterations = opts.iterations ?? DEFAULT_OT.iterations;
    if (!(this.beta > 0)) throw new Error(`alignment: 'beta' must be positive, got ${opts.beta}`);
    if (!(Number.isInteger(this.iterations) && this.iterations >= 1)) throw new Error(`alignment: 'iterations' must be a positive integer, got ${opts.iterations}`);
  }

  private compiled(): Program {
    if (this.program) return this.program;
    const cfg = this.cfg;
    const g = new Graph('uniter_alignment');
    const P = new Params(g, [...this.params].map(([name, t]) => ({ name, shape: [...t.shape], init: 'zeros' as const })));
    const inp = declareInputs(g, cfg);
    const scatter = g.input('ot_inputs.ot_scatter', 'int64', ['B', 'Lj']);
    const txtPad = g.input('ot_inputs.txt_pad', 'bool', ['B', 'Lt']);
    const imgPad = g.input('ot_inputs.img_pad', 'bool', ['B', 'N']);
    const attentions: Tensor[] = [];
    const seq = uniterForward(P, cfg, inp, { training: false, attentions });
    const { txt, img } = otSplit(seq, scatter, 'Lt', 'N');
    const ot = otDistance(txt, img, txtPad, imgPad, this.beta, this.iterations);
    const outputs: Record<string, Tensor> = { ot_plan: ot.plan, ot_cost: ot.cost, ot_dist: ot.distance };
    attentions.forEach((a, l) => (outputs[`attention_${l}`] = a));
    this.paramNames = [...P.used.keys()];
    this.program = compile(g, outputs, { threads: this.threads, name: 'uniter_alignment' });
    return this.program;
  }

  /** Plan and attention for each (text, image) pair; one session run for the whole list. */
  async align(inputs: readonly TextImageInput[]): Promise<Alignment[]> {
    if (!Array.isArray(inputs) || inputs.length === 0) throw new Error('alignment: expected a non-empty array of {text, image}');
    const cfg = this.cfg;
    const rows = inputs.map((input, i) => {
      const where = `input ${i}`;
      if (!input || typeof input !== 'object') throw new Error(`${where}: expected an object with 'text' and 'image'`);
      const ids = textIds(input.text, this.tokenizer, cfg, where);
      return { ...inputRow(ids, [checkRegions(input.image, cfg, `${where}: image`)]), target: 0, ids };
    });
    const batch = itmCollate(rows, { ot: true });
    const program = this.compiled();
    const feeds = new Map<string, HostTensor>();
    for (const k of ['input_ids', 'position_ids', 'img_feat', 'img_pos_feat', 'attn_masks', 'gather_index', 'ot_inputs.ot_scatter', 'ot_inputs.txt_pad', 'ot_inputs.img_pad']) feeds.set(k, batch.get(k)!);
    for (const n of this.paramNames) feeds.set(n, this.params.get(n)!);
    const out = await program.run(feeds);

    const Lt = batch.get('input_ids')!.shape[1];
    const N = batch.get('img_feat')!.shape[1];
    const Lj = batch.get('attn_masks')!.shape[1];
    const plan = out.get('ot_plan')!.data as Float32Array; // [B, N, Lt]
    const cost = out.get('ot_cost')!.data as Float32Array; // [B, Lt, N]
    const dist = toNumbers(out.get('ot_dist')!);
    const heads = cfg.num_attention_heads;
    const layers = cfg.num_hidden_layers;
    const att = Array.from({ length: layers }, (_, l) => out.get(`attention_${l}`)!.data as Float32Array); // [B, heads, Lj, Lj]
    return rows.map((r, b) => {
      const tl = r.ids.length;
      const nbb = r.nbb;
      const tokens = this.tokenizer.convertIdsToTokens(r.ids);
      // Region k of row b sits at joint position tl + k (compact [text, regions, pad] layout).
      const A = (l: number, h: number, q: number, k: number) => att[l][((b * heads + h) * Lj + q) * Lj + k];
      return {
        tokens,
        words: groupWords(tokens),
        regions: nbb,
        plan: Array.from({ length: tl }, (_, t) => Array.from({ length: nbb }, (_, k) => plan[(b * N + k) * Lt + t])),
        cost: Array.from({ length: tl }, (_, t) => Array.from({ length: nbb }, (_, k) => cost[(b * Lt + t) * N + k])),
        distance: dist[b],
        attention: {
          layers,
          heads,
          textToRegion: Array.from({ length: layers }, (_, l) => Array.from({ length: heads }, (_, h) => Array.from({ length: tl }, (_, t) => Array.from({ length: nbb }, (_, k) => A(l, h, t, tl + k))))),
          regionToText: Array.from({ length: layers }, (_, l) => Array.from({ length: heads }, (_, h) => Array.from({ length: nbb }, (_, k) => Array.from({ length: tl }, (_, t) => A(l, h, tl + k, t))))),
        },
      };
    });
  }
}
