import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildUserData, formatInspectReport, histogram, inspectData, parseUserJsonl } from '../../src/data/userdata.js';
import { defaultTokenizer } from '../../src/data/tokenizer.js';
import { ImgDb, writeImgDb } from '../../src/data/imgdb.js';
import { TxtDb, writeTxtDb } from '../../src/data/txtdb.js';
import { LmdbReader, LmdbWriter } from '../../src/data/lmdb.js';
import { float32ToHalfArray, readBUTDNpz, readNpz, writeNpz } from '../../src/data/npz.js';
import { command } from '../../src/cli/data.js';
import { runCommand } from '../helpers/cli.js';

const OFFICIAL = fileURLToPath(new URL('../../../test/fixtures/data/official/', import.meta.url));
const NPZ_DIR = path.join(OFFICIAL, 'npz/coco_tiny');
const tok = defaultTokenizer();

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-userdata-'));
}

/** An images folder: the three fixture feature files plus broken ones. */
function imagesFolder(root: string): string {
  const dir = path.join(root, 'images');
  fs.mkdirSync(dir);
  for (const f of fs.readdirSync(NPZ_DIR)) fs.copyFileSync(path.join(NPZ_DIR, f), path.join(dir, f));
  const arrays = readNpz(fs.readFileSync(path.join(NPZ_DIR, 'coco_tiny_b.npz')));
  const nan = new Map(arrays);
  const feats = Uint16Array.from(arrays.get('features')?.data as Uint16Array);
  feats[64 * 3 + 5] = 0x7e00; // float16 NaN in row 3
  nan.set('features', { dtype: '<f2', shape: [40, 64], data: feats });
  fs.writeFileSync(path.join(dir, 'nan.npz'), writeNpz(nan, true));
  const wide = new Map(arrays);
  wide.set('features', { dtype: '<f2', shape: [40, 32], data: float32ToHalfArray(new Float32Array(40 * 32).fill(1)) });
  fs.writeFileSync(path.join(dir, 'wide.npz'), writeNpz(wide, false));
  fs.writeFileSync(path.join(dir, 'junk.npz'), 'not a zip');
  return dir;
}

const LINES = [
  { id: 'a1', caption: 'A dog runs on the grass.', image: 'coco_tiny_a.npz', target: { labels: [1], scores: [1] } },
  { caption: 'Two cats sleep.', image: 'coco_tiny_b.npz' },
  { id: 7, statement: 'The left image has more dogs.', image: ['coco_tiny_a.npz', 'coco_tiny_c.npz'], label: 'True' },
  { id: 'missing', text: 'where is it', image: 'nope.npz' },
  { id: 'empty', question: ' \u0000 ', image: 'coco_tiny_a.npz' },
  { id: 'nan', expression: 'the broken one', image: 'nan.npz' },
  { id: 'wide', text: 'too wide', image: 'wide.npz' },
  { id: 'junk', text: 'junk file', image: 'junk.npz' },
];

test('parseUserJsonl: text field aliases, default ids, task fields kept', () => {
  const ex = parseUserJsonl(LINES.map((l) => JSON.stringify(l)).join('\n') + '\n\n', 'ex.jsonl');
  assert.equal(ex.length, 8);
  assert.deepEqual(ex[0], { id: 'a1', line: 1, text: 'A dog runs on the grass.', image: 'coco_tiny_a.npz', fields: { caption: 'A dog runs on the grass.', target: { labels: [1], scores: [1] } } });
  assert.equal(ex[1].id, '2', 'line number as id');
  assert.equal(ex[2].id, '7');
  assert.deepEqual(ex[2].image, ['coco_tiny_a.npz', 'coco_tiny_c.npz']);
  assert.equal(ex[5].text, 'the broken one');
});

test('parseUserJsonl: malformed input is fatal and names file, line and record', () => {
  const cases: Array<[string, RegExp]> = [
    ['{"text": "a", "image": "x.npz"}\n{oops', /f\.jsonl:2: not valid JSON/],
    ['[1, 2]', /f\.jsonl:1: each line must be a JSON object/],
    ['{"id": "r", "image": "x.npz"}', /f\.jsonl:1: record "r" has no text \(expected one of text, caption, question, statement, expression\)/],
    ['{"id": "r", "text": "a"}', /f\.jsonl:1: record "r" has no 'image'/],
    ['{"id": "r", "text": 5, "image": "x.npz"}', /record "r": 'text' must be a string/],
    ['{"id": "r", "text": "a", "image": "../etc/x.npz"}', /record "r": image "\.\.\/etc\/x\.npz" must be a path inside the images folder/],
    ['{"id": "r", "text": "a", "image": "x.npz"}\n{"id": "r", "text": "b", "image": "x.npz"}', /f\.jsonl:2: duplicate id "r"/],
    ['{"id": {"a": 1}, "text": "a", "image": "x.npz"}', /f\.jsonl:1: 'id' must be a string or a number/],
  ];
  for (const [content, msg] of cases) assert.throws(() => parseUserJsonl(content, 'f.jsonl'), msg);
});

test('build: writes both stores, skips unusable records with warnings naming them', () => {
  const root = tmpDir();
  try {
    const jsonl = path.join(root, 'mine.jsonl');
    fs.writeFileSync(jsonl, LINES.map((l) => JSON.stringify(l)).join('\n'));
    const report = buildUserData({ jsonl, imagesDir: imagesFolder(root), outDir: path.join(root, 'out') });
    assert.equal(report.name, 'mine');
    assert.equal(report.texts, 3);
    assert.equal(report.images, 3);
    assert.equal(report.warnings.length, 5);
    const warn = (id: string, what: RegExp) => assert.ok(report.warnings.some((w) => w.includes(`record "${id}"`) && what.test(w)), `${id}: ${report.warnings.join(' | ')}`);
    warn('missing', /image "nope\.npz" not found/);
    warn('empty', /empty caption/);
    warn('nan', /NaN or infinite features \(box 3: NaN\)/);
    warn('wide', /feature width 32/);
    warn('junk', /unreadable/);

    const txt = TxtDb.open(report.txtDb);
    assert.equal(report.txtDb, path.join(root, 'out/txt_db/mine.db'));
    assert.deepEqual(txt.ids(), ['a1', '2', '7']);
    assert.deepEqual(txt.get('a1'), { id: 'a1', caption: LINES[0].caption, target: { labels: [1], scores: [1] }, input_ids: tok.encode(LINES[0].caption as string), img_fname: 'coco_tiny_a.npz' });
    assert.deepEqual(txt.get('7').img_fname, ['coco_tiny_a.npz', 'coco_tiny_c.npz']);
    assert.equal(txt.get('7').label, 'True');
    assert.equal(txt.meta.bert, 'bert-base-cased');
    assert.deepEqual(txt.meta.v_range, [106, 28996]);
    txt.close();

    const img = ImgDb.open(report.imgDb);
    assert.deepEqual(img.keys(), ['coco_tiny_a.npz', 'coco_tiny_b.npz', 'coco_tiny_c.npz']);
    const official = JSON.parse(fs.readFileSync(path.join(OFFICIAL, 'img_db/coco_tiny/nbb_th0.2_max100_min10.json'), 'utf8'));
    for (const k of img.keys()) assert.equal(img.nbb(k), official[k]);
    img.close();
    // The image values are the bytes the official converter writes for the same feature files.
    const ours = LmdbReader.open(path.join(report.imgDb, 'feat_th0.2_max100_min10'));
    const theirs = LmdbReader.open(path.join(OFFICIAL, 'img_db/coco_tiny/feat_th0.2_max100_min10'));
    assert.deepEqual(ours.get('coco_tiny_c.npz'), theirs.get('coco_tiny_c.npz'));
    ours.close();
    theirs.close();
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('histogram bins', () => {
  assert.deepEqual(histogram([], 5), []);
  assert.deepEqual(histogram([12, 14, 25], 5), [
    { lo: 10, hi: 14, count: 2 },
    { lo: 15, hi: 19, count: 0 },
    { lo: 20, hi: 24, count: 0 },
    { lo: 25, hi: 29, count: 1 },
  ]);
});

test('inspect: summaries of the official fixture stores', () => {
  const r = inspectData(OFFICIAL);
  assert.equal(r.txtDbs.length, 1);
  assert.equal(r.txtDbs[0].examples, 400);
  assert.deepEqual(r.imgDbs.map((i) => i.env), ['feat_numbb36', 'feat_th0.2_max100_min10', 'feat_th0.2_max100_min10_compressed']);
  const th = r.imgDbs[1];
  assert.deepEqual([th.images, th.imgDim, th.labelDim, th.minNbb, th.maxNbb], [3, 64, 17, 10, 100]);
  assert.equal(th.regions.reduce((s, b) => s + b.count, 0), 3);
  const expected = JSON.parse(fs.readFileSync(path.join(OFFICIAL, 'txt_db/expected_records.json'), 'utf8')) as Record<string, { input_ids: number[] }>;
  const empties = Object.keys(expected).filter((id) => expected[id].input_ids.length === 0);
  assert.deepEqual(r.problems.map((p) => [p.kind, p.record]), empties.map((id) => ['empty caption', id]));
  const text = formatInspectReport(r);
  assert.match(text, /txt_db .*tiny\.db: 400 examples/);
  assert.match(text, /img_db .*coco_tiny \[feat_th0\.2_max100_min10\]: 3 images, feature width 64, 17 soft labels, regions 10\.\.100/);
  assert.match(text, /\n +10-19 \| #+ +2\n/);
  assert.match(text, /empty caption: \d+/);
});

test('inspect: finds missing images, NaN features and wrong widths, naming the records', () => {
  const root = tmpDir();
  try {
    const good = readBUTDNpz(path.join(NPZ_DIR, 'coco_tiny_a.npz'));
    const img = (fname: string, features: Float32Array) => ({ fname, features, normBb: good.normBb, conf: good.conf, numBoxes: good.numBoxes });
    writeImgDb(path.join(root, 'img_db/set'), [img('a.npz', good.features), img('b.npz', good.features)]);
    writeTxtDb(path.join(root, 'txt_db/set.db'), [
      { id: 't1', input_ids: [1188], img_fname: 'a.npz' },
      { id: 't2', input_ids: [1188], img_fname: 'gone.npz' },
      { id: 't3', input_ids: [], img_fname: 'b.npz' },
    ]);
    const r = inspectData(root);
    assert.deepEqual(
      r.problems.map((p) => [p.kind, p.record]),
      [
        ['missing image', 't2'],
        ['empty caption', 't3'],
      ],
    );
    assert.match(r.problems[0].detail, /image "gone\.npz" is in no img_db/);

    // A store someone else wrote, with mixed widths and NaN features (our writer refuses both).
    const bad = path.join(root, 'img_db/bad');
    fs.mkdirSync(path.join(bad, 'feat_th0.2_max100_min10'), { recursive: true });
    const w = new LmdbWriter(path.join(bad, 'feat_th0.2_max100_min10'));
    const good16 = LmdbReader.open(path.join(root, 'img_db/set/feat_th0.2_max100_min10'));
    w.put('ok.npz', good16.get('a.npz') as Uint8Array);
    good16.close();
    const writeOne = (name: string, width: number, value: number): void => {
      const tmp = path.join(root, `one-${name}`);
      writeImgDb(tmp, [img(name, new Float32Array(good.numBoxes * width).fill(1))]);
      const env = LmdbReader.open(path.join(tmp, 'feat_th0.2_max100_min10'));
      let raw = env.get(name) as Uint8Array;
      env.close();
      if (Number.isNaN(value)) {
        // Replace the first float16 of the features data (1.0 = 0x3c00) by NaN (0x7e00).
        const at = Buffer.from(raw).indexOf(Buffer.from([0x00, 0x3c, 0x00, 0x3c]));
        raw = Uint8Array.from(raw);
        raw[at + 1] = 0x7e;
      }
      w.put(name, raw);
    };
    writeOne('wide.npz', 32, 1);
    writeOne('nan.npz', 64, NaN);
    w.put('__keys__', Buffer.from(JSON.stringify(['ok.npz', 'wide.npz', 'nan.npz'])));
    w.finish();
    fs.writeFileSync(path.join(bad, 'nbb_th0.2_max100_min10.json'), JSON.stringify({ 'ok.npz': 11, 'wide.npz': 11, 'nan.npz': 11 }));
    const r2 = inspectData(bad);
    assert.deepEqual(
      r2.problems.map((p) => [p.kind, p.record]),
      [
        ['wrong width', 'wide.npz'],
        ['bad features', 'nan.npz'],
      ],
    );
    assert.match(formatInspectReport(r2), /2 problems found:\n {2}wrong width: 1\n {4}wide\.npz: .*width 32/);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

/** Run the `uniter data` command, capturing what it prints. */
const runCli = (args: string[]) => runCommand(command, args);

test('CLI: uniter data build / inspect, usage and errors', async () => {
  const root = tmpDir();
  try {
    const jsonl = path.join(root, 'set.jsonl');
    fs.writeFileSync(jsonl, LINES.slice(0, 4).map((l) => JSON.stringify(l)).join('\n'));
    const images = imagesFolder(root);
    const out = path.join(root, 'out');
    const b = await runCli(['build', '--jsonl', jsonl, '--images', images, '--out', out, '--name', 'demo', '--compress', '--min-bb', '5']);
    assert.equal(b.code, 0, b.err);
    assert.match(b.out, /txt_db .*demo\.db: 3 examples/);
    assert.match(b.out, /img_db .*demo: 3 images/);
    assert.match(b.out, /1 warning:\n {2}record "missing" \(line 4\) skipped/);
    assert.ok(fs.existsSync(path.join(out, 'img_db/demo/feat_th0.2_max100_min5_compressed/data.mdb')));
    const i = await runCli(['inspect', out]);
    assert.equal(i.code, 0, i.err);
    assert.match(i.out, /txt_db .*demo\.db: 3 examples/);
    assert.match(i.out, /no problems found/);
    assert.equal((await runCli(['build', '--jsonl', jsonl])).code, 2);
    assert.equal((await runCli(['build', '--jsonl', jsonl, '--images', images, '--out', out, '--max-bb', 'ten'])).code, 2);
    assert.equal((await runCli(['frobnicate'])).code, 2);
    const missing = await runCli(['inspect', path.join(root, 'nothing')]);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /nothing: no such file or directory/);
    const fatal = path.join(root, 'bad.jsonl');
    fs.writeFileSync(fatal, '{"text": "a"}');
    const f = await runCli(['build', '--jsonl', fatal, '--images', images, '--out', out]);
    assert.equal(f.code, 1);
    assert.match(f.err, /bad\.jsonl:1: record "1" has no 'image'/);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
