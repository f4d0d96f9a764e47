import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { floatToHalf, halfToFloat } from '../../src/engine/host.js';
import { computeNbb, ImgDb } from '../../src/data/imgdb.js';
import { TxtDb } from '../../src/data/txtdb.js';
import { defaultTokenizer } from '../../src/data/tokenizer.js';
import {
  generateWorld,
  holds,
  readWorldManifest,
  resolveWorldOptions,
  writeWorld,
  WORLD_TXT_DBS,
  type Relation,
  type Scene,
  type SceneObject,
  type World,
} from '../../src/data/world.js';
import { command as worldCommand } from '../../src/cli/world.js';
import { ItmDataset, MlmDataset, MrcDataset, Nlvr2PairedDataset, ReDataset, VcrDataset, VeDataset, VqaDataset, type TaskDataset } from '../../src/data/datasets.js';
import { FEATURE_MEAN, toHalfPrecision } from '../../src/data/world/features.js';
import { Rng } from '../../src/util/rng.js';

// One tiny world shared by the read-only tests (generation is deterministic, so sharing is safe).
const world = generateWorld({ preset: 'tiny', seed: 7 });

const SHAPES = ['cube', 'sphere', 'cylinder', 'cone', 'pyramid', 'ring', 'star', 'disk'];
const PLURALS = ['cubes', 'spheres', 'cylinders', 'cones', 'pyramids', 'rings', 'stars', 'disks'];
const COLOURS = ['red', 'orange', 'yellow', 'green', 'blue', 'purple', 'white', 'black'];
const SIZES = ['small', 'large'];
const NUMBERS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten'];
const RELATION_WORDS: Record<string, Relation> = {
  'left of': 'left',
  'to the left of': 'left',
  'right of': 'right',
  'to the right of': 'right',
  above: 'above',
  below: 'below',
  under: 'below',
  'next to': 'near',
  beside: 'near',
};

// An independent reading of the world's grammar: noun phrases and relation phrases as regexes.
const NP = `(?:a|an|the) (?:(?:${SIZES.join('|')}) )?(?:(?:${COLOURS.join('|')}) )?(?:${SHAPES.join('|')})`;
const REL = Object.keys(RELATION_WORDS)
  .sort((a, b) => b.length - a.length)
  .join('|');

interface NounPhrase {
  shape: number;
  colour?: number;
  size?: number;
}

function parseNp(text: string): NounPhrase {
  const words = text.split(' ').slice(1);
  const np: NounPhrase = { shape: SHAPES.indexOf(words[words.length - 1]) };
  for (const w of words.slice(0, -1)) {
    if (SIZES.includes(w)) np.size = SIZES.indexOf(w);
    else if (COLOURS.includes(w)) np.colour = COLOURS.indexOf(w);
    else throw new Error(`unexpected word '${w}' in '${text}'`);
  }
  assert.ok(np.shape >= 0, `no shape in '${text}'`);
  return np;
}

function denotes(scene: Scene, np: NounPhrase): SceneObject[] {
  return scene.objects.filter((o) => o.shape === np.shape && (np.colour === undefined || o.colour === np.colour) && (np.size === undefined || o.size === np.size));
}

function sceneOf(w: World, imageId: number): Scene {
  const s = w.scenes.find((x) => x.imageId === imageId);
  assert.ok(s, `no scene ${imageId}`);
  return s;
}

function related(scene: Scene, a: NounPhrase, rel: string, b: NounPhrase): boolean {
  const r = RELATION_WORDS[rel];
  return denotes(scene, a).some((x) => denotes(scene, b).some((y) => x !== y && holds(r, x.box, y.box, scene)));
}

/** Checks one caption against its scene; returns false if the grammar was not recognised. */
function checkCaption(scene: Scene, cap: string): boolean {
  const np = new RegExp(NP, 'g');
  let m: RegExpMatchArray | null;
  // Every noun phrase names something present.
  for (const hit of cap.match(np) ?? []) assert.ok(denotes(scene, parseNp(hit)).length > 0, `'${cap}': nothing in image ${scene.imageId} is '${hit}'`);
  if ((m = cap.match(new RegExp(`^(${NP}) is (${REL}) (${NP}) \\.$`)))) {
    assert.ok(related(scene, parseNp(m[1]), m[2], parseNp(m[3])), `'${cap}' is false for image ${scene.imageId}`);
    return true;
  }
  if ((m = cap.match(new RegExp(`^(${NP}) is (${REL}) (${NP}) and (${NP}) is (${REL}) it \\.$`)))) {
    assert.ok(related(scene, parseNp(m[1]), m[2], parseNp(m[3])), `'${cap}' (first clause) is false`);
    assert.ok(related(scene, parseNp(m[4]), m[5], parseNp(m[3])), `'${cap}' (second clause) is false`);
    return true;
  }
  if ((m = cap.match(new RegExp(`^there are (\\w+) (${PLURALS.join('|')}|objects) \\.$`)))) {
    const n = NUMBERS.indexOf(m[1]);
    const count = m[2] === 'objects' ? scene.objects.length : scene.objects.filter((o) => o.shape === PLURALS.indexOf(m![2])).length;
    assert.equal(count, n, `'${cap}': image ${scene.imageId} has ${count}`);
    return true;
  }
  if ((m = cap.match(new RegExp(`^(${NP}) is (${[...COLOURS, ...SIZES].join('|')}) \\.$`)))) {
    const hits = denotes(scene, parseNp(m[1]));
    assert.equal(hits.length, 1, `'${cap}': '${m[1]}' should name one object`);
    const o = hits[0];
    assert.ok(COLOURS[o.colour] === m[2] || SIZES[o.size] === m[2], `'${cap}' is false for image ${scene.imageId}`);
    return true;
  }
  return new RegExp(`^(there is )?${NP}( , ${NP})*( and ${NP}) \\.$`).test(cap);
}

test('world generation is deterministic: same seed, same world; another seed, another world', () => {
  const again = generateWorld({ preset: 'tiny', seed: 7 });
  assert.deepEqual(again.scenes, world.scenes);
  for (const name of ['pretrain_world_train', 'vqa_world_val', 'nlvr2_world_train', 're_world_test', 'vcr_world_train']) {
    const a = world.textDb(name);
    const b = again.textDb(name);
    assert.deepEqual(b.ids(), a.ids());
    for (const id of a.ids()) assert.deepEqual(b.get(id), a.get(id));
  }
  for (const fname of world.images.keys().slice(0, 5)) {
    const x = world.images.get(fname);
    const y = again.images.detections(fname);
    assert.deepEqual(y.features.subarray(0, x.features.length), x.features);
    assert.deepEqual(y.softLabels.subarray(0, x.softLabels!.length), x.softLabels);
  }
  const other = generateWorld({ preset: 'tiny', seed: 8 });
  assert.notDeepEqual(other.scenes, world.scenes);
  const f = world.images.keys()[0];
  assert.notDeepEqual(other.images.get(f).features, world.images.get(f).features);
});

test('fast float16 rounding agrees with the reference conversion', () => {
  const rng = new Rng(11);
  const edge = [0, -0, 1, -1, 2 ** -14, 2 ** -14 * (1 - 2 ** -11), 2 ** -24, 3 * 2 ** -26, 65504, 65519.9, 65520, 1e9, 0.2, 1 / 3, 2049, 2051, NaN];
  const values = [...edge, ...Array.from({ length: 20000 }, () => (rng.uniform() - 0.5) * 10 ** rng.int(-9, 6))];
  for (const v of values) assert.ok(Object.is(toHalfPrecision(v), halfToFloat(floatToHalf(v))), `toHalfPrecision(${v})`);
});

test('every text of every task is tokenized without [UNK] and fits max_txt_len 60', () => {
  for (const [name, db] of world.textDbs) {
    for (const id of db.ids()) {
      const rec = db.get(id);
      const lists = [rec.input_ids, ...((rec.input_ids_as as number[][] | undefined) ?? []), ...((rec.input_ids_rs as number[][] | undefined) ?? [])];
      for (const ids of lists) {
        assert.ok(ids.length > 0 && ids.length <= 60, `${name}/${id}: ${ids.length} wordpieces`);
        assert.ok(!ids.includes(100), `${name}/${id} has [UNK]`);
      }
      assert.equal(db.len(id), rec.input_ids.length);
    }
  }
});

test('options: presets resolve, bad values are refused with the option named', () => {
  const o = resolveWorldOptions({ preset: 'tiny', numImages: 20 });
  assert.equal(o.numImages, 20);
  assert.equal(o.imgDim, 2048);
  assert.equal(o.labelDim, 1601);
  assert.throws(() => resolveWorldOptions({ numImages: 3 }), /numImages/);
  assert.throws(() => resolveWorldOptions({ maxObjects: 2, minObjects: 3 }), /maxObjects/);
  assert.throws(() => resolveWorldOptions({ labelDim: 17 }), /labelDim/);
  assert.throws(() => resolveWorldOptions({ preset: 'huge' as 'tiny' }), /unknown preset 'huge'/);
});

test('splits are disjoint and pre-training val images are not trained on', () => {
  const ids = (s: readonly Scene[]) => new Set(s.map((x) => x.imageId));
  const [tr, va, te] = [ids(world.splits.train), ids(world.splits.val), ids(world.splits.test)];
  assert.equal(tr.size + va.size + te.size, world.scenes.length);
  for (const i of va) assert.ok(!tr.has(i) && !te.has(i));
  for (const i of te) assert.ok(!tr.has(i));
  const trainImgs = new Set(Object.keys(world.textDb('pretrain_world_train').img2txts));
  for (const f of Object.keys(world.textDb('pretrain_world_val').img2txts)) assert.ok(!trainImgs.has(f), `${f} is in both pre-training splits`);
  for (const db of ['vqa_world_val', 've_world_test', 're_world_val']) {
    for (const f of Object.keys(world.textDb(db).img2txts)) assert.ok(!trainImgs.has(f.replace('world_gt_', 'world_')), `${db} uses training image ${f}`);
  }
});

test('region features look like a detector: 2048-d, non-negative, float16-exact, 10..36 regions', () => {
  let zeros = 0;
  let total = 0;
  const fp16 = (v: number) => halfToFloat(floatToHalf(v)) === v;
  for (const name of ['world', 'world_det']) {
    const store = world.imageStore(name);
    assert.equal(store.imgDim, 2048);
    assert.equal(store.labelDim, 1601);
    const counts = new Set<number>();
    for (const fname of store.keys()) {
      const all = store.detections(fname);
      const rec = store.get(fname);
      assert.equal(rec.nbb, computeNbb(all.conf, 0.2, 10, 100), `${name}/${fname}: nbb must follow the official rule`);
      assert.ok(rec.nbb >= 10 && rec.nbb <= 36, `${name}/${fname}: ${rec.nbb} regions`);
      assert.ok(all.numBoxes >= rec.nbb && all.numBoxes <= 36);
      counts.add(rec.nbb);
      assert.equal(rec.features.length, rec.nbb * 2048);
      for (const v of rec.features) {
        assert.ok(v >= 0 && fp16(v));
        if (v === 0) zeros++;
        total++;
      }
      for (const v of rec.normBb) assert.ok(v >= 0 && v <= 1 && fp16(v));
      for (const v of all.conf) assert.ok(fp16(v));
      // confidence sorted descending, as the official extractor stores boxes
      for (let i = 1; i < all.numBoxes; i++) assert.ok(all.conf[i] <= all.conf[i - 1]);
      // box columns are consistent: w = x2 - x1, h = y2 - y1 (up to float16 rounding)
      for (let r = 0; r < rec.nbb; r++) {
        const b = rec.normBb.subarray(r * 6, r * 6 + 6);
        assert.ok(Math.abs(b[2] - b[0] - b[4]) < 2e-3 && Math.abs(b[3] - b[1] - b[5]) < 2e-3, `${fname} row ${r}: ${[...b]}`);
      }
    }
    assert.ok(counts.size >= 5, `${name}: region counts should vary, got ${[...counts]}`);
    // the 10-box minimum is exercised: some images keep low-confidence rows
    assert.ok(store.keys().some((f) => store.detections(f).conf.filter((c) => c > 0.2).length < 10));
  }
  const sparsity = zeros / total;
  assert.ok(sparsity > 0.3 && sparsity < 0.7, `fraction of zero features ${sparsity}`);
  // ground-truth store: exactly the annotated objects, in annotation order
  const gt = world.imageStore('world_gt');
  for (const sc of world.scenes.slice(0, 10)) {
    const fname = world.imageName('gt', sc.imageId);
    assert.equal(gt.nbb(fname), sc.objects.length);
    const rec = gt.get(fname);
    sc.objects.forEach((o, r) => {
      assert.ok(Math.abs(rec.normBb[r * 6] - o.box.x1 / sc.width) < 1e-3);
      assert.ok(Math.abs(rec.normBb[r * 6 + 3] - o.box.y2 / sc.height) < 1e-3);
    });
  }
});

test('features carry shape and colour: same kind of object is closer than a different kind', () => {
  const cos = (a: Float32Array, b: Float32Array) => {
    let d = 0;
    let na = 0;
    let nb = 0;
    for (let i = 0; i < a.length; i++) {
      d += a[i] * b[i];
      na += a[i] * a[i];
      nb += b[i] * b[i];
    }
    return d / Math.sqrt(na * nb);
  };
  const gt = world.imageStore('world_gt');
  const rows: Array<{ kind: number; f: Float32Array }> = [];
  for (const sc of world.scenes.slice(0, 30)) {
    const rec = gt.get(world.imageName('gt', sc.imageId));
    sc.objects.forEach((o, r) => rows.push({ kind: o.shape * 8 + o.colour, f: rec.features.subarray(r * 2048, (r + 1) * 2048) }));
  }
  let same = 0;
  let nSame = 0;
  let diff = 0;
  let nDiff = 0;
  for (let i = 0; i < rows.length; i++) {
    for (let j = i + 1; j < rows.length; j++) {
      const c = cos(rows[i].f, rows[j].f);
      if (rows[i].kind === rows[j].kind) {
        same += c;
        nSame++;
      } else {
        diff += c;
        nDiff++;
      }
    }
  }
  assert.ok(nSame > 0);
  assert.ok(same / nSame > diff / nDiff + 0.2, `same kind ${same / nSame} vs different ${diff / nDiff}`);
});

test('soft labels: a distribution over 1601 classes peaked on the region class', () => {
  const store = world.images;
  let checked = 0;
  for (const fname of store.keys().slice(0, 20)) {
    const rec = store.get(fname);
    const layout = store.layout(fname);
    for (let r = 0; r < rec.nbb; r++) {
      const p = rec.softLabels!.subarray(r * 1601, (r + 1) * 1601);
      let sum = 0;
      let arg = 0;
      for (let k = 0; k < p.length; k++) {
        assert.ok(p[k] > 0 && halfToFloat(floatToHalf(p[k])) === p[k]);
        sum += p[k];
        if (p[k] > p[arg]) arg = k;
      }
      assert.ok(Math.abs(sum - 1) < 3e-3, `${fname} row ${r}: soft labels sum to ${sum}`);
      const region = layout.regions[r];
      if (region.kind === 'object' || region.kind === 'part') {
        const o = layout.scene.objects[region.object];
        assert.equal(arg, 1 + o.shape * 8 + o.colour, `${fname} row ${r}: peak on class ${arg}`);
        checked++;
      } else if (region.kind === 'junk') {
        assert.equal(arg, 0, `${fname} row ${r}: junk must be background-dominant`);
      } else {
        assert.ok(arg > 64, `${fname} row ${r}: stuff region peaks on a stuff class`);
      }
    }
  }
  assert.ok(checked > 50);
});

test('captions are distinct, tokenized, and say only what is true of their image', () => {
  const tok = defaultTokenizer();
  let parsed = 0;
  for (const split of ['pretrain_world_train', 'itm_world_test']) {
    const db = world.textDb(split);
    for (const id of db.ids()) {
      const rec = db.get(id);
      const cap = rec.caption as string;
      assert.deepEqual(rec.input_ids, tok.encode(cap));
      assert.ok(!rec.input_ids.includes(100), `'${cap}' has [UNK]`);
      const scene = sceneOf(world, rec.image_id as number);
      assert.equal(rec.img_fname, world.imageName('main', scene.imageId));
      if (checkCaption(scene, cap)) parsed++;
      else assert.fail(`caption outside the grammar: '${cap}'`);
    }
    for (const [img, ids] of Object.entries(db.img2txts)) {
      const caps = ids.map((i) => db.get(i).caption);
      assert.equal(new Set(caps).size, caps.length, `${img} has repeated captions`);
      assert.equal(caps.length, world.options.captionsPerImage);
    }
  }
  assert.ok(parsed > 100);
});

test('referring expressions each pick out exactly their object; side files follow the official layout', () => {
  for (const name of WORLD_TXT_DBS.re) {
    const db = world.textDb(name);
    const images = db.sideFiles['images.json'] as Array<{ id: number; ann_ids: number[]; width: number; height: number; file_name: string }>;
    const anns = new Map((db.sideFiles['annotations.json'] as Array<{ id: number; bbox: number[]; image_id: number }>).map((a) => [a.id, a]));
    const refs = db.sideFiles['refs.json'] as Array<{ ref_id: number; sent_ids: number[]; ann_id: number }>;
    assert.ok(Array.isArray(db.sideFiles['categories.json']));
    const byImage = new Map(images.map((i) => [i.id, i]));
    assert.equal(refs.reduce((a, r) => a + r.sent_ids.length, 0), db.size);
    for (const id of db.ids()) {
      const rec = db.get(id);
      const scene = sceneOf(world, rec.image_id as number);
      const sent = rec.sent as string;
      const m = sent.match(new RegExp(`^(${NP})(?: (${REL}) (${NP}))?$`));
      assert.ok(m, `expression outside the grammar: '${sent}'`);
      let hits = denotes(scene, parseNp(m[1]));
      if (m[2]) {
        const anchors = denotes(scene, parseNp(m[3]));
        assert.equal(anchors.length, 1, `'${sent}': the anchor must be unique`);
        hits = hits.filter((o) => o !== anchors[0] && holds(RELATION_WORDS[m[2]], o.box, anchors[0].box, scene));
      }
      assert.equal(hits.length, 1, `'${sent}' matches ${hits.length} objects in image ${scene.imageId}`);
      assert.equal(hits[0].annId, rec.ann_id);
      const info = byImage.get(scene.imageId)!;
      assert.ok(info.ann_ids.includes(rec.ann_id as number));
      assert.equal(info.ann_ids.length, world.imageStore('world_gt').nbb(rec.img_fname as string));
      assert.deepEqual(anns.get(rec.ann_id as number)!.bbox, rec.bbox);
      const [x, y, w, h] = rec.bbox as number[];
      assert.deepEqual([x, y, x + w, y + h], [hits[0].box.x1, hits[0].box.y1, hits[0].box.x2, hits[0].box.y2]);
    }
  }
});

test('VQA: answers in ans2label, soft scores min(1, votes/3), answers true of the image', () => {
  const nAnswers = Object.keys(world.ans2label).length;
  for (const name of WORLD_TXT_DBS.vqa) {
    const db = world.textDb(name);
    assert.ok(db.size > 0);
    for (const id of db.ids()) {
      const rec = db.get(id);
      const answers = rec.answers as string[];
      assert.equal(answers.length, 10);
      for (const a of answers) assert.ok(a in world.ans2label, `answer '${a}' not in ans2label`);
      const t = rec.target as { labels: number[]; scores: number[] };
      assert.equal(new Set(t.labels).size, t.labels.length);
      t.labels.forEach((l, k) => {
        assert.ok(Number.isInteger(l) && l >= 0 && l < nAnswers);
        const votes = answers.filter((a) => world.ans2label[a] === l).length;
        assert.equal(t.scores[k], Math.min(1, votes / 3));
      });
      // check count and existence answers against the scene
      const scene = sceneOf(world, rec.image_id as number);
      const q = rec.question as string;
      const majority = [...new Set(answers)].sort((a, b) => answers.filter((x) => x === b).length - answers.filter((x) => x === a).length)[0];
      let m: RegExpMatchArray | null;
      if ((m = q.match(new RegExp(`^how many (${PLURALS.join('|')}) are there \\?$`)))) {
        const truth = String(scene.objects.filter((o) => o.shape === PLURALS.indexOf(m![1])).length);
        assert.ok(t.labels.includes(world.ans2label[truth]), `'${q}': true answer ${truth} has no score`);
      } else if ((m = q.match(new RegExp(`^is there (${NP}) \\?$`)))) {
        const truth = denotes(scene, parseNp(m[1])).length > 0 ? 'yes' : 'no';
        assert.ok(t.labels.includes(world.ans2label[truth]));
        void majority;
      }
    }
  }
  // yes and no both occur
  const all = world.textDb('vqa_world_train').ids().map((i) => world.textDb('vqa_world_train').get(i));
  const yn = all.filter((r) => r.answer_type === 'yes/no');
  assert.ok(yn.length > 10);
  const yes = yn.filter((r) => (r.answers as string[]).filter((a) => a === 'yes').length > 5).length;
  assert.ok(yes / yn.length > 0.3 && yes / yn.length < 0.7, `yes fraction ${yes / yn.length}`);
});

test('SNLI-VE and NLVR2 labels are balanced; NLVR2 pairs two distinct images', () => {
  for (const name of WORLD_TXT_DBS.ve) {
    const db = world.textDb(name);
    const n = [0, 0, 0];
    for (const id of db.ids()) {
      const t = db.get(id).target as { labels: number[]; scores: number[] };
      assert.equal(t.labels.length, 1);
      assert.deepEqual(t.scores, [1]);
      n[t.labels[0]]++;
    }
    for (const c of n) assert.ok(c / db.size > 0.25 && c / db.size < 0.42, `${name}: label counts ${n}`);
  }
  // a neutral hypothesis never states a checkable falsehood: its noun phrases exist
  const ve = world.textDb('ve_world_train');
  for (const id of ve.ids()) {
    const rec = ve.get(id);
    if (rec.gold_label !== 'neutral') continue;
    const scene = sceneOf(world, rec.image_id as number);
    const first = (rec.sentence as string).match(new RegExp(`(${NP})(?: (${REL}) (${NP}))? (is|\\.)`));
    if (first && !first[2]) assert.ok(denotes(scene, parseNp(first[1])).length > 0, `neutral '${rec.sentence}' names an absent object`);
  }
  for (const name of WORLD_TXT_DBS.nlvr2) {
    const db = world.textDb(name);
    let pos = 0;
    for (const id of db.ids()) {
      const rec = db.get(id);
      const f = rec.img_fname as string[];
      assert.equal(f.length, 2);
      assert.notEqual(f[0], f[1]);
      assert.ok(world.images.has(f[0]) && world.images.has(f[1]));
      assert.match(rec.identifier as string, new RegExp(`^${name.split('_').pop()}-\\d+-\\d+-0$`));
      assert.equal(rec.label, rec.target === 1 ? 'True' : 'False');
      pos += rec.target as number;
    }
    assert.ok(db.size >= 8);
    assert.ok(pos / db.size >= 0.4 && pos / db.size <= 0.6, `${name}: ${pos}/${db.size} true`);
  }
  // "more X than" statements are checked against both scenes
  const nl = world.textDb('nlvr2_world_train');
  for (const id of nl.ids()) {
    const rec = nl.get(id);
    const m = (rec.sentence as string).match(new RegExp(`^the (left|right) image has more (${PLURALS.join('|')}) than the (left|right) image \\.$`));
    if (!m) continue;
    const [l, r] = (rec.image_ids as number[]).map((i) => sceneOf(world, i));
    const count = (s: Scene) => s.objects.filter((o) => o.shape === PLURALS.indexOf(m[2])).length;
    const truth = m[1] === 'left' ? count(l) > count(r) : count(r) > count(l);
    assert.equal(rec.target, truth ? 1 : 0, `'${rec.sentence}'`);
  }
});

test('VCR items: 4 answers and 4 rationales, targets in range, (gt, det) image pair', () => {
  for (const name of WORLD_TXT_DBS.vcr) {
    const db = world.textDb(name);
    assert.ok(db.size > 0);
    const qa = db.sideFiles['id2len_qa.json'] as Record<string, number>;
    const qar = db.sideFiles['id2len_qar.json'] as Record<string, number>;
    for (const id of db.ids()) {
      const rec = db.get(id);
      const as = rec.input_ids_as as number[][];
      const rs = rec.input_ids_rs as number[][];
      assert.equal(as.length, 4);
      assert.equal(rs.length, 4);
      assert.equal(new Set(rec.answer_choices as string[]).size, 4);
      assert.equal(new Set(rec.rationale_choices as string[]).size, 4);
      const a = rec.qa_target as number;
      const r = rec.qar_target as number;
      assert.ok(a >= 0 && a < 4 && r >= 0 && r < 4);
      const [gt, det] = rec.img_fname as string[];
      assert.ok(world.imageStore('world_gt').has(gt) && world.images.has(det));
      assert.equal(qa[id], rec.input_ids.length + Math.max(...as.map((x) => x.length)));
      assert.equal(qar[id], rec.input_ids.length + as[a].length + Math.max(...rs.map((x) => x.length)));
      assert.equal(db.withLengths('id2len_qar.json').len(id), qar[id]);
    }
  }
});

test('world records and images feed the task datasets and collate into batches', () => {
  const rng = new Rng(5);
  const batchOf = <E>(ds: TaskDataset<E>) => {
    assert.ok(ds.ids.length >= 4, `${ds.task}: ${ds.ids.length} examples`);
    assert.equal(ds.lens().length, ds.ids.length);
    const batch = ds.collate([0, 1, 2, 3].map((i) => ds.get(i, rng)));
    assert.ok(batch.has('input_ids') && batch.has('img_feat') && batch.has('gather_index'), ds.task);
    return batch;
  };
  const img = world.images;
  batchOf(new MlmDataset(world.textDb('pretrain_world_train'), img));
  batchOf(new MrcDataset(world.textDb('pretrain_world_train'), img));
  const itm = new ItmDataset(world.textDb('pretrain_world_train'), img, { ot: true });
  itm.newEpoch?.(rng);
  batchOf(itm);
  const nAnswers = Object.keys(world.ans2label).length;
  assert.equal(batchOf(new VqaDataset(world.textDb('vqa_world_train'), img, { numAnswers: nAnswers })).get('targets')!.shape[1], nAnswers);
  batchOf(new VeDataset(world.textDb('ve_world_val'), img));
  batchOf(new Nlvr2PairedDataset(world.textDb('nlvr2_world_train'), img));
  const re = world.textDb('re_world_train');
  const images = new Map((re.sideFiles['images.json'] as Array<{ id: number; ann_ids: number[] }>).map((i) => [i.id, i]));
  batchOf(new ReDataset(re, world.imageStore('world_gt'), { images, boxes: 'gt', imgFname: (id) => world.imageName('gt', id) }));
  batchOf(new ReDataset(re, world.imageStore('world_det'), { images, boxes: 'det', imgFname: (id) => world.imageName('det', id) }));
  const vcr = world.textDb('vcr_world_train');
  batchOf(new VcrDataset(vcr.withLengths('id2len_qar.json'), { gt: world.imageStore('world_gt'), det: img }, { task: 'qar' }));
});

for (const variant of [{}, { clutter: false, centreFeatures: true, minObjects: 2, maxObjects: 4 }]) test(`writeWorld stores official img_db/txt_db folders that read back identically ${JSON.stringify(variant)}`, () => {
  const small = generateWorld({ preset: 'tiny', seed: 3, numImages: 16, captionsPerImage: 2, ...variant });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-world-'));
  try {
    const out = path.join(dir, 'world');
    const manifest = writeWorld(small, out);
    const again = readWorldManifest(out);
    assert.deepEqual(again.counts, small.counts());
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(out, 'ans2label.json'), 'utf8')), small.ans2label);
    for (const f of manifest.files) assert.ok(fs.existsSync(path.join(out, f)), `missing ${f}`);
    for (const [name, info] of Object.entries(manifest.imgDbs)) {
      const db = ImgDb.open(path.join(out, info.dir), info);
      try {
        const store = small.imageStore(name);
        assert.deepEqual(db.keys().sort(), store.keys().sort());
        for (const fname of store.keys().slice(0, 6)) {
          const a = store.get(fname);
          const b = db.getDump(fname);
          assert.equal(b.nbb, a.nbb);
          assert.deepEqual(b.features, a.features);
          assert.deepEqual(b.normBb, a.normBb);
          assert.deepEqual(b.softLabels, a.softLabels);
          assert.deepEqual(b.conf, a.conf);
          if (!store.profile.fixedCount) assert.equal(db.nbb(fname), store.nbb(fname));
        }
      } finally {
        db.close();
      }
    }
    for (const [name, info] of Object.entries(manifest.txtDbs)) {
      const db = TxtDb.open(path.join(out, info.dir));
      try {
        const mem = small.textDb(name);
        assert.deepEqual(db.ids(), mem.ids());
        for (const id of mem.ids()) {
          assert.deepEqual(db.get(id), mem.get(id));
          assert.equal(db.len(id), mem.len(id));
          assert.deepEqual(db.txt2img(id), mem.txt2img[id]);
        }
        for (const f of info.sideFiles) assert.deepEqual(JSON.parse(fs.readFileSync(path.join(out, info.dir, f), 'utf8')), mem.sideFiles[f]);
        assert.equal(db.meta.bert, 'bert-base-cased');
      } finally {
        db.close();
      }
    }
    // a directory that is not a world is never replaced
    const foreign = path.join(dir, 'foreign');
    fs.mkdirSync(foreign);
    fs.writeFileSync(path.join(foreign, 'keep.txt'), 'x');
    assert.throws(() => writeWorld(small, foreign), /refusing to replace/);
    assert.ok(fs.existsSync(path.join(foreign, 'keep.txt')));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('uniter world writes a world and reports its counts', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-world-cli-'));
  const log = console.log;
  const lines: string[] = [];
  console.log = (...a: unknown[]) => lines.push(a.join(' '));
  try {
    const rc = await worldCommand.run(['--out', path.join(dir, 'w'), '--preset', 'tiny', '--images', '12', '--seed', '5', '--json']);
    assert.equal(rc, 0);
    const report = JSON.parse(lines.join('\n')) as { seed: number; counts: { images: Record<string, number> } };
    assert.equal(report.seed, 5);
    assert.equal(report.counts.images.train + report.counts.images.val + report.counts.images.test, 12);
    assert.equal(readWorldManifest(path.join(dir, 'w')).options.numImages, 12);
    assert.equal(await worldCommand.run(['--preset', 'tiny']), 2);
  } finally {
    console.log = log;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('clutter off keeps only the objects’ regions; centred features are the plain ones shifted by the mean', () => {
  const plain = generateWorld({ preset: 'tiny', numImages: 12, minObjects: 2, maxObjects: 4, clutter: false });
  const centred = generateWorld({ preset: 'tiny', numImages: 12, minObjects: 2, maxObjects: 4, clutter: false, centreFeatures: true });
  const store = plain.imageStore('world');
  for (const fname of store.keys()) {
    const layout = store.layout(fname);
    assert.ok(layout.regions.every((r) => r.kind === 'object'), `${fname}: only object regions`);
    assert.equal(store.nbb(fname), layout.scene.objects.length);
    const a = store.get(fname).features;
    const b = centred.imageStore('world').get(fname).features;
    assert.equal(a.length, b.length);
    // Both are float16 roundings of the same value (shifted or not): equal up to float16 precision.
    for (let i = 0; i < a.length; i++) {
      assert.equal(b[i], toHalfPrecision(b[i]));
      assert.ok(Math.abs(b[i] - (a[i] - FEATURE_MEAN)) <= 2 ** -10 * (Math.abs(a[i]) + 1), `${fname} value ${i}: ${b[i]} vs ${a[i]} - ${FEATURE_MEAN}`);
    }
  }
  // centred features are roughly zero-mean
  let sum = 0;
  let n = 0;
  for (const fname of centred.imageStore('world').keys()) for (const v of centred.imageStore('world').get(fname).features) (sum += v), n++;
  assert.ok(Math.abs(sum / n) < 0.15, `mean ${sum / n}`);
  assert.throws(() => generateWorld({ preset: 'tiny', clutter: 'no' as unknown as boolean }), /world options: clutter must be true or false, got "no"/);
});
