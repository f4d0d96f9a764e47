/** The `uniter` binary: one subcommand per job, each in its own file under src/cli/. */
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { reportFailure } from './common.js';

export interface Command {
  name: string;
  summary: string;
  /** The help text: the synopsis line (without "uniter "), then every option explained. */
  usage: string;
  /** Exit status per src/cli/common.ts: 0 ok, 1 failure, 2 usage; errors thrown are reported the same way. */
  run(argv: string[]): Promise<number | void>;
}

async function loadCommands(): Promise<Command[]> {
  // Each entry is imported lazily so that `uniter --help` and light commands start fast.
  const loaders: Array<() => Promise<{ command: Command }>> = [
    // COMMANDS (keep one line per command file)
    () => import('./finetune.js'),
    () => import('./evaluate.js'),
    () => import('./data.js'),
    () => import('./world.js'),
    () => import('./convert.js'),
    () => import('./check-golden.js'),
    () => import('./pretrain.js'),
    () => import('./export-onnx.js'),
    () => import('./ablate.js'),
    () => import('./extract.js'),
    () => import('./serve.js'),
    () => import('./worker.js'),
    () => import('./retrieval-score.js'),
  ];
  return Promise.all(loaders.map(async (l) => (await l()).command));
}

/** The package's version, from the package.json beside dist/ (the same file npm installed). */
export function packageVersion(): string {
  const file = new URL('../../../package.json', import.meta.url);
  const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string; version?: string };
  if (pkg.name !== 'uniter-ts' || typeof pkg.version !== 'string') throw new Error(`${fileURLToPath(file)} is not uniter-ts's package.json`);
  return pkg.version;
}

function printHelp(commands: Command[]): void {
  console.log('usage: uniter <command> [options]\n\ncommands:');
  for (const c of commands) console.log(`  ${c.name.padEnd(14)} ${c.summary}`);
  console.log("\n'uniter help <command>' or 'uniter <command> --help' shows a command's options; 'uniter --version' the version.");
}

export async function main(argv: string[]): Promise<void> {
  const [first, ...after] = argv;
  if (first === '--version' || first === '-v' || first === 'version') {
    console.log(packageVersion());
    return;
  }
  const commands = await loadCommands();
  // `uniter help CMD` is `uniter CMD --help`.
  const [name, ...rest] = first === 'help' && after.length > 0 ? [after[0], '--help'] : argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    printHelp(commands);
    return;
  }
  const cmd = commands.find((c) => c.name === name);
  if (!cmd) {
    console.error(`uniter: unknown command '${name}' (try 'uniter --help')`);
    process.exitCode = 2;
    return;
  }
  let code: number | void;
  try {
    code = await cmd.run(rest);
  } catch (e) {
    code = reportFailure(cmd.name, cmd.usage, e);
  }
  if (typeof code === 'number') process.exitCode = code;
}
