/**
 * Peak RSS of engine training steps (one by default) in a fresh worker process (bench/uniter/worker.ts): the
 * quick probe behind the training-memory changes of issue 19, at UNITER-base width with fewer
 * layers so that the per-layer slope shows in minutes. Memory is not load-sensitive; the seconds
 * printed are.
 *
 *   npm run build && node dist/bench/uniter/step-memory.js [--layers 4] [--task mlm|itm]
 *        [--examples 52] [--steps 1] [--checkpoint-activations] [--session-options JSON] [--worker PATH]
 *
 * checkpoint_activations in the output is what the worker reports (older builds know no such option).
 * --worker runs another build's worker (e.g. a copy of an older commit's dist/) on the same batch.
 * The environment is passed on, so allocator settings (MALLOC_MMAP_THRESHOLD_=131072) can be tried.
 * Prints one JSON line.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Server } from '../harness.js';
import { makeBatch, writeBatch } from './workload.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

async function main(argv: string[]): Promise<void> {
  const opt = (name: string, def: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : def;
  };
  const layers = opt('layers', '4');
  const task = opt('task', 'mlm');
  if (task !== 'mlm' && task !== 'itm') throw new Error(`step-memory: --task must be mlm or itm, got '${task}'`);
  const examples = Number(opt('examples', '52'));
  if (!Number.isInteger(examples) || examples < 2) throw new Error(`step-memory: --examples must be an integer >= 2, got '${opt('examples', '')}'`);
  const worker = path.resolve(opt('worker', path.join(HERE, 'worker.js')));
  const steps = Number(opt('steps', '1'));
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`step-memory: --steps must be a positive integer, got '${opt('steps', '')}'`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-step-memory-'));
  try {
    const file = path.join(dir, `${task}.safetensors`);
    writeBatch(file, makeBatch(task, { examples, regions: 36, wordpieces: 40 }));
    const args = [worker, 'serve', '--layers', layers, '--threads', '2'];
    if (argv.includes('--checkpoint-activations')) args.push('--checkpoint-activations', '1');
    const sessionOptions = opt('session-options', '');
    if (sessionOptions) args.push('--session-options', sessionOptions);
    const { server, ready } = await Server.start('engine worker', process.execPath, args);
    // The second step of a shape can differ from the first (ONNX Runtime plans a memory pattern from the first run).
    const peaks: number[] = [];
    let step: Record<string, unknown> = {};
    for (let i = 0; i < steps; i++) {
      step = await server.request({ op: 'train', task, batch: file });
      peaks.push(Number((((await server.request('rss')).max_rss_bytes as number) / 2 ** 30).toFixed(3)));
    }
    const rss = await server.request('rss');
    await server.quit();
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('MALLOC_') || k === 'GLIBC_TUNABLES'));
    console.log(JSON.stringify({ worker, layers: Number(layers), task, examples, checkpoint_activations: ready.checkpoint_activations === true, session_options: sessionOptions || null, env, loss: step.loss, seconds: step.seconds, peak_rss_gib_after_each_step: peaks, peak_rss_gib: Number(((rss.max_rss_bytes as number) / 2 ** 30).toFixed(3)), rss_after_gib: Number(((rss.rss_bytes as number) / 2 ** 30).toFixed(3)) }));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exit(1);
});
