/**
 * The images `uniter serve` offers on its page: keys of an image store plus what the page needs
 * to draw them. Synthetic-world images have no pixels, so the page paints each scene from its
 * ground truth (shapes, colours, sizes and boxes); the regions the model reads come with names
 * of the world detector's classes.
 */
import type { ImageSource } from '../data/types.js';
import type { World } from '../data/world.js';
import { COLOURS, SHAPES, SIZES, STUFF } from '../data/world/concepts.js';

export interface SceneDrawing {
  objects: Array<{ shape: string; colour: string; size: string; box: [number, number, number, number] }>;
  stuff: Array<{ stuff: string; box: [number, number, number, number] }>;
}

export interface GalleryImage {
  id: string;
  width: number;
  height: number;
  /** Ground truth to paint the picture (synthetic world only). */
  scene?: SceneDrawing;
  /** Captions written for this image (synthetic world), to try on the page. */
  captions?: string[];
}

export interface Gallery {
  source: ImageSource;
  /** Keys offered on the page, in display order. */
  ids: string[];
  /** Names of soft-label columns (0 = background). */
  classNames: string[];
  describe(id: string): GalleryImage;
}

/** The world detector's class names: background, then colour x shape objects, then stuff. */
export function worldClassNames(labelDim: number): string[] {
  const names = ['background'];
  for (const shape of SHAPES) for (const colour of COLOURS) names.push(`${colour} ${shape}`);
  for (const s of STUFF) names.push(s);
  while (names.length < labelDim) names.push(`class ${names.length}`);
  return names.slice(0, labelDim);
}

const box = (b: { x1: number; y1: number; x2: number; y2: number }): [number, number, number, number] => [b.x1, b.y1, b.x2, b.y2];

/** A gallery of `limit` images of a world split (default: the held-out test images). */
export function worldGallery(world: World, opts: { split?: 'train' | 'val' | 'test'; limit?: number } = {}): Gallery {
  const store = world.images;
  const scenes = world.splits[opts.split ?? 'test'].slice(0, opts.limit ?? 48);
  const ids = scenes.map((sc) => world.imageName('main', sc.imageId));
  const captions = new Map<string, string[]>();
  const wanted = new Set(ids);
  for (const name of ['itm_world_test', 'itm_world_val', 'itm_world_train']) {
    if (!world.textDbs.has(name)) continue;
    const db = world.textDb(name);
    for (const id of db.ids()) {
      const r = db.get(id) as { img_fname: string; caption?: string };
      if (!wanted.has(r.img_fname) || typeof r.caption !== 'string') continue;
      const list = captions.get(r.img_fname) ?? [];
      if (list.length < 5 && !list.includes(r.caption)) list.push(r.caption);
      captions.set(r.img_fname, list);
    }
  }
  return {
    source: store,
    ids,
    classNames: worldClassNames(store.labelDim),
    describe(id: string): GalleryImage {
      const sc = store.layout(id).scene;
      return {
        id,
        width: sc.width,
        height: sc.height,
        scene: {
          objects: sc.objects.map((o) => ({ shape: SHAPES[o.shape], colour: COLOURS[o.colour], size: SIZES[o.size], box: box(o.box) })),
          stuff: sc.stuff.map((s) => ({ stuff: STUFF[s.stuff], box: box(s.box) })),
        },
        captions: captions.get(id) ?? [],
      };
    },
  };
}

/** A gallery over any image store (an official img_db): no pictures, boxes on a blank canvas. */
export function storeGallery(source: ImageSource, opts: { limit?: number; classNames?: string[] } = {}): Gallery {
  const ids = source.keys().slice(0, opts.limit ?? 48);
  return {
    source,
    ids,
    classNames: opts.classNames ?? Array.from({ length: source.labelDim }, (_, i) => (i === 0 ? 'background' : `class ${i}`)),
    describe: (id) => ({ id, width: 600, height: 400 }),
  };
}
