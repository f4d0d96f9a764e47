/** `uniter world`: generate the synthetic grounded world and write it in the official layouts. */
import { checkWorldTarget, generateWorld, writeWorld, WORLD_PRESETS, type WorldOptions, type WorldPreset } from '../data/world.js';
import { JobProgress, UsageError, guard, intFlag, parseArgs, printJsonLine, sayer } from './common.js';
import type { Command } from './main.js';

const USAGE = `world --out DIR [--preset default|tiny] [--images N] [--seed S] [--captions-per-image N] [--compress] [--json] [--quiet]
      Generate the synthetic grounded world (scenes of coloured shapes, detector-like region
      features, captions and every downstream task) and write DIR/img_db/*, DIR/txt_db/*.db,
      DIR/ans2label.json and DIR/world.json. DIR must be new, empty, or an earlier world.
  --out DIR                 the world folder to write (an earlier world there is replaced atomically)
  --preset P                ${Object.keys(WORLD_PRESETS).join(' or ')} (default default)
  --images N                number of scenes (default: the preset's)
  --seed S                  random seed (default: the preset's)
  --captions-per-image N    captions written per scene (default: the preset's)
  --compress                store region features compressed (the official _compressed img_db variant)
  --json                    print one JSON line (out, seed, counts); messages go to stderr
  --quiet                   no progress and no messages`;

export const command: Command = {
  name: 'world',
  summary: 'generate the synthetic grounded world (default data for pre-training and every task)',
  usage: USAGE,
  run: (argv) =>
    guard('world', USAGE, () => {
      const parsed = parseArgs(argv, { string: ['out', 'preset', 'images', 'seed', 'captions-per-image'], boolean: ['json', 'compress', 'quiet'] }, USAGE);
      if (parsed.positional.length) throw new UsageError(`unexpected argument '${parsed.positional[0]}'`);
      const out = parsed.string.out;
      if (!out) throw new UsageError('--out DIR is required');
      const preset = parsed.string.preset ?? 'default';
      if (!(preset in WORLD_PRESETS)) throw new UsageError(`--preset must be one of ${Object.keys(WORLD_PRESETS).join(', ')}, got '${preset}'`);
      const int = (flag: string, min: number) => (parsed.string[flag] !== undefined ? intFlag(parsed.string[flag]!, `--${flag}`, min) : undefined);
      const opts: WorldOptions = { preset: preset as WorldPreset, numImages: int('images', 1), seed: int('seed', 0), captionsPerImage: int('captions-per-image', 1) };
      const asJson = parsed.boolean.json === true;
      const quiet = parsed.boolean.quiet === true;
      const log = sayer(true, quiet); // messages and progress on stderr; stdout carries the result
      checkWorldTarget(out);
      const t0 = Date.now();
      log(`generating the synthetic world (preset ${preset}${opts.numImages ? `, ${opts.numImages} images` : ''})...`);
      const world = generateWorld(opts);
      const c0 = world.counts();
      log(`generated ${world.scenes.length} scenes in ${((Date.now() - t0) / 1000).toFixed(1)} s; writing ${out}`);
      const progress = new JobProgress({ unit: 'stores', quiet }, Object.keys(c0.imgDbs).length + Object.keys(c0.txtDbs).length);
      let started = 0;
      const manifest = writeWorld(world, out, {
        compress: parsed.boolean.compress === true,
        onStore: () => {
          if (started++ > 0) progress.advance();
        },
      });
      if (started > 0) progress.advance();
      progress.finish();
      const c = manifest.counts;
      if (asJson) {
        printJsonLine({ out, seed: world.options.seed, preset: world.options.preset, seconds: Math.round((Date.now() - t0) / 100) / 10, counts: c });
        return 0;
      }
      const say = sayer(false);
      say(`world (seed ${world.options.seed}, preset ${world.options.preset}) -> ${out} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      say(`  images: ${c.images.train} train / ${c.images.val} val / ${c.images.test} test, ${c.objects} objects`);
      for (const [name, s] of Object.entries(c.imgDbs)) say(`  img_db ${name.padEnd(10)} ${s.images} images, ${s.regions} regions`);
      for (const [name, n] of Object.entries(c.txtDbs)) say(`  txt_db ${name.padEnd(20)} ${n} records`);
      say(`  ans2label: ${c.answers} answers`);
      return 0;
    }),
};
