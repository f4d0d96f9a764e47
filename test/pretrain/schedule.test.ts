import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LrSchedule, MIN_LEARNING_RATE, learningRateAt, warmupLinear } from '../../src/pretrain/schedule.js';

const near = (a: number, b: number) => assert.ok(Math.abs(a - b) <= 1e-15 + 1e-12 * Math.abs(b), `${a} vs ${b}`);

describe('linear warm-up / linear decay (official get_lr_sched)', () => {
  const s: LrSchedule = { kind: 'linear', peakLr: 5e-5, warmupSteps: 10000, totalSteps: 200000 };

  it('climbs linearly from step 1 to the peak at warmup_steps', () => {
    near(learningRateAt(1, s), 5e-5 / 10000);
    near(learningRateAt(5000, s), 2.5e-5);
    near(learningRateAt(9999, s), (5e-5 * 9999) / 10000);
    near(learningRateAt(10000, s), 5e-5);
  });

  it('decays linearly to 0 at total steps, floored at 1e-8', () => {
    near(learningRateAt(105000, s), 2.5e-5);
    near(learningRateAt(199999, s), 5e-5 / 190000);
    assert.equal(learningRateAt(200000, s), MIN_LEARNING_RATE);
    assert.equal(learningRateAt(250000, s), MIN_LEARNING_RATE);
    // Step 0 (before the first update) would be 0, also floored.
    assert.equal(learningRateAt(0, s), MIN_LEARNING_RATE);
  });

  it('handles no warm-up and warm-up equal to the whole run', () => {
    near(learningRateAt(1, { ...s, warmupSteps: 0, totalSteps: 4 }), 5e-5 * 0.75);
    assert.equal(warmupLinear(10, 10, 10), 0);
    near(warmupLinear(5, 10, 10), 0.5);
  });

  it('constant schedule: same warm-up, then flat at the peak', () => {
    const c: LrSchedule = { kind: 'constant', peakLr: 1e-4, warmupSteps: 4, totalSteps: 10 };
    near(learningRateAt(2, c), 5e-5);
    near(learningRateAt(4, c), 1e-4);
    near(learningRateAt(10, c), 1e-4);
    near(learningRateAt(3, { ...c, warmupSteps: 0 }), 1e-4);
  });

  it('rejects nonsensical settings with the field name', () => {
    assert.throws(() => learningRateAt(1, { ...s, peakLr: -1 }), /peakLr must be a positive number/);
    assert.throws(() => learningRateAt(1, { ...s, totalSteps: 0 }), /totalSteps must be a positive integer/);
    assert.throws(() => learningRateAt(1, { ...s, warmupSteps: 1.5 }), /warmupSteps must be an integer/);
  });
});
