/**
 * NLVR2 from the world: a statement about a PAIR of images (left, right) that is true or false
 * by counting and checking objects in both scenes. Statement parameters are taken from a seed
 * scene, so each statement is plausible; the pairs it is paired with are then chosen so that
 * each statement is true for some pairs and false for as many others (balanced labels).
 */
import type { Rng } from '../../util/rng.js';
import { COLOURS, SHAPES, numberWord } from './concepts.js';
import { aNp, countMatching, matching, npWords, randomDescriptor, relationPhrase, sentence, type Descriptor } from './language.js';
import { holds, relationsBetween, type Relation, type Scene } from './scene.js';

export interface PairStatement {
  sentence: string;
  /** Truth of the statement for the pair (left, right). */
  truth(left: Scene, right: Scene): boolean;
}

const side = (s: 'left' | 'right', l: Scene, r: Scene) => (s === 'left' ? l : r);
const other = (s: 'left' | 'right') => (s === 'left' ? 'right' : 'left');

const colourCount = (scene: Scene, colour: number) => scene.objects.filter((o) => o.colour === colour).length;

function containsRelation(scene: Scene, a: Descriptor, r: Relation, b: Descriptor): boolean {
  const bs = matching(scene, b);
  return matching(scene, a).some((x) => bs.some((y) => x !== y && holds(r, x.box, y.box, scene)));
}

type StatementMaker = (rng: Rng, seed: Scene) => PairStatement | null;

const MAKERS: StatementMaker[] = [
  // "the left image has more cubes than the right image ."
  (rng, seed) => {
    const shape = rng.choice(seed.objects).shape;
    const s = rng.uniform() < 0.5 ? 'left' : 'right';
    return {
      sentence: sentence(`the ${s} image has more ${npWords({ shape }, true)} than the ${other(s)} image`),
      truth: (l, r) => countMatching(side(s, l, r), { shape }) > countMatching(side(other(s), l, r), { shape }),
    };
  },
  // "the right image has more red objects than the left image ."
  (rng, seed) => {
    const colour = rng.choice(seed.objects).colour;
    const s = rng.uniform() < 0.5 ? 'left' : 'right';
    return {
      sentence: sentence(`the ${s} image has more ${COLOURS[colour]} objects than the ${other(s)} image`),
      truth: (l, r) => colourCount(side(s, l, r), colour) > colourCount(side(other(s), l, r), colour),
    };
  },
  // "both images contain a red cube ."
  (rng, seed) => {
    const d = randomDescriptor(rng, rng.choice(seed.objects), 0.6);
    return { sentence: sentence(`both images contain ${aNp(d)}`), truth: (l, r) => countMatching(l, d) > 0 && countMatching(r, d) > 0 };
  },
  // "exactly one image contains a blue sphere ."
  (rng, seed) => {
    const d = randomDescriptor(rng, rng.choice(seed.objects), 0.6);
    return { sentence: sentence(`exactly one image contains ${aNp(d)}`), truth: (l, r) => (countMatching(l, d) > 0) !== (countMatching(r, d) > 0) };
  },
  // "neither image contains a green cone ."
  (rng) => {
    const d: Descriptor = { shape: rng.int(SHAPES.length), colour: rng.int(COLOURS.length) };
    return { sentence: sentence(`neither image contains ${aNp(d)}`), truth: (l, r) => countMatching(l, d) === 0 && countMatching(r, d) === 0 };
  },
  // "the left image contains exactly two spheres ."
  (rng, seed) => {
    const shape = rng.choice(seed.objects).shape;
    const n = Math.max(1, countMatching(seed, { shape }));
    const s = rng.uniform() < 0.5 ? 'left' : 'right';
    const noun = n === 1 ? npWords({ shape }) : npWords({ shape }, true);
    return { sentence: sentence(`the ${s} image contains exactly ${numberWord(n)} ${noun}`), truth: (l, r) => countMatching(side(s, l, r), { shape }) === n };
  },
  // "there are exactly three red objects in total ."
  (rng, seed) => {
    const colour = rng.choice(seed.objects).colour;
    const n = Math.max(2, colourCount(seed, colour) + rng.int(0, 3));
    return {
      sentence: sentence(`there are exactly ${numberWord(n)} ${COLOURS[colour]} objects in total`),
      truth: (l, r) => colourCount(l, colour) + colourCount(r, colour) === n,
    };
  },
  // "the left image contains a red cube left of a blue sphere ."
  (rng, seed) => {
    if (seed.objects.length < 2) return null;
    const a = rng.choice(seed.objects);
    const b = rng.choice(seed.objects.filter((o) => o !== a));
    const rels = relationsBetween(seed, a, b);
    if (rels.length === 0) return null;
    const rel = rng.choice(rels);
    const da = randomDescriptor(rng, a, 0.6);
    const db = randomDescriptor(rng, b, 0.6);
    const s = rng.uniform() < 0.5 ? 'left' : 'right';
    return {
      sentence: sentence(`the ${s} image contains ${aNp(da)} ${relationPhrase(rng, rel)} ${aNp(db)}`),
      truth: (l, r) => containsRelation(side(s, l, r), da, rel, db),
    };
  },
];

export function makePairStatement(rng: Rng, seed: Scene): PairStatement | null {
  return rng.choice(MAKERS)(rng, seed);
}
