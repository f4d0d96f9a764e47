/**
 * Captions for pre-training and retrieval: several different true descriptions per image, each
 * mentioning objects by the attributes the region features carry, often with a relation.
 */
import type { Rng } from '../../util/rng.js';
import { COLOURS, SHAPES, SIZES, numberWord } from './concepts.js';
import { aNp, countMatching, npWords, randomDescriptor, relationPhrase, sentence, theNp, uniqueDescriptors } from './language.js';
import { relationsBetween, type Scene, type SceneObject } from './scene.js';

type CaptionTemplate = (rng: Rng, scene: Scene) => string | null;

function twoDistinct(rng: Rng, scene: Scene): [SceneObject, SceneObject] | null {
  if (scene.objects.length < 2) return null;
  const a = rng.choice(scene.objects);
  let b = rng.choice(scene.objects);
  while (b === a) b = rng.choice(scene.objects);
  return [a, b];
}

/** "a large red cube is left of a small blue sphere ." */
const relationCaption: CaptionTemplate = (rng, scene) => {
  const pair = twoDistinct(rng, scene);
  if (!pair) return null;
  const [a, b] = pair;
  const rels = relationsBetween(scene, a, b);
  if (rels.length === 0) return null;
  const r = rng.choice(rels);
  return sentence(`${aNp(randomDescriptor(rng, a, 0.8))} is ${relationPhrase(rng, r)} ${aNp(randomDescriptor(rng, b, 0.8))}`);
};

/** "a small green cone and a large white ring ." / "there is a red cube , a ... and a ... ." */
const listCaption: CaptionTemplate = (rng, scene) => {
  const n = Math.min(scene.objects.length, rng.int(2, 4));
  const picked = rng.shuffle([...scene.objects]).slice(0, n);
  const nps = picked.map((o) => aNp(randomDescriptor(rng, o, 0.85)));
  const list = nps.length === 2 ? `${nps[0]} and ${nps[1]}` : `${nps.slice(0, -1).join(' , ')} and ${nps[nps.length - 1]}`;
  return sentence(rng.uniform() < 0.5 ? `there is ${list}` : list);
};

/** "there are three cubes ." (only for counts of two or more, so the plural is right). */
const countCaption: CaptionTemplate = (rng, scene) => {
  const counts = SHAPES.map((_, s) => countMatching(scene, { shape: s })).map((c, s) => ({ c, s })).filter((x) => x.c >= 2);
  if (counts.length === 0) {
    return sentence(`there are ${numberWord(scene.objects.length)} objects`);
  }
  const { c, s } = rng.choice(counts);
  return sentence(`there are ${numberWord(c)} ${npWords({ shape: s }, true)}`);
};

/** "the cube is red ." / "the sphere is large ." for a uniquely named object. */
const attributeCaption: CaptionTemplate = (rng, scene) => {
  const o = rng.choice(scene.objects);
  if (rng.uniform() < 0.5) {
    const d = uniqueDescriptors(scene, o, 'colour')[0];
    if (!d) return null;
    return sentence(`${theNp(d)} is ${COLOURS[o.colour]}`);
  }
  const d = uniqueDescriptors(scene, o, 'size')[0];
  if (!d) return null;
  return sentence(`${theNp(d)} is ${SIZES[o.size]}`);
};

/** "a red cube is above a blue cone and a green ring is next to it ." */
const chainCaption: CaptionTemplate = (rng, scene) => {
  if (scene.objects.length < 3) return null;
  const [a, b, c] = rng.shuffle([...scene.objects]).slice(0, 3);
  const r1 = relationsBetween(scene, a, b);
  const r2 = relationsBetween(scene, c, b);
  if (r1.length === 0 || r2.length === 0) return null;
  return sentence(
    `${aNp(randomDescriptor(rng, a, 0.8))} is ${relationPhrase(rng, rng.choice(r1))} ${aNp(randomDescriptor(rng, b, 0.9))} and ${aNp(randomDescriptor(rng, c, 0.8))} is ${relationPhrase(rng, rng.choice(r2))} it`,
  );
};

const TEMPLATES: Array<{ weight: number; make: CaptionTemplate }> = [
  { weight: 4, make: relationCaption },
  { weight: 3, make: listCaption },
  { weight: 1, make: countCaption },
  { weight: 1, make: attributeCaption },
  { weight: 2, make: chainCaption },
];
const TOTAL_WEIGHT = TEMPLATES.reduce((a, t) => a + t.weight, 0);

/** `n` distinct captions of a scene (fewer only if the grammar runs out of distinct sentences). */
export function generateCaptions(rng: Rng, scene: Scene, n: number): string[] {
  const out = new Set<string>();
  for (let tries = 0; out.size < n && tries < n * 40; tries++) {
    let u = rng.uniform() * TOTAL_WEIGHT;
    let t = TEMPLATES[0];
    for (const c of TEMPLATES) {
      if (u < c.weight) {
        t = c;
        break;
      }
      u -= c.weight;
    }
    const cap = t.make(rng, scene);
    if (cap) out.add(cap);
  }
  return [...out];
}
