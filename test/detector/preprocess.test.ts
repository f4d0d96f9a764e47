import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { VG_CONFIG } from '../../src/detector/config.js';
import { preprocess } from '../../src/detector/preprocess.js';

const FIXTURE = fileURLToPath(new URL('../../../test/fixtures/detector/torch-resize-480x640.json', import.meta.url));

test("bilinear resize weights equal torch's at real sizes (480x640 -> 600x800), edges included", () => {
  const ref = JSON.parse(fs.readFileSync(FIXTURE, 'utf8')) as { alternating_columns_row0: number[]; alternating_rows_col0: number[] };
  const [H, W] = [480, 640];
  for (const [axis, expected] of [['columns', ref.alternating_columns_row0], ['rows', ref.alternating_rows_col0]] as const) {
    const data = new Uint8Array(H * W * 3);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) data.fill(((axis === 'columns' ? x : y) % 2) * 255, (y * W + x) * 3, (y * W + x) * 3 + 3);
    const p = preprocess({ height: H, width: W, data }, VG_CONFIG);
    assert.deepEqual([p.height, p.width], [600, 800]);
    const mean = Math.fround(VG_CONFIG.model.pixel_mean[0]);
    let worst = 0;
    expected.forEach((e, i) => {
      const got = axis === 'columns' ? p.data[i] : p.data[i * p.width];
      worst = Math.max(worst, Math.abs(got + mean - e));
    });
    // One float32 ulp at 255 is 1.5e-5; a float32 source coordinate would be off by up to ~0.01.
    assert.ok(worst <= 3.1e-5, `alternating ${axis}: max |ours - torch| = ${worst}`);
  }
});
