/**
 * Where an optimizer step's time goes, as the training log's `time` field (seconds):
 *   step       the whole step (data to optimizer, validation and checkpoints excluded)
 *   data       taking batches from the loader
 *   feeds      building the graph inputs (batch tensors, dropout masks)      } in UniterRunner.run /
 *   session    inside ONNX Runtime (forward + backward)                       } Program.run
 *   outputs    turning ONNX Runtime's outputs into host tensors              }
 *   grads      summing micro-batch gradients (and reading the loss)
 *   optimizer  gradient norm (when clipping) and the AdamW update
 * What is left of `step` is the rest of the loop (the task's own work around the run, if any).
 */
import type { RunTimings } from '../engine/runtime.js';

export interface StepTime extends RunTimings {
  step: number;
  data: number;
  grads: number;
  optimizer: number;
}

export function newStepTime(): StepTime {
  return { step: 0, data: 0, feeds: 0, session: 0, outputs: 0, grads: 0, optimizer: 0 };
}

/** The same times rounded to the millisecond, for the log. */
export function roundedTime(t: StepTime): StepTime {
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return { step: r(t.step), data: r(t.data), feeds: r(t.feeds), session: r(t.session), outputs: r(t.outputs), grads: r(t.grads), optimizer: r(t.optimizer) };
}
