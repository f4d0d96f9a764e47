/**
 * The world's small grammar: how objects are named ("the large red cube"), how a name picks out
 * objects, and which names pick out exactly one. Every generator of text (captions, questions,
 * hypotheses, statements, expressions) goes through these functions, so what the text claims
 * and what the scene holds can never drift apart.
 */
import type { Rng } from '../../util/rng.js';
import { COLOURS, SHAPE_PLURALS, SHAPES, SIZES } from './concepts.js';
import { holds, type Relation, type Scene, type SceneObject } from './scene.js';

/** A noun phrase: a shape, optionally qualified by size and/or colour. */
export interface Descriptor {
  shape: number;
  colour?: number;
  size?: number;
}

export function matches(d: Descriptor, o: SceneObject): boolean {
  return o.shape === d.shape && (d.colour === undefined || o.colour === d.colour) && (d.size === undefined || o.size === d.size);
}

export function matching(scene: Scene, d: Descriptor): SceneObject[] {
  return scene.objects.filter((o) => matches(d, o));
}

export function countMatching(scene: Scene, d: Descriptor): number {
  return matching(scene, d).length;
}

/** "large red cube" (no article); plural form with `plural`. */
export function npWords(d: Descriptor, plural = false): string {
  const words: string[] = [];
  if (d.size !== undefined) words.push(SIZES[d.size]);
  if (d.colour !== undefined) words.push(COLOURS[d.colour]);
  words.push(plural ? SHAPE_PLURALS[d.shape] : SHAPES[d.shape]);
  return words.join(' ');
}

/** English indefinite article for the following words ("an orange cube"). */
export function indefinite(words: string): string {
  return /^[aeiou]/.test(words) ? `an ${words}` : `a ${words}`;
}

export function aNp(d: Descriptor): string {
  return indefinite(npWords(d));
}

export function theNp(d: Descriptor): string {
  return `the ${npWords(d)}`;
}

/** Surface forms of each relation; all forms of one relation mean exactly the same thing. */
export const RELATION_PHRASES: Record<Relation, readonly string[]> = {
  left: ['left of', 'to the left of'],
  right: ['right of', 'to the right of'],
  above: ['above'],
  below: ['below', 'under'],
  near: ['next to', 'beside'],
};

export function relationPhrase(rng: Rng, r: Relation): string {
  return rng.choice(RELATION_PHRASES[r]);
}

/**
 * A truthful descriptor of `o` with a random subset of its attributes (each kept with
 * probability `keep`): "a red cube" for a small red cube is true, merely not exhaustive.
 */
export function randomDescriptor(rng: Rng, o: SceneObject, keep = 0.7): Descriptor {
  const d: Descriptor = { shape: o.shape };
  if (rng.uniform() < keep) d.colour = o.colour;
  if (rng.uniform() < keep) d.size = o.size;
  return d;
}

type Attribute = 'colour' | 'size';

/**
 * Descriptors that pick out `o` alone in its scene, shortest first (shape; colour+shape;
 * size+shape; size+colour+shape). `without` excludes an attribute (to ask about it).
 */
export function uniqueDescriptors(scene: Scene, o: SceneObject, without?: Attribute): Descriptor[] {
  const options: Descriptor[] = [
    { shape: o.shape },
    { shape: o.shape, colour: o.colour },
    { shape: o.shape, size: o.size },
    { shape: o.shape, colour: o.colour, size: o.size },
  ];
  return options.filter((d) => !(without && d[without] !== undefined) && countMatching(scene, d) === 1);
}

/** A referring expression: a head noun phrase, optionally narrowed by a relation to an anchor. */
export interface Reference {
  head: Descriptor;
  relation?: { relation: Relation; anchor: Descriptor };
}

/** The objects a reference denotes. An anchor must itself denote one object, else nothing matches. */
export function resolve(scene: Scene, ref: Reference): SceneObject[] {
  const heads = matching(scene, ref.head);
  if (!ref.relation) return heads;
  const anchors = matching(scene, ref.relation.anchor);
  if (anchors.length !== 1) return [];
  const anchor = anchors[0];
  return heads.filter((o) => o !== anchor && holds(ref.relation!.relation, o.box, anchor.box, scene));
}

/** "the cube to the left of the red sphere" (article included). */
export function renderReference(rng: Rng, ref: Reference): string {
  const head = theNp(ref.head);
  if (!ref.relation) return head;
  return `${head} ${relationPhrase(rng, ref.relation.relation)} ${theNp(ref.relation.anchor)}`;
}

/**
 * Every way the grammar can single out `o`: plain unique descriptors, and relational ones
 * ("the cube left of the red sphere") whose head alone is ambiguous but whose relation to a
 * uniquely named anchor is not. `without` keeps an attribute out of the head.
 */
export function uniqueReferences(scene: Scene, o: SceneObject, without?: Attribute): Reference[] {
  const refs: Reference[] = uniqueDescriptors(scene, o, without).map((head) => ({ head }));
  const heads: Descriptor[] = [{ shape: o.shape }];
  if (without !== 'colour') heads.push({ shape: o.shape, colour: o.colour });
  if (without !== 'size') heads.push({ shape: o.shape, size: o.size });
  for (const head of heads) {
    if (countMatching(scene, head) < 2) continue;
    for (const a of scene.objects) {
      if (a === o) continue;
      const anchors = uniqueDescriptors(scene, a);
      if (anchors.length === 0) continue;
      for (const r of ['left', 'right', 'above', 'below', 'near'] as const) {
        const ref: Reference = { head, relation: { relation: r, anchor: anchors[0] } };
        const hit = resolve(scene, ref);
        if (hit.length === 1 && hit[0] === o) refs.push(ref);
      }
    }
  }
  return refs;
}

/** A descriptor that matches no object of the scene (for false statements), or null. */
export function absentDescriptor(rng: Rng, scene: Scene, withColour = true, withSize = false): Descriptor | null {
  for (let tries = 0; tries < 50; tries++) {
    const d: Descriptor = { shape: rng.int(SHAPES.length) };
    if (withColour) d.colour = rng.int(COLOURS.length);
    if (withSize) d.size = rng.int(SIZES.length);
    if (countMatching(scene, d) === 0) return d;
  }
  return null;
}

/** Wraps text the way every record stores it: a trailing period or question mark, single spaces. */
export function sentence(words: string, end: '.' | '?' = '.'): string {
  return `${words.replace(/\s+/g, ' ').trim()} ${end}`;
}
