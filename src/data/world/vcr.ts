/**
 * VCR-style multiple choice from the world: a question, four answers (one right) and four
 * rationales (one right, given the right answer). Wrong answers are wrong about the image; wrong
 * rationales either contradict the right answer or state something false about the image, so
 * choosing needs both the text and the regions.
 */
import type { Rng } from '../../util/rng.js';
import { COLOURS, MAX_COUNT, SHAPES, numberWord } from './concepts.js';
import {
  aNp,
  absentDescriptor,
  indefinite,
  matching,
  npWords,
  relationPhrase,
  renderReference,
  sentence,
  theNp,
  uniqueDescriptors,
  uniqueReferences,
  type Descriptor,
} from './language.js';
import { holds, inverseRelation, RELATIONS, type Relation, type Scene, type SceneObject } from './scene.js';

export interface VcrItem {
  question: string;
  answers: string[];
  rationales: string[];
  qaTarget: number;
  qarTarget: number;
  questionType: 'colour' | 'location' | 'count';
}

/** A true relation from `o` to another uniquely named object, if there is one. */
function trueRelation(rng: Rng, scene: Scene, o: SceneObject): { relation: Relation; anchor: SceneObject; anchorName: Descriptor } | null {
  const options: Array<{ relation: Relation; anchor: SceneObject; anchorName: Descriptor }> = [];
  for (const a of scene.objects) {
    if (a === o) continue;
    const name = uniqueDescriptors(scene, a)[0];
    if (!name) continue;
    for (const r of RELATIONS) if (holds(r, o.box, a.box, scene)) options.push({ relation: r, anchor: a, anchorName: name });
  }
  return options.length ? rng.choice(options) : null;
}

function falseRelation(rng: Rng, scene: Scene, o: SceneObject, a: SceneObject): Relation | null {
  const wrong = RELATIONS.filter((r) => !holds(r, o.box, a.box, scene));
  return wrong.length ? rng.choice(wrong) : null;
}

/** Places the right choice at a random index among three wrong ones. */
function shuffleChoices(rng: Rng, right: string, wrong: string[]): { choices: string[]; target: number } {
  const target = rng.int(4);
  const choices = [...wrong.slice(0, 3)];
  choices.splice(target, 0, right);
  return { choices, target };
}

function distinct(values: string[], exclude: string): boolean {
  return new Set([...values, exclude]).size === values.length + 1;
}

type ItemMaker = (rng: Rng, scene: Scene) => VcrItem | null;

/** "what color is the cube left of the sphere ?" */
const colourItem: ItemMaker = (rng, scene) => {
  const o = rng.choice(scene.objects);
  const refs = uniqueReferences(scene, o, 'colour');
  const why = trueRelation(rng, scene, o);
  if (refs.length === 0 || !why) return null;
  const ref = rng.choice(refs);
  const wrongColours = rng.shuffle(COLOURS.filter((_, c) => c !== o.colour)).slice(0, 3);
  const qa = shuffleChoices(rng, sentence(`it is ${COLOURS[o.colour]}`), wrongColours.map((c) => sentence(`it is ${c}`)));
  const rel = relationPhrase(rng, why.relation);
  const named = npWords({ shape: o.shape, colour: o.colour });
  const right = sentence(`the ${named} is ${rel} ${theNp(why.anchorName)}`);
  const lie = falseRelation(rng, scene, o, why.anchor);
  const absent = absentDescriptor(rng, scene, true);
  const wrong = [
    // contradicts the answer
    sentence(`the ${npWords({ shape: o.shape, colour: COLOURS.indexOf(wrongColours[0]) })} is ${rel} ${theNp(why.anchorName)}`),
    // false about the image, consistent with the answer
    lie ? sentence(`the ${named} is ${relationPhrase(rng, lie)} ${theNp(why.anchorName)}`) : null,
    absent ? sentence(`there is ${aNp(absent)} ${rel} the ${named}`) : null,
  ].filter((x): x is string => x !== null);
  if (wrong.length < 3 || !distinct(wrong, right)) return null;
  const qar = shuffleChoices(rng, right, wrong);
  return { question: sentence(`what color is ${renderReference(rng, ref)}`, '?'), answers: qa.choices, rationales: qar.choices, qaTarget: qa.target, qarTarget: qar.target, questionType: 'colour' };
};

/** "where is the red cube ?" -> "it is left of the blue sphere ." */
const locationItem: ItemMaker = (rng, scene) => {
  const o = rng.choice(scene.objects);
  const name = uniqueDescriptors(scene, o)[0];
  const why = trueRelation(rng, scene, o);
  if (!name || !why) return null;
  const wrongAnswers: string[] = [];
  const wrongFacts: string[] = [];
  for (let tries = 0; tries < 30 && wrongAnswers.length < 3; tries++) {
    const a = rng.choice(scene.objects.filter((x) => x !== o));
    const aName = uniqueDescriptors(scene, a)[0];
    const lie = falseRelation(rng, scene, o, a);
    if (!aName || !lie) continue;
    const ans = sentence(`it is ${relationPhrase(rng, lie)} ${theNp(aName)}`);
    if (!wrongAnswers.includes(ans)) {
      wrongAnswers.push(ans);
      wrongFacts.push(sentence(`${theNp(aName)} is ${relationPhrase(rng, inverseRelation(lie))} ${theNp(name)}`));
    }
  }
  if (wrongAnswers.length < 3) return null;
  const rightAnswer = sentence(`it is ${relationPhrase(rng, why.relation)} ${theNp(why.anchorName)}`);
  if (!distinct(wrongAnswers, rightAnswer)) return null;
  const qa = shuffleChoices(rng, rightAnswer, wrongAnswers);
  // The right rationale restates the geometry from the anchor's side; wrong ones are the
  // (false) restatements of wrong answers.
  const right = sentence(`${theNp(why.anchorName)} is ${relationPhrase(rng, inverseRelation(why.relation))} ${theNp(name)}`);
  if (!distinct(wrongFacts, right)) return null;
  const qar = shuffleChoices(rng, right, wrongFacts);
  return { question: sentence(`where is ${theNp(name)}`, '?'), answers: qa.choices, rationales: qar.choices, qaTarget: qa.target, qarTarget: qar.target, questionType: 'location' };
};

function countAnswer(n: number): string {
  if (n === 0) return sentence('there are none');
  if (n === 1) return sentence('there is only one');
  return sentence(`there are ${numberWord(n)} of them`);
}

/** "a red cube and a blue cube" */
function listOf(nps: string[]): string {
  if (nps.length === 1) return nps[0];
  return `${nps.slice(0, -1).join(' , ')} and ${nps[nps.length - 1]}`;
}

/** "how many cubes are there ?" */
const countItem: ItemMaker = (rng, scene) => {
  const shape = rng.choice(scene.objects).shape;
  const found = matching(scene, { shape });
  const n = found.length;
  const others = rng.shuffle([0, 1, 2, 3, 4, 5].filter((m) => m !== n && m <= MAX_COUNT)).slice(0, 3);
  const qa = shuffleChoices(rng, countAnswer(n), others.map(countAnswer));
  const plural = npWords({ shape }, true);
  const right = sentence(`the image shows ${listOf(found.map((o) => aNp({ shape, colour: o.colour })))}`);
  const absent = absentDescriptor(rng, scene, true);
  const wrong: string[] = [
    // contradicts the answer: one fewer (or one more) listed
    n > 1
      ? sentence(`the image shows only ${listOf(found.slice(1).map((o) => aNp({ shape, colour: o.colour })))}`)
      : sentence(`the image shows no ${plural}`),
    absent && absent.shape === shape
      ? sentence(`the image shows ${listOf([...found.map((o) => aNp({ shape, colour: o.colour })), aNp(absent)])}`)
      : sentence(`the image shows ${numberWord(n + 2)} ${plural}`),
    sentence(`every object in the image is ${indefinite(SHAPES[shape])}`),
  ];
  if (scene.objects.every((o) => o.shape === shape)) return null; // the last wrong one would be true
  if (!distinct(wrong, right)) return null;
  const qar = shuffleChoices(rng, right, wrong);
  return { question: sentence(`how many ${plural} are there`, '?'), answers: qa.choices, rationales: qar.choices, qaTarget: qa.target, qarTarget: qar.target, questionType: 'count' };
};

const MAKERS: ItemMaker[] = [colourItem, locationItem, countItem];

/** `n` distinct items for a scene (fewer if the scene does not support them). */
export function generateVcrItems(rng: Rng, scene: Scene, n: number): VcrItem[] {
  const out = new Map<string, VcrItem>();
  for (let tries = 0; out.size < n && tries < n * 20; tries++) {
    const item = rng.choice(MAKERS)(rng, scene);
    if (item && !out.has(item.question)) out.set(item.question, item);
  }
  return [...out.values()];
}
