/** `uniter world`: generate the synthetic grounded world and write it in the official layouts. */
import { checkWorldTarget, generateWorld, writeWorld, WORLD_PRESETS, type WorldOptions, type WorldPreset } from '../data/world.js';
import { parseArgs } from './args.js';
import type { Command } from './main.js';

const USAGE = `world --out DIR [--preset default|tiny] [--images N] [--seed S] [--captions-per-image N] [--compress] [--json]
      Generate the synthetic grounded world (scenes of coloured shapes, detector-like region
      features, captions and every downstream task) and write DIR/img_db/*, DIR/txt_db/*.db,
      DIR/ans2label.json and DIR/world.json. DIR must be new, empty, or an earlier world.`;

function intOption(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(`--${name} must be an integer, got '${v}'`);
  return n;
}

export const command: Command = {
  name: 'world',
  summary: 'generate the synthetic grounded world (default data for pre-training and every task)',
  async run(argv: string[]): Promise<number> {
    let opts: WorldOptions;
    let out: string | undefined;
    let asJson = false;
    let compress = false;
    try {
      const parsed = parseArgs(argv, { string: ['out', 'preset', 'images', 'seed', 'captions-per-image'], boolean: ['json', 'compress'] }, USAGE);
      if (parsed.positional.length) throw new Error(`unexpected argument '${parsed.positional[0]}'`);
      out = parsed.string.out;
      if (!out) throw new Error('--out DIR is required');
      const preset = parsed.string.preset ?? 'default';
      if (!(preset in WORLD_PRESETS)) throw new Error(`--preset must be one of ${Object.keys(WORLD_PRESETS).join(', ')}, got '${preset}'`);
      opts = {
        preset: preset as WorldPreset,
        numImages: intOption('images', parsed.string.images),
        seed: intOption('seed', parsed.string.seed),
        captionsPerImage: intOption('captions-per-image', parsed.string['captions-per-image']),
      };
      asJson = parsed.boolean.json === true;
      compress = parsed.boolean.compress === true;
    } catch (e) {
      console.error(`uniter world: ${(e as Error).message}\nusage: uniter ${USAGE}`);
      return 2;
    }
    try {
      checkWorldTarget(out);
      const t0 = Date.now();
      const world = generateWorld(opts);
      const log = asJson ? () => {} : (msg: string) => console.error(msg);
      log(`generated ${world.scenes.length} scenes in ${((Date.now() - t0) / 1000).toFixed(1)} s; writing ${out}`);
      const manifest = writeWorld(world, out, { compress, onStore: (kind, name) => log(`  ${kind} ${name}`) });
      if (asJson) {
        console.log(JSON.stringify({ out, seed: world.options.seed, counts: manifest.counts }, null, 1));
      } else {
        const c = manifest.counts;
        console.log(`world (seed ${world.options.seed}, preset ${world.options.preset}) -> ${out} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        console.log(`  images: ${c.images.train} train / ${c.images.val} val / ${c.images.test} test, ${c.objects} objects`);
        for (const [name, s] of Object.entries(c.imgDbs)) console.log(`  img_db ${name.padEnd(10)} ${s.images} images, ${s.regions} regions`);
        for (const [name, n] of Object.entries(c.txtDbs)) console.log(`  txt_db ${name.padEnd(20)} ${n} records`);
        console.log(`  ans2label: ${c.answers} answers`);
      }
      return 0;
    } catch (e) {
      console.error(`uniter world: ${(e as Error).message}`);
      return 1;
    }
  },
};
