/** `uniter data`: build the official stores from your own data, or inspect existing stores. */
import type { Command } from './main.js';
import { buildUserData, formatInspectReport, inspectData } from '../data/userdata.js';
import { PhasedProgress, UsageError, guard, intFlag, numberFlag, parseArgs, printJsonLine, sayer } from './common.js';

const BUILD_USAGE = `data build --jsonl FILE --images DIR --out DIR [--name NAME] [--compress] [--overwrite] [--img-dim N] [--conf-th 0.2] [--max-bb 100] [--min-bb 10] [--json] [--quiet]
      Tokenize the JSON Lines examples ({"id", "text"|"caption"|"question"|"statement"|"expression",
      "image": "<file>.npz", ...task fields}) and convert the per-image BUTD feature files they use;
      writes OUT/txt_db/NAME.db (with the official meta.json: toker, UNK/CLS/SEP/MASK, v_range) and
      OUT/img_db/NAME/. Records whose image is unusable (missing, unreadable, no boxes, no soft_labels,
      NaN values, bad boxes, a feature width other than --img-dim or the majority's) are skipped with the
      reason; nothing valid is an error (exit 1).
  --jsonl FILE     the examples, one JSON object a line
  --images DIR     folder of the BUTD .npz feature files the examples name
  --out DIR        where txt_db/ and img_db/ go
  --name NAME      store name (default: the JSONL file name without extension)
  --compress       store region features compressed (the official _compressed img_db variant)
  --overwrite      replace existing stores of the same name (built aside, then renamed into place)
  --img-dim N      feature width to keep (default: the width most valid images have)
  --conf-th T      confidence threshold of the box-count rule (default 0.2)
  --max-bb N       at most N boxes per image (default 100)
  --min-bb N       at least N boxes per image (default 10)
  --json           print one JSON line (name, txtDb, imgDb, texts, images, warnings); messages go to stderr
  --quiet          no progress display`;

const INSPECT_USAGE = `data inspect PATH [--json] [--quiet]
      Counts, text-length and region-count histograms, and problems found, for a txt_db, an img_db or
      a folder holding stores. Exits 1 when it reports problems.
  --json           print the whole report as one JSON line (problems included)
  --quiet          no progress display`;

const USAGE = `data build|inspect ...
      Build the official stores from your own data, or inspect stores.

  uniter ${BUILD_USAGE}

  uniter ${INSPECT_USAGE}`;

async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'build') return guard('data build', BUILD_USAGE, () => build(rest));
  if (sub === 'inspect') return guard('data inspect', INSPECT_USAGE, () => inspect(rest));
  return guard('data', USAGE, () => {
    if (sub === undefined) throw new UsageError('missing subcommand: build or inspect');
    // `uniter data --help` / `uniter help data`
    parseArgs([sub], {}, USAGE);
    throw new UsageError(`unknown subcommand '${sub}' (expected build or inspect)`);
  });
}

function build(argv: string[]): number {
  const a = parseArgs(argv, { string: ['jsonl', 'images', 'out', 'name', 'img-dim', 'conf-th', 'max-bb', 'min-bb'], boolean: ['compress', 'overwrite', 'json', 'quiet'] }, BUILD_USAGE);
  if (a.positional.length) throw new UsageError(`unexpected argument '${a.positional[0]}'`);
  const missing = ['jsonl', 'images', 'out'].filter((f) => !a.string[f]);
  if (missing.length) throw new UsageError(`missing ${missing.map((f) => `--${f}`).join(', ')}`);
  const json = a.boolean.json === true;
  const opt = (flag: string, integer: boolean, min = 1) => (a.string[flag] === undefined ? undefined : integer ? intFlag(a.string[flag]!, `--${flag}`, min) : numberFlag(a.string[flag]!, `--${flag}`));
  const progress = new PhasedProgress({ unit: 'images', quiet: a.boolean.quiet === true });
  let report;
  try {
    report = buildUserData({
      jsonl: a.string.jsonl!,
      imagesDir: a.string.images!,
      outDir: a.string.out!,
      name: a.string.name,
      compress: a.boolean.compress === true,
      overwrite: a.boolean.overwrite === true,
      imgDim: opt('img-dim', true),
      confTh: opt('conf-th', false),
      maxBb: opt('max-bb', true),
      minBb: opt('min-bb', true, 0),
      onProgress: (phase, done, total) => progress.update(phase, done, total),
    });
  } finally {
    progress.finish();
  }
  if (json) {
    printJsonLine(report);
    return 0;
  }
  const say = sayer(false);
  say(`txt_db ${report.txtDb}: ${report.texts} examples`);
  say(`img_db ${report.imgDb}: ${report.images} images`);
  if (report.warnings.length) {
    say(`${report.warnings.length} warning${report.warnings.length === 1 ? '' : 's'}:`);
    for (const w of report.warnings) say(`  ${w}`);
  }
  return 0;
}

function inspect(argv: string[]): number {
  const a = parseArgs(argv, { boolean: ['json', 'quiet'] }, INSPECT_USAGE);
  if (a.positional.length !== 1) throw new UsageError(a.positional.length ? `expected one PATH, got ${a.positional.length}` : 'missing PATH');
  const progress = new PhasedProgress({ unit: 'records', quiet: a.boolean.quiet === true });
  let report;
  try {
    report = inspectData(a.positional[0], (phase, done, total) => progress.update(phase, done, total));
  } finally {
    progress.finish();
  }
  if (a.boolean.json) printJsonLine(report);
  else console.log(formatInspectReport(report));
  return report.problems.length ? 1 : 0;
}

export const command: Command = {
  name: 'data',
  summary: 'build txt_db/img_db stores from JSONL + feature files; inspect stores',
  usage: USAGE,
  run,
};
