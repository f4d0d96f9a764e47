/** The `uniter` binary: one subcommand per job, each in its own file under src/cli/. */
export interface Command {
  name: string;
  summary: string;
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

export async function main(argv: string[]): Promise<void> {
  const commands = await loadCommands();
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log('usage: uniter <command> [options]\n\ncommands:');
    for (const c of commands) console.log(`  ${c.name.padEnd(14)} ${c.summary}`);
    return;
  }
  const cmd = commands.find((c) => c.name === name);
  if (!cmd) {
    console.error(`uniter: unknown command '${name}' (try 'uniter --help')`);
    process.exitCode = 2;
    return;
  }
  const code = await cmd.run(rest);
  if (typeof code === 'number') process.exitCode = code;
}
