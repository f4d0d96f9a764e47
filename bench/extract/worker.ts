/**
 * Our side of bench/extract: a long-lived process that loads the Detector once, prints
 * {"ready": true, ...}, then answers one JSON line per request line:
 *   {"op": "detect", "name": "img0"}  -> {"seconds", "cpu_seconds", "num_boxes"}
 *   rss                               -> {"max_rss_bytes" (VmHWM), "rss_bytes"}
 *   quit
 *
 *   node dist/bench/extract/worker.js --detector DIR --inputs FILE.safetensors [--threads 2]
 */
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { Detector } from '../../src/detector/detector.js';
import { readImages } from './images.js';

function say(o: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(o) + '\n');
}

function statusBytes(key: string): number | null {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : null;
}

function arg(name: string, dflt?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  if (dflt === undefined) throw new Error(`extract worker: --${name} is required`);
  return dflt;
}

async function main(): Promise<void> {
  const dir = arg('detector');
  const images = readImages(arg('inputs'));
  const threads = Number(arg('threads', '2'));
  const t0 = performance.now();
  const det = await Detector.fromPretrained(dir, { threads });
  say({ ready: true, side: 'ours', threads, images: [...images.keys()], init_s: (performance.now() - t0) / 1000, rss_bytes: statusBytes('VmRSS') });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const text = line.trim();
    if (!text) continue;
    if (text === 'quit') break;
    if (text === 'rss') {
      say({ max_rss_bytes: statusBytes('VmHWM'), rss_bytes: statusBytes('VmRSS') });
      continue;
    }
    try {
      const req = JSON.parse(text) as { op?: string; name?: string };
      const img = req.name === undefined ? undefined : images.get(req.name);
      if (req.op !== 'detect' || !img) throw new Error(`unknown request ${text.slice(0, 100)}`);
      const cpu = process.cpuUsage();
      const start = performance.now();
      const d = await det.detect(img);
      const used = process.cpuUsage(cpu);
      say({ seconds: (performance.now() - start) / 1000, cpu_seconds: (used.user + used.system) / 1e6, num_boxes: d.numBoxes, stages: det.lastRun });
    } catch (e) {
      say({ error: (e as Error).message });
    }
  }
  lines.close();
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
