/** `uniter convert`: PyTorch checkpoints to model folders and back. */
import { SafetensorsError } from '../engine/safetensors.js';
import { convertTorchCheckpoint, exportTorchCheckpoint, exportTorchSafetensors, formatConvertReport } from '../interop/convert.js';
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
  uniter convert --to-torch-safetensors IN_DIR OUT.safetensors
      model folder -> safetensors with every official name (tied weights copied), for PyTorch's
      safetensors.torch.load_file + load_state_dict.
  uniter convert --to-torch IN_DIR OUT.pt [--legacy-format]
      model folder -> torch.save checkpoint (zip format, or the pre-1.6 stream format), for torch.load.`;

function usageProblem(paths: number, toSafetensors: boolean, toTorch: boolean, legacy: boolean, hasConfig: boolean): string | null {
  if (paths !== 2) return `expected 2 paths, got ${paths}`;
  if (toSafetensors && toTorch) return 'choose one of --to-torch-safetensors and --to-torch';
  if (hasConfig && (toSafetensors || toTorch)) return '--config and --ans2label only apply to a PyTorch -> model folder conversion';
  if (legacy && !toTorch) return '--legacy-format only applies to --to-torch';
  return null;
}

export const command: Command = {
  name: 'convert',
  summary: 'convert PyTorch checkpoints (.pt) to model folders (safetensors + config) and back',
  async run(argv: string[]): Promise<number> {
    let parsed;
    try {
      parsed = parseArgs(argv, { string: ['config', 'ans2label'], boolean: ['to-torch-safetensors', 'to-torch', 'legacy-format'] }, USAGE);
    } catch (e) {
      console.error(`uniter convert: ${(e as Error).message}`);
      return 2;
    }
    const toSafetensors = parsed.boolean['to-torch-safetensors'] === true;
    const toTorch = parsed.boolean['to-torch'] === true;
    const legacy = parsed.boolean['legacy-format'] === true;
    const configFile = parsed.string.config;
    const ans2label = parsed.string.ans2label;
    const problem = usageProblem(parsed.positional.length, toSafetensors, toTorch, legacy, configFile !== undefined || ans2label !== undefined);
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
      } else {
        console.log(formatConvertReport(convertTorchCheckpoint(input, output, { configFile, ans2label })));
      }
      return 0;
    } catch (e) {
      if (e instanceof TorchCheckpointError || e instanceof PickleError || e instanceof SafetensorsError) {
        console.error(`uniter convert: ${e.message}`);
        return 1;
      }
      throw e;
    }
  },
};
