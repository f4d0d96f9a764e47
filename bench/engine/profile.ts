/**
 * Summarise an ONNX Runtime profile trace (written by `worker.js time ... --profile <prefix>`):
 * kernel time and memory traffic (input + output elements x 4 bytes) per op type, per run, and
 * the slowest individual nodes with their shapes.
 *
 *   node dist/bench/engine/profile.js <prefix>_<timestamp>.json [--top 25]
 */
import * as fs from 'node:fs';

interface TraceEvent {
  cat?: string;
  name: string;
  dur?: number;
  args?: {
    op_name?: string;
    input_type_shape?: Array<Record<string, number[]>>;
    output_type_shape?: Array<Record<string, number[]>>;
  };
}

const elements = (shapes: Array<Record<string, number[]>> | undefined): number =>
  (shapes ?? []).reduce((sum, s) => sum + Object.values(s)[0].reduce((a, b) => a * b, 1), 0);

const shapesOf = (shapes: Array<Record<string, number[]>> | undefined): string => (shapes ?? []).map((s) => `[${Object.values(s)[0].join(',')}]`).join(' ');

function main(): void {
  const args = process.argv.slice(2);
  const file = args.find((a) => !a.startsWith('--'));
  const topAt = args.indexOf('--top');
  const top = topAt >= 0 ? Number(args[topAt + 1]) : 25;
  if (!file) throw new Error('usage: profile.js <ort-profile.json> [--top N]');
  let events: TraceEvent[];
  try {
    events = JSON.parse(fs.readFileSync(file, 'utf8')) as TraceEvent[];
  } catch (e) {
    throw new Error(`${file}: not a readable ONNX Runtime profile (${(e as Error).message})`);
  }
  const runs = Math.max(1, events.filter((e) => e.name === 'model_run').length);
  const byOp = new Map<string, { nodes: Set<string>; us: number; elements: number }>();
  const byNode = new Map<string, { op: string; us: number; shapes: string }>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || !e.args?.op_name) continue;
    const node = e.name.slice(0, -'_kernel_time'.length);
    const op = e.args.op_name;
    const rec = byOp.get(op) ?? { nodes: new Set(), us: 0, elements: 0 };
    rec.nodes.add(node);
    rec.us += e.dur ?? 0;
    rec.elements += elements(e.args.input_type_shape) + elements(e.args.output_type_shape);
    byOp.set(op, rec);
    const n = byNode.get(node) ?? { op, us: 0, shapes: `${shapesOf(e.args.input_type_shape)} -> ${shapesOf(e.args.output_type_shape)}` };
    n.us += e.dur ?? 0;
    byNode.set(node, n);
  }
  const total = [...byOp.values()].reduce((s, r) => s + r.us, 0);
  console.log(`${file}: ${runs} runs, kernel time ${(total / 1000 / runs).toFixed(1)} ms per run`);
  console.log('op type                 nodes   ms/run   share   MB moved/run');
  for (const [op, r] of [...byOp.entries()].sort((a, b) => b[1].us - a[1].us)) {
    console.log(
      `${op.padEnd(22)} ${String(r.nodes.size).padStart(6)} ${(r.us / 1000 / runs).toFixed(1).padStart(8)} ${((100 * r.us) / total).toFixed(1).padStart(6)}% ${((r.elements * 4) / 1e6 / runs).toFixed(1).padStart(10)}`,
    );
  }
  console.log(`\nslowest ${top} nodes:`);
  for (const [node, n] of [...byNode.entries()].sort((a, b) => b[1].us - a[1].us).slice(0, top)) {
    console.log(`${(n.us / 1000 / runs).toFixed(1).padStart(8)} ms  ${n.op.padEnd(18)} ${node.slice(0, 40).padEnd(40)} ${n.shapes}`);
  }
}

try {
  main();
} catch (e) {
  console.error(e instanceof Error ? e.message : String(e));
  process.exit(1);
}
