/** `uniter convert`: PyTorch checkpoints to model folders and back; region detectors to detector folders. */
import { SafetensorsError } from '../engine/safetensors.js';
import { DetectorConfigError } from '../detector/config.js';
import { CaffeError } from '../interop/caffe.js';
import {
  convertDetectorCaffe,
  convertDetectorTorch,
  convertTorchCheckpoint,
  exportTorchCheckpoint,
  exportTorchSafetensors,
  formatConvertReport,
  formatDetectorReport,
} from '../interop/convert.js';
import { DetectorWeightsError } from '../detector/weights.js';
import { looksLikeDetector } from '../interop/detector-weights.js';
import { readTorchCheckpoint } from '../interop/torch-checkpoint.js';
import { PickleError } from '../interop/torch-pickle.js';
import { TorchCheckpointError } from '../interop/torch-tensor.js';
import { parseArgs } from './args.js';
import type { Command } from './main.js';

const USAGE = `convert IN.pt OUT_DIR [--config model.json] [--ans2label ans2label.json]
      PyTorch checkpoint (torch.save zip, legacy or pre-1.0 tar format; .pt/.pth/.bin) -> OUT_DIR/config.json +
      OUT_DIR/model.safetensors: official names, float32, tied weights stored once. Without
      --config the config is inferred from tensor shapes; with it, the file's fields win and are
      checked against the shapes. --ans2label (the official VQA answer vocabulary) writes the
      answer names into config.json as id2label.
      A region detector's state dict (names under backbone. / proposal_generator. / roi_heads.,
      the BUTD Faster R-CNN port) becomes a detector folder instead; its --config is the
      reference's config as JSON (without it: inferred from the shapes on top of the VG config).
      An existing OUT_DIR is only replaced with --overwrite.
  uniter convert IN.caffemodel OUT_DIR --prototxt test.prototxt [--overwrite]
      the original bottom-up-attention Caffe release (weights + its test prototxt) -> a detector
      folder (see docs/detector.md, "Weights").
  uniter convert --to-torch-safetensors IN_DIR OUT.safetensors
      model folder -> safetensors with every official name (tied weights copied), for PyTorch's
      safetensors.torch.load_file + load_state_dict.
  uniter convert --to-torch IN_DIR OUT.pt [--legacy-format]
      model folder -> torch.save checkpoint (zip format, or the pre-1.6 stream format), for torch.load.`;

function usageProblem(paths: number, toSafetensors: boolean, toTorch: boolean, legacy: boolean, hasConfig: boolean, hasPrototxt: boolean, overwrite: boolean): string | null {
  if (paths !== 2) return `expected 2 paths, got ${paths}`;
  if ((hasPrototxt || overwrite) && (toSafetensors || toTorch)) return '--prototxt and --overwrite only apply to conversions into a detector folder';
  if (toSafetensors && toTorch) return 'choose one of --to-torch-safetensors and --to-torch';
  if (hasConfig && (toSafetensors || toTorch)) return '--config and --ans2label only apply to a PyTorch -> model folder conversion';
  if (legacy && !toTorch) return '--legacy-format only applies to --to-torch';
  return null;
}

export const command: Command = {
  name: 'convert',
  summary: 'convert PyTorch checkpoints (.pt) to model folders (safetensors + config) and back; BUTD region detectors (torch or Caffe) to detector folders',
  async run(argv: string[]): Promise<number> {
    let parsed;
    try {
      parsed = parseArgs(argv, { string: ['config', 'prototxt', 'ans2label'], boolean: ['to-torch-safetensors', 'to-torch', 'legacy-format', 'overwrite'] }, USAGE);
    } catch (e) {
      console.error(`uniter convert: ${(e as Error).message}`);
      return 2;
    }
    const toSafetensors = parsed.boolean['to-torch-safetensors'] === true;
    const toTorch = parsed.boolean['to-torch'] === true;
    const legacy = parsed.boolean['legacy-format'] === true;
    const configFile = parsed.string.config;
    const prototxt = parsed.string.prototxt;
    const overwrite = parsed.boolean.overwrite === true;
    const ans2label = parsed.string.ans2label;
    const problem = usageProblem(parsed.positional.length, toSafetensors, toTorch, legacy, configFile !== undefined || ans2label !== undefined, prototxt !== undefined, overwrite);
    if (problem) {
      console.error(`uniter convert: ${problem}\nusage: uniter ${USAGE}`);
      return 2;
    }
    const [input, output] = parsed.positional;
    try {
      if (toSafetensors) {
        const r = exportTorchSafetensors(input, output);
        console.log(`wrote ${r.file}: ${r.tensorCount} tensors${r.expanded.length ? ` (tied weights copied: ${r.expanded.join(', ')})` : ''}`);
      } else if (toTorch) {
        const r = exportTorchCheckpoint(input, output, legacy ? 'legacy' : 'zip');
        console.log(`wrote ${r.file}: ${r.tensorCount} tensors, torch.save ${legacy ? 'legacy' : 'zip'} format${r.expanded.length ? ` (tied weights share storage: ${r.expanded.join(', ')})` : ''}`);
      } else if (/\.caffemodel$/i.test(input)) {
        if (prototxt === undefined) {
          console.error(`uniter convert: ${input} is a Caffe model: pass its network with --prototxt FILE (the release's test.prototxt)\nusage: uniter ${USAGE}`);
          return 2;
        }
        if (configFile !== undefined) {
          console.error('uniter convert: --config does not apply to a .caffemodel (the config comes from the prototxt and the blob shapes)');
          return 2;
        }
        console.log(formatDetectorReport(convertDetectorCaffe(input, prototxt, output, { overwrite })));
      } else {
        if (prototxt !== undefined) {
          console.error(`uniter convert: --prototxt only applies to a .caffemodel input, got ${input}`);
          return 2;
        }
        const ckpt = readTorchCheckpoint(input);
        if (looksLikeDetector(ckpt.tensors.keys())) {
          if (ans2label !== undefined) {
            console.error('uniter convert: --ans2label only applies to a UNITER checkpoint (this one is a region detector)');
            return 2;
          }
          console.log(formatDetectorReport(convertDetectorTorch(ckpt, output, { configFile, overwrite })));
        } else {
          if (overwrite) {
            console.error('uniter convert: --overwrite only applies to detector folders (a UNITER conversion writes its two files in place)');
            return 2;
          }
          console.log(formatConvertReport(convertTorchCheckpoint(input, output, { configFile, ans2label, checkpoint: ckpt })));
        }
      }
      return 0;
    } catch (e) {
      if (
        e instanceof TorchCheckpointError ||
        e instanceof PickleError ||
        e instanceof SafetensorsError ||
        e instanceof CaffeError ||
        e instanceof DetectorWeightsError ||
        e instanceof DetectorConfigError
      ) {
        console.error(`uniter convert: ${e.message}`);
        return 1;
      }
      throw e;
    }
  },
};
