/**
 * Scenes: a canvas of W x H pixels holding a few non-overlapping objects plus background stuff.
 * Spatial relations are pure functions of the ground-truth boxes, so every statement the world
 * makes about "left of", "above", ... can be checked against geometry alone.
 */
import type { Rng } from '../../util/rng.js';
import { COLOURS, MATERIALS, SHAPE_ASPECT, SHAPES, SIZES, STUFF } from './concepts.js';

/** Pixel box, x to the right, y down; x2/y2 exclusive edges (w = x2 - x1). */
export interface Box {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

export interface SceneObject {
  /** Position in the scene's object list = row in the ground-truth feature store. */
  index: number;
  /** Global annotation id (unique over the world). */
  annId: number;
  /** Attributes are indices into SHAPES, COLOURS, SIZES and MATERIALS (world/concepts.ts). */
  shape: number;
  colour: number;
  size: number;
  /** Ground truth the detector never sees. */
  material: number;
  box: Box;
}

export interface StuffRegion {
  stuff: number;
  box: Box;
}

export interface Scene {
  /** Numeric image id (1-based, unique over the world). */
  imageId: number;
  width: number;
  height: number;
  objects: SceneObject[];
  stuff: StuffRegion[];
}

export interface SceneOptions {
  minObjects: number;
  maxObjects: number;
  minStuff: number;
  maxStuff: number;
}

export const RELATIONS = ['left', 'right', 'above', 'below', 'near'] as const;
export type Relation = (typeof RELATIONS)[number];

const INVERSE: Record<Relation, Relation> = { left: 'right', right: 'left', above: 'below', below: 'above', near: 'near' };

export function inverseRelation(r: Relation): Relation {
  return INVERSE[r];
}

/** Gap between two boxes (0 when they touch or overlap), in pixels. */
export function boxGap(a: Box, b: Box): number {
  const dx = Math.max(0, b.x1 - a.x2, a.x1 - b.x2);
  const dy = Math.max(0, b.y1 - a.y2, a.y1 - b.y2);
  return Math.hypot(dx, dy);
}

/** "near" means closer than this fraction of the canvas's shorter side. */
export const NEAR_FRACTION = 0.12;

/**
 * Whether `a` stands in relation `r` to `b` ("a is left of b"): a box is left of another when it
 * ends before the other begins; "near" = disjoint and within NEAR_FRACTION of the shorter side.
 */
export function holds(r: Relation, a: Box, b: Box, scene: Pick<Scene, 'width' | 'height'>): boolean {
  switch (r) {
    case 'left':
      return a.x2 <= b.x1;
    case 'right':
      return a.x1 >= b.x2;
    case 'above':
      return a.y2 <= b.y1;
    case 'below':
      return a.y1 >= b.y2;
    case 'near': {
      if (boxesOverlap(a, b)) return false;
      return boxGap(a, b) < NEAR_FRACTION * Math.min(scene.width, scene.height);
    }
  }
}

export function boxesOverlap(a: Box, b: Box): boolean {
  return a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2;
}

/** Relations that hold from object a to object b. */
export function relationsBetween(scene: Scene, a: SceneObject, b: SceneObject): Relation[] {
  return RELATIONS.filter((r) => holds(r, a.box, b.box, scene));
}

export function boxArea(b: Box): number {
  return Math.max(0, b.x2 - b.x1) * Math.max(0, b.y2 - b.y1);
}

/** COCO-style [x, y, w, h] of a pixel box. */
export function toXywh(b: Box): [number, number, number, number] {
  return [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1];
}

/** Minimum empty margin between objects, so every pair has a clear spatial relation. */
const OBJECT_MARGIN = 6;

/**
 * One random scene. Objects never overlap (with a margin), so each pair is separated along x or
 * y and at least one of left/right/above/below holds. Sizes: large objects span 22-30% of the
 * shorter side, small ones 10-15%.
 */
export function generateScene(rng: Rng, imageId: number, firstAnnId: number, opts: SceneOptions): Scene {
  for (let canvas = 0; ; canvas++) {
    if (canvas === 1000) throw new Error(`scene ${imageId}: cannot place ${opts.minObjects} non-overlapping objects (lower minObjects)`);
    const width = rng.int(480, 801);
    const height = rng.int(360, 601);
    const side = Math.min(width, height);
    const target = rng.int(opts.minObjects, opts.maxObjects + 1);
    const objects: SceneObject[] = [];
    let attempts = 0;
    while (objects.length < target && attempts < 400) {
      attempts++;
      const shape = rng.int(SHAPES.length);
      const size = rng.int(SIZES.length);
      const extent = side * (size === 1 ? 0.22 + 0.08 * rng.uniform() : 0.1 + 0.05 * rng.uniform());
      const aspect = SHAPE_ASPECT[shape] * (0.9 + 0.2 * rng.uniform());
      const w = Math.max(8, Math.round(extent * Math.sqrt(aspect)));
      const h = Math.max(8, Math.round(extent / Math.sqrt(aspect)));
      if (w >= width - 2 || h >= height - 2) continue;
      const x1 = rng.int(1, width - w);
      const y1 = rng.int(1, height - h);
      const box = { x1, y1, x2: x1 + w, y2: y1 + h };
      const padded = { x1: x1 - OBJECT_MARGIN, y1: y1 - OBJECT_MARGIN, x2: box.x2 + OBJECT_MARGIN, y2: box.y2 + OBJECT_MARGIN };
      if (objects.some((o) => boxesOverlap(padded, o.box))) continue;
      objects.push({
        index: objects.length,
        annId: firstAnnId + objects.length,
        shape,
        colour: rng.int(COLOURS.length),
        size,
        material: rng.int(MATERIALS.length),
        box,
      });
    }
    // A crowded canvas can refuse the last objects; draw a new canvas rather than go below the minimum.
    if (objects.length < opts.minObjects) continue;
    const stuff: StuffRegion[] = [];
    const nStuff = rng.int(opts.minStuff, opts.maxStuff + 1);
    for (let k = 0; k < nStuff; k++) stuff.push({ stuff: rng.int(STUFF.length), box: stuffBox(rng, width, height) });
    return { imageId, width, height, objects, stuff };
  }
}

/** A broad background region: a band along an edge or a large blob. */
function stuffBox(rng: Rng, width: number, height: number): Box {
  const kind = rng.int(3);
  if (kind === 0) {
    // horizontal band (floor / sky like)
    const h = Math.round(height * (0.2 + 0.25 * rng.uniform()));
    const top = rng.uniform() < 0.5;
    return { x1: 0, y1: top ? 0 : height - h, x2: width, y2: top ? h : height };
  }
  if (kind === 1) {
    const w = Math.round(width * (0.2 + 0.25 * rng.uniform()));
    const left = rng.uniform() < 0.5;
    return { x1: left ? 0 : width - w, y1: 0, x2: left ? w : width, y2: height };
  }
  const w = Math.round(width * (0.3 + 0.4 * rng.uniform()));
  const h = Math.round(height * (0.3 + 0.4 * rng.uniform()));
  const x1 = rng.int(0, width - w + 1);
  const y1 = rng.int(0, height - h + 1);
  return { x1, y1, x2: x1 + w, y2: y1 + h };
}
