/**
 * Learning-rate schedules. The default is the official BERT-style schedule (`optim/sched.py`
 * `warmup_linear` + `get_lr_sched`): optimizer steps count from 1; the rate climbs linearly to
 * the peak over `warmupSteps`, then falls linearly to 0 at `totalSteps`. A rate that comes out
 * <= 0 is replaced by 1e-8, as the official training loop does, so the last step still moves.
 */

/** What the official loop substitutes for a non-positive learning rate. */
export const MIN_LEARNING_RATE = 1e-8;

export type ScheduleKind = 'linear' | 'constant';

export interface LrSchedule {
  /** 'linear': warm-up then linear decay to 0 at totalSteps; 'constant': warm-up then flat at the peak. */
  kind: ScheduleKind;
  peakLr: number;
  warmupSteps: number;
  totalSteps: number;
}

/**
 * The official `warmup_linear(step, warmup, total)` multiplier: step/warmup during warm-up,
 * then max(0, (total - step) / (total - warmup)).
 */
export function warmupLinear(step: number, warmupSteps: number, totalSteps: number): number {
  if (step < warmupSteps) return step / warmupSteps;
  // total == warmup would divide by zero in the official code; past warm-up there is nothing left to decay.
  if (totalSteps <= warmupSteps) return 0;
  return Math.max(0, (totalSteps - step) / (totalSteps - warmupSteps));
}

/** Multiplier of the constant schedule: the same linear warm-up, then 1. */
export function warmupConstant(step: number, warmupSteps: number): number {
  return step < warmupSteps ? step / warmupSteps : 1;
}

/** Learning rate of optimizer step `step` (1-based, as the official `global_step` after its increment). */
export function learningRateAt(step: number, schedule: LrSchedule): number {
  validateSchedule(schedule);
  const factor = schedule.kind === 'linear' ? warmupLinear(step, schedule.warmupSteps, schedule.totalSteps) : warmupConstant(step, schedule.warmupSteps);
  const lr = schedule.peakLr * factor;
  return lr <= 0 ? MIN_LEARNING_RATE : lr;
}

function validateSchedule(s: LrSchedule): void {
  if (s.kind !== 'linear' && s.kind !== 'constant') throw new Error(`learning-rate schedule: kind must be 'linear' or 'constant', got '${String(s.kind)}'`);
  if (!(Number.isFinite(s.peakLr) && s.peakLr > 0)) throw new Error(`learning-rate schedule: peakLr must be a positive number, got ${s.peakLr}`);
  if (!(Number.isInteger(s.warmupSteps) && s.warmupSteps >= 0)) throw new Error(`learning-rate schedule: warmupSteps must be an integer >= 0, got ${s.warmupSteps}`);
  if (!(Number.isInteger(s.totalSteps) && s.totalSteps > 0)) throw new Error(`learning-rate schedule: totalSteps must be a positive integer, got ${s.totalSteps}`);
}
