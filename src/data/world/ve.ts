/**
 * SNLI-VE from the world. Entailment: a true statement. Contradiction: a statement the image
 * refutes (an absent object, a wrong attribute, relation or count). Neutral: a statement about
 * something the image cannot show (an object's material, or an object hidden behind another)
 * about an object that IS there. The same undetermined templates about an object that is NOT
 * there are contradictions, so neutral cannot be read off the wording alone.
 */
import type { Rng } from '../../util/rng.js';
import { COLOURS, MATERIAL_ADJECTIVES, MATERIALS, SHAPES, SIZES, numberWord, type VeLabel } from './concepts.js';
import { generateCaptions } from './captions.js';
import {
  aNp,
  absentDescriptor,
  countMatching,
  indefinite,
  npWords,
  randomDescriptor,
  relationPhrase,
  renderReference,
  sentence,
  theNp,
  uniqueDescriptors,
  uniqueReferences,
  type Descriptor,
} from './language.js';
import { holds, RELATIONS, type Scene } from './scene.js';

export interface VeHypothesis {
  sentence: string;
  label: VeLabel;
}

type Maker = (rng: Rng, scene: Scene) => string | null;

const entailment: Maker = (rng, scene) => generateCaptions(rng, scene, 1)[0] ?? null;

/** Statements about something the image does not determine, about a present, unique object. */
const neutralAbout = (rng: Rng, name: string): string => {
  const u = rng.uniform();
  if (u < 0.4) return sentence(`${name} is made of ${rng.choice(MATERIALS)}`);
  if (u < 0.7) return sentence(`there is ${aNp({ shape: rng.int(SHAPES.length) })} hidden behind ${name}`);
  return sentence(`${name} is ${rng.choice(MATERIAL_ADJECTIVES)}`);
};

const neutral: Maker = (rng, scene) => {
  const o = rng.choice(scene.objects);
  const refs = uniqueReferences(scene, o);
  if (refs.length === 0) return null;
  return neutralAbout(rng, renderReference(rng, rng.choice(refs)));
};

const contradictionMakers: Maker[] = [
  // an object that is not there
  (rng, scene) => {
    const d = absentDescriptor(rng, scene, true, rng.uniform() < 0.3);
    return d ? sentence(`there is ${aNp(d)}`) : null;
  },
  // a wrong colour or size for a uniquely named object
  (rng, scene) => {
    const o = rng.choice(scene.objects);
    if (rng.uniform() < 0.6) {
      const d = uniqueDescriptors(scene, o, 'colour')[0];
      if (!d) return null;
      return sentence(`${theNp(d)} is ${rng.choice(COLOURS.filter((_, c) => c !== o.colour))}`);
    }
    const d = uniqueDescriptors(scene, o, 'size')[0];
    if (!d) return null;
    return sentence(`${theNp(d)} is ${SIZES[1 - o.size]}`);
  },
  // a relation that does not hold between two uniquely named objects
  (rng, scene) => {
    if (scene.objects.length < 2) return null;
    const a = rng.choice(scene.objects);
    const b = rng.choice(scene.objects.filter((x) => x !== a));
    const na = uniqueDescriptors(scene, a)[0];
    const nb = uniqueDescriptors(scene, b)[0];
    const wrong = RELATIONS.filter((r) => !holds(r, a.box, b.box, scene));
    if (!na || !nb || wrong.length === 0) return null;
    return sentence(`${theNp(na)} is ${relationPhrase(rng, rng.choice(wrong))} ${theNp(nb)}`);
  },
  // a wrong count
  (rng, scene) => {
    const shape = rng.choice(scene.objects).shape;
    const n = countMatching(scene, { shape });
    const claimed = n + (rng.uniform() < 0.5 && n > 2 ? -1 : 1);
    if (claimed < 2) return null;
    return sentence(`there are ${numberWord(claimed)} ${npWords({ shape }, true)}`);
  },
  // an undetermined property of an object that is not there
  (rng, scene) => {
    const d = absentDescriptor(rng, scene, true, false);
    if (!d) return null;
    return rng.uniform() < 0.5 ? neutralAbout(rng, theNp(d)) : sentence(`there is ${indefiniteMaterial(rng, d)}`);
  },
];

/** "a large red wooden cube" (English order: size, colour, material, noun). */
function indefiniteMaterial(rng: Rng, d: Descriptor): string {
  const words: string[] = [];
  if (d.size !== undefined) words.push(SIZES[d.size]);
  if (d.colour !== undefined) words.push(COLOURS[d.colour]);
  words.push(rng.choice(MATERIAL_ADJECTIVES), SHAPES[d.shape]);
  return indefinite(words.join(' '));
}

/** A present object with an undetermined material adjective: neutral. */
const neutralMaterialNp: Maker = (rng, scene) => sentence(`there is ${indefiniteMaterial(rng, randomDescriptor(rng, rng.choice(scene.objects)))}`);

const MAKERS: Record<VeLabel, Maker[]> = {
  entailment: [entailment],
  contradiction: contradictionMakers,
  neutral: [neutral, neutral, neutralMaterialNp],
};

/**
 * `n` hypotheses for a scene with labels cycling through a shuffled order of the three classes,
 * so the classes stay balanced (exactly, when n is a multiple of 3).
 */
export function generateVeHypotheses(rng: Rng, scene: Scene, n: number): VeHypothesis[] {
  const labels = rng.shuffle<VeLabel>(['contradiction', 'entailment', 'neutral']);
  const out: VeHypothesis[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    const label = labels[i % 3];
    for (let tries = 0; tries < 40; tries++) {
      const s = rng.choice(MAKERS[label])(rng, scene);
      if (s && !seen.has(s)) {
        seen.add(s);
        out.push({ sentence: s, label });
        break;
      }
    }
  }
  return out;
}
