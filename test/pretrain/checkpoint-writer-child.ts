/**
 * Child process for the checkpoint kill test: writes one checkpoint whose every parameter and
 * moment value equals the step number, and optionally freezes at a chosen point of the write
 * (printing "PAUSED") so the parent can SIGKILL it there.
 *
 * argv: outDir step tensorCount tensorSize pauseAt
 *   pauseAt: 'model-half' (model.safetensors half written), 'optimizer-half',
 *            'renamed' (directory in place, `latest` not yet updated) or 'none'.
 */
import { HostTensor } from '../../src/engine/host.js';
import { CheckpointProgress, MODEL_FILE, OPTIMIZER_FILE, saveCheckpoint } from '../../src/pretrain/checkpoint.js';

const [outDir, stepArg, countArg, sizeArg, pauseAt] = process.argv.slice(2);
const step = Number(stepArg);
const params = new Map<string, Float32Array>();
const shapes = new Map<string, number[]>();
const tensors = new Map<string, HostTensor>();
const paramSteps: Record<string, number> = {};
for (let i = 0; i < Number(countArg); i++) {
  const name = `uniter.encoder.layer.${i}.output.dense.weight`;
  params.set(name, new Float32Array(Number(sizeArg)).fill(step));
  shapes.set(name, [Number(sizeArg)]);
  tensors.set(`exp_avg.${name}`, { dtype: 'float32', shape: [Number(sizeArg)], data: new Float32Array(Number(sizeArg)).fill(step) });
  tensors.set(`exp_avg_sq.${name}`, { dtype: 'float32', shape: [Number(sizeArg)], data: new Float32Array(Number(sizeArg)).fill(step) });
  paramSteps[name] = step;
}

function freeze(): void {
  process.stdout.write('PAUSED\n');
  // Block this thread until the parent kills the process.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
}

const onProgress = (e: CheckpointProgress): void => {
  if (e.phase === 'write' && e.bytes * 2 >= e.totalBytes && e.bytes < e.totalBytes) {
    if ((pauseAt === 'model-half' && e.file === MODEL_FILE) || (pauseAt === 'optimizer-half' && e.file === OPTIMIZER_FILE)) freeze();
  }
  if (e.phase === 'renamed' && pauseAt === 'renamed') freeze();
};

process.stdout.write('WRITING\n');
saveCheckpoint(
  outDir,
  {
    step,
    params,
    shapes,
    optimizer: {
      tensors,
      json: { kind: 'adamw', betas: [0.9, 0.98], eps: 1e-6, weightDecay: 0.01, correctBias: true, stepCount: step, paramSteps, paramGroups: {} },
    },
    extra: { marker: step },
  },
  { onProgress, keepLast: 3 },
);
process.stdout.write('DONE\n');
