/**
 * Referring expressions from the world: phrases that pick out exactly one object ("the small
 * green cone", "the cube to the left of the red sphere"), several per referred object.
 */
import type { Rng } from '../../util/rng.js';
import { renderReference, uniqueReferences } from './language.js';
import type { Scene, SceneObject } from './scene.js';

/**
 * Up to `max` distinct expressions for `o`, or none when the grammar cannot single it out
 * (an identical twin with no distinguishing relation). Plain names come first when available;
 * a relational one is mixed in when the head alone would be ambiguous or by chance.
 */
export function referringExpressions(rng: Rng, scene: Scene, o: SceneObject, max: number): string[] {
  const refs = uniqueReferences(scene, o);
  if (refs.length === 0) return [];
  const out = new Set<string>();
  const order = rng.shuffle([...refs]);
  for (let tries = 0; out.size < max && tries < max * 6; tries++) out.add(renderReference(rng, order[tries % order.length]));
  return [...out];
}
