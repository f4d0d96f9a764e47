/** The bulk mask fill draws exactly what one nextU32 per element would, and leaves the same state. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/util/rng.js';

test('fillThreshold matches nextU32 element by element and continues the same stream', () => {
  const a = new Rng(42, 'dropout', 3, 'site');
  const b = new Rng(42, 'dropout', 3, 'site');
  const threshold = 0.9 * 4294967296;
  const out = new Float32Array(10007);
  a.fillThreshold(out, threshold, 1 / 0.9);
  for (let i = 0; i < out.length; i++) assert.equal(out[i], b.nextU32() < threshold ? Math.fround(1 / 0.9) : 0, `element ${i}`);
  assert.deepEqual(a.getState(), b.getState());
  assert.equal(a.nextU32(), b.nextU32());
});
