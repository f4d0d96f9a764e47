import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BertTokenizer, defaultTokenizer } from '../../src/data/tokenizer.js';

const VOCAB_FILE = fileURLToPath(new URL('../../../assets/bert-base-cased/vocab.txt', import.meta.url));
/** Token -> id straight from the vocabulary file (line number - 1), independent of the tokenizer. */
const vocabLines = fs.readFileSync(VOCAB_FILE, 'utf8').split('\n');
const idOf = (token: string): number => {
  const i = vocabLines.indexOf(token);
  assert.ok(i >= 0, `${token} is in vocab.txt`);
  return i;
};

const tok = defaultTokenizer();

test('known sentence gives the bert-base-cased ids', () => {
  assert.deepEqual(tok.encode('This is a sentence.'), [1188, 1110, 170, 5650, 119]);
  assert.deepEqual(tok.tokenize('This is a sentence.'), ['This', 'is', 'a', 'sentence', '.']);
});

test('special ids and vocabulary size', () => {
  assert.equal(tok.vocabSize, 28996);
  assert.deepEqual([tok.pad, tok.unk, tok.cls, tok.sep, tok.mask], [0, 100, 101, 102, 103]);
  assert.deepEqual([tok.pad, tok.unk, tok.cls, tok.sep, tok.mask], ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'].map(idOf));
  assert.equal(defaultTokenizer(), tok, 'cached');
});

// Expected tokens below come from a Python run of the reference algorithm (pytorch-pretrained-bert 0.6.2,
// do_lower_case=False, word-by-word as prepro.py calls it) over the same vocabulary.
const CASES: Array<[string, string[]]> = [
  ["Hello, world! It's 5:30pm.", ['Hello', ',', 'world', '!', 'It', "'", 's', '5', ':', '30', '##pm', '.']],
  ['unaffable', ['un', '##af', '##fa', '##ble']],
  ['naïve café Zürich', ['na', '##ï', '##ve', 'café', 'Zürich']],
  ['東京タワー is tall', ['東', '京', '[UNK]', 'is', 'tall']],
  ['a\u0000b\ufffdc', ['a', '##b', '##c']],
  ['a\x1fb', ['a', 'b']],
  ['tab\tnew\nline\u3000ideo', ['ta', '##b', 'new', 'line', 'id', '##eo']],
  ['[MASK] [MASK]. [CLS]', ['[MASK]', '[', 'MA', '##S', '##K', ']', '.', '[CLS]']],
  ['U.S.A. e-mail', ['U', '.', 'S', '.', 'A', '.', 'e', '-', 'mail']],
  ['😀 ok', ['[UNK]', 'ok']],
  ['¿Qué?', ['¿', 'Q', '##ué', '?']],
  ['soft\u00adhyphen', ['soft', '##hy', '##phe', '##n']],
  ['Hello hello HELLO', ['Hello', 'hello', 'H', '##EL', '##L', '##O']],
];

for (const [text, tokens] of CASES) {
  test(`tokenize ${JSON.stringify(text)}`, () => {
    assert.deepEqual(tok.tokenize(text), tokens);
    assert.deepEqual(tok.encode(text), tokens.map(idOf));
  });
}

test('punctuation is split off, cased, accents kept', () => {
  assert.deepEqual(tok.tokenize('dog.'), ['dog', '.']);
  assert.notEqual(tok.encode('Dog')[0], tok.encode('dog')[0]);
  assert.deepEqual(tok.tokenize('$5^`~'), ['$', '5', '^', '`', '~']);
});

test('word length limit: 100 characters are split, 101 become [UNK]', () => {
  const hundred = tok.tokenize('x'.repeat(100));
  assert.equal(hundred.length, 100);
  assert.equal(hundred[0], 'x');
  assert.ok(hundred.slice(1).every((t) => t === '##x'));
  assert.deepEqual(tok.tokenize('y'.repeat(101)), ['[UNK]']);
  assert.deepEqual(tok.encode('y'.repeat(101)), [100]);
});

test('words that yield nothing are dropped; empty text gives no ids', () => {
  assert.deepEqual(tok.encode(''), []);
  assert.deepEqual(tok.encode('  \u0000 \u200b '), []);
  assert.deepEqual(tok.tokenize('a \u0000 b'), ['a', 'b']);
});

test('decode glues ## pieces', () => {
  assert.equal(tok.decode(tok.encode('unaffable words')), 'unaffable words');
  assert.equal(tok.decode([101, 1188, 102]), '[CLS] This [SEP]');
});

test('conversion errors name the token or id', () => {
  assert.throws(() => tok.convertTokensToIds(['notatoken!!']), /"notatoken!!" is not in the vocabulary/);
  assert.throws(() => tok.convertIdsToTokens([28996]), /28996 is outside the vocabulary/);
  assert.throws(() => tok.convertIdsToTokens([-1]), /-1 is outside/);
});

test('load a custom vocabulary; a missing special token is an error naming the file', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-tok-'));
  try {
    const good = path.join(dir, 'vocab.txt');
    fs.writeFileSync(good, ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', '##b', '.'].join('\n') + '\n');
    const t = BertTokenizer.load(good);
    assert.equal(t.vocabSize, 8);
    assert.deepEqual(t.encode('ab. c'), [5, 6, 7, 1]);
    const bad = path.join(dir, 'bad.txt');
    fs.writeFileSync(bad, '[PAD]\n[UNK]\n[CLS]\n[SEP]\n');
    assert.throws(() => BertTokenizer.load(bad), (e: Error) => e.message.includes(bad) && e.message.includes('[MASK]'));
    assert.throws(() => BertTokenizer.load(path.join(dir, 'none.txt')), /none\.txt: cannot read vocabulary/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
