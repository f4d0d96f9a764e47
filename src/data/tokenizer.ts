/**
 * bert-base-cased WordPiece tokenizer, as UNITER's pre-processing uses it
 * (`BertTokenizer('bert-base-cased', do_lower_case=False)` from pytorch-pretrained-bert 0.6.2):
 *
 * 1. split the text on whitespace (Python's `str.split()`), and tokenize word by word, dropping
 *    words that yield no token (this is how the official `prepro.py` calls the tokenizer);
 * 2. basic tokenization of a word: drop U+0000, U+FFFD and control characters (Unicode C*, except
 *    tab/newline/CR which count as whitespace), map whitespace to spaces, put spaces around CJK
 *    ideographs, split off every punctuation character (ASCII 33-47, 58-64, 91-96, 123-126 and
 *    Unicode P*). No lower-casing, no accent stripping. The special tokens [UNK] [SEP] [PAD]
 *    [CLS] [MASK] are never split;
 * 3. WordPiece: greedy longest-match-first against the vocabulary, continuation pieces prefixed
 *    with `##`; a word longer than 100 characters, or one that cannot be covered, becomes [UNK].
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const VOCAB_RELATIVE = path.join('assets', 'bert-base-cased', 'vocab.txt');
const MAX_CHARS_PER_WORD = 100;
const NEVER_SPLIT = new Set(['[UNK]', '[SEP]', '[PAD]', '[CLS]', '[MASK]']);

/** Characters Python's `str.split()` splits on (str.isspace). */
const PY_WHITESPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/u;
const IS_CONTROL = /^\p{C}$/u;
const IS_SPACE_SEPARATOR = /^\p{Zs}$/u;
const IS_PUNCTUATION = /^\p{P}$/u;

function isBertWhitespace(ch: string): boolean {
  return ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r' || IS_SPACE_SEPARATOR.test(ch);
}

function isBertControl(ch: string): boolean {
  if (ch === '\t' || ch === '\n' || ch === '\r') return false;
  return IS_CONTROL.test(ch);
}

function isBertPunctuation(ch: string): boolean {
  const cp = ch.codePointAt(0) as number;
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) return true;
  return IS_PUNCTUATION.test(ch);
}

function isCjk(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

function pySplit(text: string): string[] {
  return text.split(PY_WHITESPACE).filter((w) => w.length > 0);
}

/** Basic (pre-WordPiece) tokenization of one piece of text. */
function basicTokenize(text: string): string[] {
  let cleaned = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0) as number;
    if (cp === 0 || cp === 0xfffd || isBertControl(ch)) continue;
    if (isBertWhitespace(ch)) cleaned += ' ';
    else if (isCjk(cp)) cleaned += ` ${ch} `;
    else cleaned += ch;
  }
  const out: string[] = [];
  for (const token of pySplit(cleaned)) {
    if (NEVER_SPLIT.has(token)) {
      out.push(token);
      continue;
    }
    let current = '';
    for (const ch of token) {
      if (isBertPunctuation(ch)) {
        if (current) out.push(current);
        out.push(ch);
        current = '';
      } else current += ch;
    }
    if (current) out.push(current);
  }
  return out;
}

/** Directory holding the package's `assets/` (found upward from this module, in src/ or dist/). */
function packageAssetPath(relative: string): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = path.join(dir, relative);
    if (fs.existsSync(candidate)) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`cannot find ${relative} in any parent directory of ${path.dirname(fileURLToPath(import.meta.url))}`);
    dir = parent;
  }
}

export class BertTokenizer {
  readonly vocabSize: number;
  readonly pad: number;
  readonly unk: number;
  readonly cls: number;
  readonly sep: number;
  readonly mask: number;
  private readonly vocab: Map<string, number>;
  private readonly idToToken: string[];

  private constructor(tokens: string[], source: string) {
    this.vocab = new Map();
    // Like the reference loader, a repeated token keeps the id of its last line.
    tokens.forEach((t, i) => this.vocab.set(t, i));
    this.idToToken = tokens;
    this.vocabSize = tokens.length;
    const special = (t: string): number => {
      const id = this.vocab.get(t);
      if (id === undefined) throw new Error(`${source}: vocabulary has no ${t} token`);
      return id;
    };
    this.pad = special('[PAD]');
    this.unk = special('[UNK]');
    this.cls = special('[CLS]');
    this.sep = special('[SEP]');
    this.mask = special('[MASK]');
  }

  /** Load a one-token-per-line vocabulary (id = line number - 1); default: the bundled bert-base-cased. */
  static load(vocabFile?: string): BertTokenizer {
    const file = vocabFile ?? packageAssetPath(VOCAB_RELATIVE);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      throw new Error(`${file}: cannot read vocabulary (${(e as Error).message})`);
    }
    const lines = text.split('\n');
    if (lines.length && lines[lines.length - 1] === '') lines.pop();
    // Each line is stripped of surrounding whitespace, as the reference loader does.
    const tokens = lines.map((l) => l.replace(/^[\s\x1c-\x1f\x85]+|[\s\x1c-\x1f\x85]+$/gu, ''));
    if (tokens.length === 0) throw new Error(`${file}: empty vocabulary`);
    return new BertTokenizer(tokens, file);
  }

  /** WordPiece tokens of `text` (no [CLS]/[SEP]), word by word as the official pre-processing does. */
  tokenize(text: string): string[] {
    const out: string[] = [];
    for (const word of pySplit(text)) {
      for (const token of basicTokenize(word)) this.wordPiece(token, out);
    }
    return out;
  }

  /** Token ids of `text`, without [CLS]/[SEP]. */
  encode(text: string): number[] {
    return this.convertTokensToIds(this.tokenize(text));
  }

  convertTokensToIds(tokens: string[]): number[] {
    return tokens.map((t) => {
      const id = this.vocab.get(t);
      if (id === undefined) throw new Error(`token ${JSON.stringify(t)} is not in the vocabulary`);
      return id;
    });
  }

  convertIdsToTokens(ids: number[]): string[] {
    return ids.map((id) => {
      const t = Number.isInteger(id) ? this.idToToken[id] : undefined;
      if (t === undefined) throw new Error(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
      return t;
    });
  }

  /** Readable text: tokens joined by spaces, `##` continuations glued to the previous piece. */
  decode(ids: number[]): string {
    return this.convertIdsToTokens(ids).join(' ').replace(/ ##/g, '').trim();
  }

  private wordPiece(token: string, out: string[]): void {
    const chars = Array.from(token);
    if (chars.length > MAX_CHARS_PER_WORD) {
      out.push('[UNK]');
      return;
    }
    const pieces: string[] = [];
    let start = 0;
    while (start < chars.length) {
      let end = chars.length;
      let found: string | undefined;
      while (start < end) {
        const sub = (start > 0 ? '##' : '') + chars.slice(start, end).join('');
        if (this.vocab.has(sub)) {
          found = sub;
          break;
        }
        end--;
      }
      if (found === undefined) {
        out.push('[UNK]');
        return;
      }
      pieces.push(found);
      start = end;
    }
    out.push(...pieces);
  }
}

let cached: BertTokenizer | undefined;

/** The bundled bert-base-cased tokenizer, loaded once. */
export function defaultTokenizer(): BertTokenizer {
  cached ??= BertTokenizer.load();
  return cached;
}

/** The bundled bert-base-cased vocabulary file (what model folders carry as vocab.txt). */
export function bundledVocabPath(): string {
  return packageAssetPath(VOCAB_RELATIVE);
}
