/**
 * VQA from the world: questions whose answers follow from the scene (colour, size, shape,
 * counts, existence, relations), and VQA-style soft targets from ten simulated annotators who
 * sometimes make the mistakes a person (or a detector) would make.
 */
import type { Rng } from '../../util/rng.js';
import { COLOURS, CONFUSABLE_COLOUR, CONFUSABLE_SHAPE, MAX_COUNT, SHAPES, SIZES } from './concepts.js';
import {
  aNp,
  absentDescriptor,
  countMatching,
  npWords,
  randomDescriptor,
  relationPhrase,
  renderReference,
  sentence,
  theNp,
  uniqueDescriptors,
  uniqueReferences,
} from './language.js';
import { holds, RELATIONS, type Scene } from './scene.js';

export type AnswerType = 'yes/no' | 'number' | 'other';

export interface VqaQuestion {
  question: string;
  answer: string;
  questionType: 'colour' | 'size' | 'shape' | 'count' | 'exist' | 'relation' | 'relation-yes-no';
  answerType: AnswerType;
}

type QuestionMaker = (rng: Rng, scene: Scene) => VqaQuestion | null;

/** Prefer plain names; relational ones are longer and harder. */
function pickReference<T>(rng: Rng, refs: T[], isPlain: (r: T) => boolean): T | null {
  if (refs.length === 0) return null;
  const plain = refs.filter(isPlain);
  if (plain.length > 0 && (rng.uniform() < 0.7 || plain.length === refs.length)) return rng.choice(plain);
  return rng.choice(refs);
}

const colourQuestion: QuestionMaker = (rng, scene) => {
  const o = rng.choice(scene.objects);
  const ref = pickReference(rng, uniqueReferences(scene, o, 'colour'), (r) => !r.relation);
  if (!ref) return null;
  return { question: sentence(`what color is ${renderReference(rng, ref)}`, '?'), answer: COLOURS[o.colour], questionType: 'colour', answerType: 'other' };
};

const sizeQuestion: QuestionMaker = (rng, scene) => {
  const o = rng.choice(scene.objects);
  const ref = pickReference(rng, uniqueReferences(scene, o, 'size'), (r) => !r.relation);
  if (!ref) return null;
  return { question: sentence(`what size is ${renderReference(rng, ref)}`, '?'), answer: SIZES[o.size], questionType: 'size', answerType: 'other' };
};

/** "what shape is the red object ?": asked only when the colour (and size) pick out one object. */
const shapeQuestion: QuestionMaker = (rng, scene) => {
  const o = rng.choice(scene.objects);
  const byColour = scene.objects.filter((x) => x.colour === o.colour);
  if (byColour.length === 1) return { question: sentence(`what shape is the ${COLOURS[o.colour]} object`, '?'), answer: SHAPES[o.shape], questionType: 'shape', answerType: 'other' };
  const bySizeColour = byColour.filter((x) => x.size === o.size);
  if (bySizeColour.length === 1) {
    return { question: sentence(`what shape is the ${SIZES[o.size]} ${COLOURS[o.colour]} object`, '?'), answer: SHAPES[o.shape], questionType: 'shape', answerType: 'other' };
  }
  return null;
};

const countQuestion: QuestionMaker = (rng, scene) => {
  const u = rng.uniform();
  // Mostly shapes that are present (a count of 0 is asked now and then).
  const shape = rng.uniform() < 0.8 ? rng.choice(scene.objects).shape : rng.int(SHAPES.length);
  if (u < 0.55) {
    return { question: sentence(`how many ${npWords({ shape }, true)} are there`, '?'), answer: String(countMatching(scene, { shape })), questionType: 'count', answerType: 'number' };
  }
  const colour = rng.choice(scene.objects).colour;
  if (u < 0.8) {
    const n = scene.objects.filter((o) => o.colour === colour).length;
    return { question: sentence(`how many ${COLOURS[colour]} objects are there`, '?'), answer: String(n), questionType: 'count', answerType: 'number' };
  }
  return { question: sentence(`how many ${npWords({ shape, colour }, true)} are there`, '?'), answer: String(countMatching(scene, { shape, colour })), questionType: 'count', answerType: 'number' };
};

/** Yes and no equally often. */
const existQuestion: QuestionMaker = (rng, scene) => {
  if (rng.uniform() < 0.5) {
    return { question: sentence(`is there ${aNp(randomDescriptor(rng, rng.choice(scene.objects)))}`, '?'), answer: 'yes', questionType: 'exist', answerType: 'yes/no' };
  }
  const d = absentDescriptor(rng, scene, rng.uniform() < 0.8, rng.uniform() < 0.3);
  if (!d) return null;
  return { question: sentence(`is there ${aNp(d)}`, '?'), answer: 'no', questionType: 'exist', answerType: 'yes/no' };
};

/** "what is left of the red sphere ?" when exactly one object is. */
const relationQuestion: QuestionMaker = (rng, scene) => {
  const anchor = rng.choice(scene.objects);
  const name = uniqueDescriptors(scene, anchor)[0];
  if (!name) return null;
  const r = rng.choice(RELATIONS);
  const hits = scene.objects.filter((o) => o !== anchor && holds(r, o.box, anchor.box, scene));
  if (hits.length !== 1) return null;
  return { question: sentence(`what is ${relationPhrase(rng, r)} ${theNp(name)}`, '?'), answer: SHAPES[hits[0].shape], questionType: 'relation', answerType: 'other' };
};

/** "is the cube left of the red sphere ?" */
const relationYesNoQuestion: QuestionMaker = (rng, scene) => {
  if (scene.objects.length < 2) return null;
  const a = rng.choice(scene.objects);
  const b = rng.choice(scene.objects.filter((o) => o !== a));
  const na = uniqueDescriptors(scene, a)[0];
  const nb = uniqueDescriptors(scene, b)[0];
  if (!na || !nb) return null;
  const r = rng.choice(RELATIONS);
  const yes = holds(r, a.box, b.box, scene);
  return { question: sentence(`is ${theNp(na)} ${relationPhrase(rng, r)} ${theNp(nb)}`, '?'), answer: yes ? 'yes' : 'no', questionType: 'relation-yes-no', answerType: 'yes/no' };
};

const MAKERS: QuestionMaker[] = [colourQuestion, sizeQuestion, shapeQuestion, countQuestion, existQuestion, relationQuestion, relationYesNoQuestion];

/** `n` distinct questions about a scene, cycling through the question types. */
export function generateVqaQuestions(rng: Rng, scene: Scene, n: number): VqaQuestion[] {
  const out = new Map<string, VqaQuestion>();
  const order = rng.shuffle([...MAKERS]);
  for (let tries = 0; out.size < n && tries < n * 30; tries++) {
    const q = order[tries % order.length](rng, scene);
    if (q && !out.has(q.question)) out.set(q.question, q);
  }
  return [...out.values()];
}

/** A mistake a person could make on this question. */
function plausibleWrongAnswer(rng: Rng, q: VqaQuestion): string {
  switch (q.answerType) {
    case 'yes/no':
      return q.answer === 'yes' ? 'no' : 'yes';
    case 'number': {
      const n = Number(q.answer);
      const m = n === 0 ? 1 : n === MAX_COUNT ? n - 1 : rng.uniform() < 0.5 ? n - 1 : n + 1;
      return String(m);
    }
    case 'other': {
      const c = COLOURS.indexOf(q.answer as (typeof COLOURS)[number]);
      if (c >= 0) return rng.uniform() < 0.7 ? COLOURS[CONFUSABLE_COLOUR[c]] : rng.choice(COLOURS.filter((x) => x !== q.answer));
      const s = SHAPES.indexOf(q.answer as (typeof SHAPES)[number]);
      if (s >= 0) return rng.uniform() < 0.7 ? SHAPES[CONFUSABLE_SHAPE[s]] : rng.choice(SHAPES.filter((x) => x !== q.answer));
      const z = SIZES.indexOf(q.answer as (typeof SIZES)[number]);
      if (z >= 0) return SIZES[1 - z];
      throw new Error(`vqa: no wrong answer for '${q.answer}'`);
    }
  }
}

export const ANNOTATORS = 10;

/**
 * Ten annotators answer; each is right with a per-question probability in [0.85, 1]. The soft
 * score of an answer is min(1, votes / 3), as in the VQA data UNITER trains on.
 */
export function simulateAnnotators(
  rng: Rng,
  q: VqaQuestion,
  ans2label: Record<string, number>,
): { answers: string[]; target: { labels: number[]; scores: number[] } } {
  const pRight = 0.85 + 0.15 * rng.uniform();
  const answers: string[] = [];
  for (let k = 0; k < ANNOTATORS; k++) answers.push(rng.uniform() < pRight ? q.answer : plausibleWrongAnswer(rng, q));
  const votes = new Map<string, number>();
  for (const a of answers) votes.set(a, (votes.get(a) ?? 0) + 1);
  const ranked = [...votes.entries()].sort((x, y) => y[1] - x[1] || ans2label[x[0]] - ans2label[y[0]]);
  const labels: number[] = [];
  const scores: number[] = [];
  for (const [a, v] of ranked) {
    const label = ans2label[a];
    if (label === undefined) throw new Error(`vqa: answer '${a}' is not in ans2label`);
    labels.push(label);
    scores.push(Math.min(1, v / 3));
  }
  return { answers, target: { labels, scores } };
}
