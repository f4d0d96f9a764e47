/** A small, strict argument parser shared by every command: unknown flags are errors. */
export interface ParsedArgs {
  positional: string[];
  string: Record<string, string | undefined>;
  boolean: Record<string, boolean>;
}

export function parseArgs(argv: string[], spec: { string?: string[]; boolean?: string[] }, usage: string): ParsedArgs {
  const out: ParsedArgs = { positional: [], string: {}, boolean: {} };
  const strings = new Set(spec.string ?? []);
  const bools = new Set(spec.boolean ?? []);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      console.log(`usage: uniter ${usage}`);
      process.exit(0);
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const key = a.slice(2, eq > 0 ? eq : undefined);
      if (bools.has(key)) {
        out.boolean[key] = true;
      } else if (strings.has(key)) {
        const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
        if (v === undefined) throw new Error(`option --${key} needs a value (usage: uniter ${usage})`);
        out.string[key] = v;
      } else {
        throw new Error(`unknown option --${key} (usage: uniter ${usage})`);
      }
    } else out.positional.push(a);
  }
  return out;
}
