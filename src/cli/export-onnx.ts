/** `uniter export-onnx`: a model folder -> a standalone ONNX scoring graph (+ JSON sidecar). */
import { ExportResult, exportOnnx } from '../export/export.js';
import { MAX_OPSET, MIN_OPSET } from '../export/onnx-file.js';
import { TASK_REQUESTS, TaskRequest } from '../api/scoring-heads.js';
import { PhasedProgress, UsageError, guard, intFlag, parseArgs, printJsonLine } from './common.js';
import type { Command } from './main.js';

const USAGE = `export-onnx --checkpoint DIR OUT.onnx [--task T] [--nlvr2-head paired-attn|paired|triplet] [--re-mlp 1|2]
      [--pooled-output] [--opset N] [--external-data] [--verify] [--int8] [--json] [--quiet]
  --checkpoint DIR  a model folder (config.json + model.safetensors, as 'uniter convert' and the trainers write)
                    or a training checkpoint directory (OUT/ckpt/step_N)
  --task            itm | vqa | ve | nlvr2 | refexp | retrieval | vcr (default: the head the weights hold;
                    nlvr2 and refexp take the variant the weights hold)
  --nlvr2-head      NLVR2 head variant (default: the one the weights hold, paired-attn in the paper's setup)
  --re-mlp          referring-expression head: 1 (Linear) or 2 (MLP, the RefCOCO+ setup)
  --pooled-output   also output pooled_output (not for the paired-attn NLVR2 and RE heads)
  --opset N         opset to stamp, ${MIN_OPSET}..${MAX_OPSET} (default ${MIN_OPSET})
  --external-data   weights in OUT.onnx.data (automatic when they exceed the 2 GiB protobuf limit)
  --int8            quantize the encoder's linear layers to int8 (com.microsoft DynamicQuantizeMatMul: needs
                    ONNX Runtime; per-channel int8 weights inside the file, activations quantized at run time)
  --verify          run OUT.onnx in a fresh ONNX Runtime session on generated batches of two sizes and
                    compare with the library's outputs at the same precision (|diff| <= 1e-5 x max(1, |value|));
                    exit 1 if not. With --int8 that is the library's int8 run, and the session runs with
                    weight prepacking off: prepacked float GEMMs sum in another order, and quantizing the
                    activations turns that ulp into a whole quantization step, so a default session's int8
                    scores may differ from the library's by as much as int8's own error (see docs/api.md)
  --json            print one JSON line (file, task, opset, inputs, outputs, sidecar, verification)
  --quiet           no progress and no messages (errors still go to stderr)
  Writes OUT.onnx and OUT.onnx.json (inputs, outputs, dims, config), each atomically. Progress on stderr
  (reading the weights, writing each file, the verification batches) with rate and ETA: a live line on a
  terminal, otherwise a line every 10 s (every UNITER_PROGRESS_INTERVAL seconds when set).`;

const NLVR2_HEADS: Record<string, TaskRequest> = { 'paired-attn': 'nlvr2_paired_attn', paired: 'nlvr2_paired', triplet: 'nlvr2_triplet' };
const RE_HEADS: Record<string, TaskRequest> = { '1': 're_mlp1', '2': 're_mlp2' };

/** The task the flags ask for, or an error message. */
function taskFromFlags(task: string | undefined, nlvr2Head: string | undefined, reMlp: string | undefined): TaskRequest | undefined | { error: string } {
  if (task !== undefined && !TASK_REQUESTS.includes(task as TaskRequest)) return { error: `unknown task '${task}' (expected itm, vqa, ve, nlvr2, refexp, retrieval or vcr)` };
  if (nlvr2Head !== undefined) {
    if (!(nlvr2Head in NLVR2_HEADS)) return { error: `--nlvr2-head must be one of ${Object.keys(NLVR2_HEADS).join(', ')}, got '${nlvr2Head}'` };
    if (task !== undefined && task !== 'nlvr2' && task !== NLVR2_HEADS[nlvr2Head]) return { error: `--nlvr2-head only applies to --task nlvr2` };
    return NLVR2_HEADS[nlvr2Head];
  }
  if (reMlp !== undefined) {
    if (!(reMlp in RE_HEADS)) return { error: `--re-mlp must be 1 or 2, got '${reMlp}'` };
    if (task !== undefined && task !== 'refexp' && task !== RE_HEADS[reMlp]) return { error: `--re-mlp only applies to --task refexp` };
    return RE_HEADS[reMlp];
  }
  return task as TaskRequest | undefined;
}

function describe(r: ExportResult): string {
  const lines: string[] = [];
  const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
  const where = r.dataFile ? `weights in ${r.dataFile}` : 'weights inside';
  lines.push(`wrote ${r.file}: task ${r.task}${r.precision === 'int8' ? ' (int8)' : ''}, opset ${r.written.opset}, ${r.written.weightCount} weight tensors (${mb(r.written.weightBytes)}, ${where})`);
  const io = (x: { name: string; dtype: string; shape: Array<string | number> }) => `${x.name} ${x.dtype} [${x.shape.join(', ')}]`;
  lines.push(`  inputs:  ${r.inputs.map(io).join(', ')}`);
  lines.push(`  outputs: ${r.outputs.map(io).join(', ')}`);
  lines.push(`  sidecar: ${r.sidecarFile}`);
  const v = r.verification;
  if (v) {
    for (const c of v.cases) {
      const dims = Object.entries(c.dims).map(([k, n]) => `${k}=${n}`).join(' ');
      lines.push(`  verify ${c.output.padEnd(14)} ${dims.padEnd(24)} max |diff| ${c.maxAbsDiff.toExponential(2)} ${c.ok ? 'ok' : 'MISMATCH'}`);
    }
    lines.push(v.ok ? `verified: the ONNX file matches the library's ${v.precision} run (tolerance ${v.tolerance})` : `verification FAILED: outputs differ from the library's ${v.precision} run by more than ${v.tolerance}`);
  }
  return lines.join('\n');
}

async function runExport(argv: string[]): Promise<number> {
  const parsed = parseArgs(argv, { string: ['checkpoint', 'task', 'nlvr2-head', 're-mlp', 'opset'], boolean: ['pooled-output', 'external-data', 'verify', 'int8', 'json', 'quiet'] }, USAGE);
  const checkpoint = parsed.string.checkpoint;
  if (!checkpoint) throw new UsageError('--checkpoint DIR is required');
  if (parsed.positional.length !== 1) throw new UsageError(`expected one output path (OUT.onnx), got ${parsed.positional.length}`);
  const task = taskFromFlags(parsed.string.task, parsed.string['nlvr2-head'], parsed.string['re-mlp']);
  if (typeof task === 'object') throw new UsageError(task.error);
  const opset = parsed.string.opset === undefined ? undefined : intFlag(parsed.string.opset, '--opset', MIN_OPSET);
  if (opset !== undefined && opset > MAX_OPSET) throw new UsageError(`--opset must be ${MIN_OPSET}..${MAX_OPSET}, got ${opset}`);
  const t0 = Date.now();
  const quiet = parsed.boolean.quiet === true;
  if (!quiet) process.stderr.write(`exporting ${checkpoint} -> ${parsed.positional[0]}${parsed.boolean.verify ? ', then verifying it in a fresh ONNX Runtime session' : ''}\n`);
  // Progress on stderr: reading the weights, writing the file(s), the verification batches.
  const progress = new PhasedProgress({ unit: 'bytes', quiet });
  let r: ExportResult;
  try {
    r = await exportOnnx({
      checkpoint,
      out: parsed.positional[0],
      task,
      opset,
      pooledOutput: parsed.boolean['pooled-output'] === true,
      externalData: parsed.boolean['external-data'] === true ? true : 'auto',
      verify: parsed.boolean.verify === true,
      precision: parsed.boolean.int8 === true ? 'int8' : 'float32',
      onProgress: progress.callback,
    });
  } finally {
    progress.finish();
  }
  if (!quiet) process.stderr.write(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  if (parsed.boolean.json) printJsonLine({ file: r.file, task: r.task, opset: r.written.opset, weights: r.written.weightCount, dataFile: r.dataFile ?? null, sidecar: r.sidecarFile, inputs: r.inputs, outputs: r.outputs, verification: r.verification ?? null });
  else if (!quiet) console.log(describe(r));
  return r.verification && !r.verification.ok ? 1 : 0;
}

export const command: Command = {
  name: 'export-onnx',
  summary: 'export a model folder as a standalone ONNX scoring graph (itm, vqa, ve, nlvr2, refexp, retrieval, vcr)',
  usage: USAGE,
  run: (argv) => guard('export-onnx', USAGE, () => runExport(argv)),
};
