/** `uniter convert`: PyTorch checkpoints to model folders and back; region detectors to detector folders. */
import {
  convertDetectorCaffe,
  convertDetectorTorch,
  convertTorchCheckpoint,
  exportTorchCheckpoint,
  exportTorchSafetensors,
  formatConvertReport,
  formatDetectorReport,
  type ConvertReport,
  type DetectorConvertReport,
  type ExportReport,
} from '../interop/convert.js';
import { looksLikeDetector } from '../interop/detector-weights.js';
import { readTorchCheckpoint } from '../interop/torch-checkpoint.js';
import { PhasedProgress, UsageError, guard, intFlag, parseArgs, printJsonLine } from './common.js';
import type { PhaseProgress } from '../util/progress.js';
import type { Command } from './main.js';

const USAGE = `convert IN.pt OUT_DIR [--config model.json | --num-heads N] [--ans2label ans2label.json] [--overwrite] [--json] [--quiet]
      PyTorch checkpoint (torch.save zip, legacy or pre-1.0 tar format; .pt/.pth/.bin) -> a model folder:
      OUT_DIR/config.json (model_type "uniter"), model.safetensors (official names, float32, tied weights
      stored once), vocab.txt and a README.md model card. The config comes from --config, else from the
      config beside IN (IN's name with .config.json, as --to-torch writes it, or config.json in IN's
      folder), else from the tensor shapes. Shapes do not show the head count: without a config that
      gives it, pass --num-heads (it is never guessed). The folder is built aside and loaded back before
      it is renamed into place: a conversion that would not load (wrong shapes, int8 tensors) is refused
      and leaves nothing behind.
      A region detector's state dict (names under backbone. / proposal_generator. / roi_heads., the BUTD
      Faster R-CNN port) becomes a detector folder instead; its --config is the reference's config as JSON
      (without it: inferred from the shapes on top of the VG config).
  uniter convert IN.caffemodel OUT_DIR --prototxt test.prototxt [--overwrite]
      the original bottom-up-attention Caffe release (weights + its test prototxt) -> a detector folder
      (see docs/detector.md, "Weights").
  uniter convert --to-torch-safetensors IN_DIR OUT.safetensors [--overwrite]
      model folder -> safetensors with every official name (tied weights copied), for PyTorch's
      safetensors.torch.load_file + load_state_dict; the folder's config goes beside it as OUT.config.json.
  uniter convert --to-torch IN_DIR OUT.pt [--legacy-format] [--overwrite]
      model folder -> torch.save checkpoint (zip format, or the pre-1.6 stream format), for torch.load;
      the folder's config goes beside it as OUT.config.json, so converting OUT.pt back gives the same model.

  --config FILE            model config JSON (official field names); its fields win and are checked against the shapes.
                           For a detector: the reference detector config as JSON
  --num-heads N            num_attention_heads, when no config gives it (UNITER-base 12, UNITER-large 16)
  --ans2label FILE         the official VQA answer vocabulary: writes the answer names into config.json as id2label
  --prototxt FILE          the Caffe network of a .caffemodel (the release's test.prototxt)
  --to-torch               model folder -> torch.save checkpoint
  --to-torch-safetensors   model folder -> safetensors with every official name
  --legacy-format          with --to-torch: the pre-1.6 torch.save stream format
  --overwrite              replace an existing output (a folder is replaced atomically; without it, existing output is refused)
  --json                   print one JSON line describing what was written (progress still goes to stderr)
  --quiet                  no progress and no messages (errors still go to stderr)
  Progress on stderr, phase by phase (reading, decoding, writing, loading back) in MiB with rate and ETA:
  a live line on a terminal, otherwise a line every 10 s (every UNITER_PROGRESS_INTERVAL seconds when set).`;

function usageProblem(paths: number, toSafetensors: boolean, toTorch: boolean, legacy: boolean, hasConfig: boolean, hasPrototxt: boolean): string | null {
  if (paths !== 2) return `expected 2 paths, got ${paths}`;
  if (hasPrototxt && (toSafetensors || toTorch)) return '--prototxt only applies to conversions into a detector folder';
  if (toSafetensors && toTorch) return 'choose one of --to-torch-safetensors and --to-torch';
  if (hasConfig && (toSafetensors || toTorch)) return '--config, --num-heads and --ans2label only apply to a PyTorch -> model folder conversion';
  if (legacy && !toTorch) return '--legacy-format only applies to --to-torch';
  return null;
}

interface ConvertRequest {
  input: string;
  output: string;
  toSafetensors: boolean;
  toTorch: boolean;
  legacy: boolean;
  configFile?: string;
  prototxt?: string;
  ans2label?: string;
  numHeads?: number;
  overwrite: boolean;
}

/** Run the conversion the flags ask for; returns the report as text and as the --json value. */
function convert(q: ConvertRequest, onProgress: PhaseProgress): { text: string; value: Record<string, unknown> } {
  const { input, output, overwrite, configFile, numHeads, ans2label, prototxt } = q;
  const detector = (r: DetectorConvertReport) => ({ text: formatDetectorReport(r), value: { kind: 'detector', input: r.input, out: r.outDir, config: r.configFile, weights: r.weightsFile, tensors: r.tensorCount, dropped: r.dropped.length } });
  if (q.toSafetensors || q.toTorch) {
    const r: ExportReport = q.toSafetensors ? exportTorchSafetensors(input, output, { overwrite, onProgress }) : exportTorchCheckpoint(input, output, q.legacy ? 'legacy' : 'zip', { overwrite, onProgress });
    const how = q.toSafetensors ? `${r.tensorCount} tensors${r.expanded.length ? ` (tied weights copied: ${r.expanded.join(', ')})` : ''}` : `${r.tensorCount} tensors, torch.save ${q.legacy ? 'legacy' : 'zip'} format${r.expanded.length ? ` (tied weights share storage: ${r.expanded.join(', ')})` : ''}`;
    return {
      text: `wrote ${r.file}: ${how}${r.configFile ? `\nwrote ${r.configFile} (the model config; 'uniter convert ${r.file} DIR' reads it back)` : ''}`,
      value: { kind: q.toSafetensors ? 'safetensors' : 'torch', file: r.file, config: r.configFile, tensors: r.tensorCount, tiedExpanded: r.expanded },
    };
  }
  if (/\.caffemodel$/i.test(input)) {
    if (prototxt === undefined) throw new UsageError(`${input} is a Caffe model: pass its network with --prototxt FILE (the release's test.prototxt)`);
    if (configFile !== undefined || numHeads !== undefined || ans2label !== undefined) throw new UsageError('--config, --num-heads and --ans2label do not apply to a .caffemodel (the config comes from the prototxt and the blob shapes)');
    return detector(convertDetectorCaffe(input, prototxt, output, { overwrite, onProgress }));
  }
  if (prototxt !== undefined) throw new UsageError(`--prototxt only applies to a .caffemodel input, got ${input}`);
  const ckpt = readTorchCheckpoint(input, onProgress);
  if (looksLikeDetector(ckpt.tensors.keys())) {
    if (ans2label !== undefined || numHeads !== undefined) throw new UsageError('--ans2label and --num-heads only apply to a UNITER checkpoint (this one is a region detector)');
    return detector(convertDetectorTorch(ckpt, output, { configFile, overwrite, onProgress }));
  }
  const r: ConvertReport = convertTorchCheckpoint(input, output, { configFile, ans2label, checkpoint: ckpt, numHeads, overwrite, onProgress });
  return {
    text: formatConvertReport(r),
    value: { kind: 'model', input, out: output, config: r.config, configSource: r.configSource, tensors: r.tensors.size, tied: r.tied, casts: r.casts.map((c) => ({ from: c.from, to: c.to, count: c.names.length })), warnings: r.warnings },
  };
}

async function runConvert(argv: string[]): Promise<number> {
  const parsed = parseArgs(argv, { string: ['config', 'prototxt', 'ans2label', 'num-heads'], boolean: ['to-torch-safetensors', 'to-torch', 'legacy-format', 'overwrite', 'json', 'quiet'] }, USAGE);
  const q: ConvertRequest = {
    input: parsed.positional[0],
    output: parsed.positional[1],
    toSafetensors: parsed.boolean['to-torch-safetensors'] === true,
    toTorch: parsed.boolean['to-torch'] === true,
    legacy: parsed.boolean['legacy-format'] === true,
    configFile: parsed.string.config,
    prototxt: parsed.string.prototxt,
    ans2label: parsed.string.ans2label,
    numHeads: parsed.string['num-heads'] !== undefined ? intFlag(parsed.string['num-heads'], '--num-heads', 1) : undefined,
    overwrite: parsed.boolean.overwrite === true,
  };
  const json = parsed.boolean.json === true;
  const quiet = parsed.boolean.quiet === true;
  const problem = usageProblem(parsed.positional.length, q.toSafetensors, q.toTorch, q.legacy, q.configFile !== undefined || q.ans2label !== undefined || q.numHeads !== undefined, q.prototxt !== undefined);
  if (problem) throw new UsageError(problem);
  // Progress on stderr, phase by phase: reading, decoding, writing and loading back take seconds each for UNITER-large.
  const t0 = Date.now();
  const progress = new PhasedProgress({ unit: 'bytes', quiet });
  let result;
  try {
    result = convert(q, progress.callback);
  } finally {
    progress.finish();
  }
  if (!quiet) process.stderr.write(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  if (json) printJsonLine(result.value);
  else if (!quiet) console.log(result.text);
  return 0;
}

export const command: Command = {
  name: 'convert',
  summary: 'convert PyTorch checkpoints (.pt) to model folders (safetensors + config) and back; BUTD region detectors (torch or Caffe) to detector folders',
  usage: USAGE,
  run: (argv) => guard('convert', USAGE, () => runConvert(argv)),
};
