/** `uniter data`: build the official stores from your own data, or inspect existing stores. */
import { parseArgs } from 'node:util';
import type { Command } from './main.js';
import { buildUserData, formatInspectReport, inspectData } from '../data/userdata.js';

const USAGE = `usage:
  uniter data build --jsonl FILE --images DIR --out DIR [--name NAME] [--compress] [--overwrite]
                    [--img-dim N] [--conf-th 0.2] [--max-bb 100] [--min-bb 10]
      Tokenize the JSON Lines examples ({"id", "text"|"caption"|"question"|"statement"|"expression",
      "image": "<file>.npz", ...task fields}) and convert the per-image BUTD feature files they use;
      writes OUT/txt_db/NAME.db and OUT/img_db/NAME/ (NAME defaults to the JSONL file name).
      Records whose image is unusable (missing, unreadable, no boxes, no soft_labels, NaN values,
      bad boxes, a feature width other than --img-dim or the majority's) are skipped with the
      reason; nothing valid is an error. Existing stores are replaced only with --overwrite.
  uniter data inspect PATH
      Counts, text-length and region-count histograms, and problems found, for a txt_db, an img_db
      or a folder holding stores. Exits 1 when it reports problems.`;

function number(v: string | undefined, flag: string, integer: boolean): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new UsageError(`${flag} expects ${integer ? 'an integer' : 'a number'}, got '${v}'`);
  return n;
}

class UsageError extends Error {}

async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  try {
    if (sub === 'build') {
      const { values, positionals } = parseArgs({
        args: rest,
        strict: true,
        allowPositionals: true,
        options: {
          jsonl: { type: 'string' },
          images: { type: 'string' },
          out: { type: 'string' },
          name: { type: 'string' },
          compress: { type: 'boolean', default: false },
          overwrite: { type: 'boolean', default: false },
          'img-dim': { type: 'string' },
          'conf-th': { type: 'string' },
          'max-bb': { type: 'string' },
          'min-bb': { type: 'string' },
        },
      });
      if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'`);
      if (!values.jsonl || !values.images || !values.out) throw new UsageError('build needs --jsonl, --images and --out');
      const report = buildUserData({
        jsonl: values.jsonl,
        imagesDir: values.images,
        outDir: values.out,
        name: values.name,
        compress: values.compress,
        overwrite: values.overwrite,
        imgDim: number(values['img-dim'], '--img-dim', true),
        confTh: number(values['conf-th'], '--conf-th', false),
        maxBb: number(values['max-bb'], '--max-bb', true),
        minBb: number(values['min-bb'], '--min-bb', true),
      });
      console.log(`txt_db ${report.txtDb}: ${report.texts} examples`);
      console.log(`img_db ${report.imgDb}: ${report.images} images`);
      if (report.warnings.length) {
        console.log(`${report.warnings.length} warning${report.warnings.length === 1 ? '' : 's'}:`);
        for (const w of report.warnings) console.log(`  ${w}`);
      }
      return 0;
    }
    if (sub === 'inspect') {
      const { positionals } = parseArgs({ args: rest, strict: true, allowPositionals: true, options: {} });
      if (positionals.length !== 1) throw new UsageError('inspect needs exactly one PATH');
      const report = inspectData(positionals[0]);
      console.log(formatInspectReport(report));
      return report.problems.length ? 1 : 0;
    }
    if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
      console.log(USAGE);
      return sub === undefined ? 2 : 0;
    }
    throw new UsageError(`unknown subcommand '${sub}'`);
  } catch (e) {
    if (e instanceof UsageError || (e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`uniter data: ${(e as Error).message}\n${USAGE}`);
      return 2;
    }
    console.error(`uniter data: ${(e as Error).message}`);
    return 1;
  }
}

export const command: Command = {
  name: 'data',
  summary: 'build txt_db/img_db stores from JSONL + feature files; inspect stores',
  run,
};
