/**
 * The settings of the training loop that pre-training (trainer.ts TrainSettings) and fine-tuning
 * (finetune/trainer.ts FinetuneSettings) share: micro-batches, accumulation, AdamW, the schedule,
 * clipping, validation/checkpoint/log intervals, seed and the text-length filter. Each trainer
 * extends it with what only it has.
 */
export interface TrainLoopSettings {
  /** Tokens (padding included) per training micro-batch (official train_batch_size). */
  trainBatchTokens: number;
  /** Micro-batches per optimizer step (official gradient_accumulation_steps). */
  accumulation: number;
  /** Peak learning rate. */
  learningRate: number;
  warmupSteps: number;
  /** Optimizer steps of the run. */
  steps: number;
  /** Validate every N optimizer steps (and always after the last one); 0 = only at the end. */
  validEvery: number;
  /** Checkpoint every N steps (and always at the end); 0 = only at the end. */
  saveEvery: number;
  keepCheckpoints: number;
  logEvery: number;
  /** Global gradient-norm clip; <= 0 (official -1) disables clipping. */
  gradNorm: number;
  weightDecay: number;
  /** AdamW betas. */
  betas: [number, number];
  seed: number;
  /** Training examples with more wordpieces are dropped (official 60, VCR 220). */
  maxTxtLen: number;
  /**
   * Recompute each encoder layer's forward in the backward pass instead of keeping its
   * activations (config `checkpoint_activations`, default off): much less memory per token for
   * about one more forward pass per step. Same losses and gradients (within float rounding), so
   * it may change between a run and its resume.
   */
  checkpointActivations?: boolean;
}
