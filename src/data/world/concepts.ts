/**
 * The closed vocabulary of the synthetic world: what objects can be, what the detector can tell
 * apart (shape, colour, size: these shape the region features) and what it cannot (material:
 * never encoded, so statements about it are undetermined by the image).
 *
 * Everything here is independent of the world seed, so every generated world shares one
 * "detector": its class ids, answer vocabulary and categories stay fixed.
 */

export const SHAPES = ['cube', 'sphere', 'cylinder', 'cone', 'pyramid', 'ring', 'star', 'disk'] as const;
export const SHAPE_PLURALS = ['cubes', 'spheres', 'cylinders', 'cones', 'pyramids', 'rings', 'stars', 'disks'] as const;
export const COLOURS = ['red', 'orange', 'yellow', 'green', 'blue', 'purple', 'white', 'black'] as const;
export const SIZES = ['small', 'large'] as const;
/** Surface materials: part of a scene's ground truth, invisible to the detector. */
export const MATERIALS = ['metal', 'rubber', 'wood', 'glass', 'plastic'] as const;
/** Adjective form of each material ("a wooden cube"). */
export const MATERIAL_ADJECTIVES = ['metal', 'rubber', 'wooden', 'glass', 'plastic'] as const;
/** Background "stuff" regions a detector also fires on; never mentioned in text. */
export const STUFF = ['floor', 'wall', 'shadow', 'table', 'grass', 'sky'] as const;

/**
 * The detector's most likely confusions: a colour is mistaken for its neighbour, a shape for
 * one with a similar silhouette. Used for soft labels and for simulated annotator mistakes.
 */
export const CONFUSABLE_COLOUR: readonly number[] = COLOURS.map((c) =>
  COLOURS.indexOf(
    ({ red: 'orange', orange: 'red', yellow: 'orange', green: 'blue', blue: 'purple', purple: 'blue', white: 'yellow', black: 'purple' } as const)[c],
  ),
);
export const CONFUSABLE_SHAPE: readonly number[] = SHAPES.map((s) =>
  SHAPES.indexOf(
    ({ cube: 'cylinder', cylinder: 'cube', sphere: 'disk', disk: 'sphere', cone: 'pyramid', pyramid: 'cone', ring: 'star', star: 'ring' } as const)[s],
  ),
);

/** Width/height ratio typical of each shape's silhouette. */
export const SHAPE_ASPECT: readonly number[] = SHAPES.map(
  (s) => ({ cube: 1.0, sphere: 1.0, cylinder: 0.7, cone: 0.85, pyramid: 1.1, ring: 1.2, star: 1.0, disk: 1.5 })[s],
);

/** Detector class id of an object kind (shape, colour): 1..64; 0 is background. */
export function objectClassId(shape: number, colour: number): number {
  return 1 + shape * COLOURS.length + colour;
}

/** Detector class id of a background stuff region: right after the object classes. */
export function stuffClassId(stuff: number): number {
  return 1 + SHAPES.length * COLOURS.length + stuff;
}

/** Smallest label dimension that holds every class the world uses (background + objects + stuff). */
export const MIN_LABEL_DIM = 1 + SHAPES.length * COLOURS.length + STUFF.length;

/** Number words used in text ("there are three cubes"). */
export const NUMBER_WORDS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten'] as const;

export function numberWord(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n >= NUMBER_WORDS.length) throw new RangeError(`numberWord: no word for ${n}`);
  return NUMBER_WORDS[n];
}

/** Largest count any count answer can take (the VQA vocabulary holds digits 0..MAX_COUNT). */
export const MAX_COUNT = 10;

/**
 * The fixed VQA answer vocabulary, in a fixed order (so answer heads mean the same thing in
 * every world): yes/no, counts as digits, colours, shapes, sizes.
 */
export function worldAnswerVocabulary(): string[] {
  const answers: string[] = ['yes', 'no'];
  for (let n = 0; n <= MAX_COUNT; n++) answers.push(String(n));
  answers.push(...COLOURS, ...SHAPES, ...SIZES);
  return answers;
}

export function worldAns2Label(): Record<string, number> {
  const out: Record<string, number> = {};
  worldAnswerVocabulary().forEach((a, i) => (out[a] = i));
  return out;
}

/** SNLI-VE labels as in the official data: contradiction 0, entailment 1, neutral 2. */
export const VE_LABELS = ['contradiction', 'entailment', 'neutral'] as const;
export type VeLabel = (typeof VE_LABELS)[number];
