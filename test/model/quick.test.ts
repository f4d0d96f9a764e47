import { test } from 'node:test';
import { readSafetensors } from '../../src/engine/safetensors.js';
import { parseConfig } from '../../src/model/config.js';
import { UniterRunner } from '../../src/model/runner.js';
import * as fs from 'node:fs';

const dir = 'test/fixtures/golden/tiny';
test('quick parity', async () => {
  const cfg = parseConfig(JSON.parse(fs.readFileSync(`${dir}/config.json`, 'utf8')));
  const w = readSafetensors(`${dir}/weights.safetensors`).tensors;
  const r = new UniterRunner(cfg, w);
  for (const task of ['mlm', 'mrfr', 'mrc', 'mrckl', 'itm'] as const) {
    const batch = readSafetensors(`${dir}/${task}/batch.safetensors`).tensors;
    const exp = readSafetensors(`${dir}/${task}/expected.safetensors`).tensors;
    const out = await r.run(task, batch, { training: false, grads: true, capture: true, ot: { beta: 0.5, iterations: 50, lambda: 0.1 } });
    let worst = 0; let wn = '';
    for (const [k, e] of exp) {
      const o = out.get(k);
      if (!o) { if (!k.startsWith('grad.')) console.log(task, 'missing', k); continue; }
      let m = 0; let mag = 0;
      for (let i = 0; i < e.data.length; i++) { m = Math.max(m, Math.abs(Number(o.data[i]) - Number(e.data[i]))); mag = Math.max(mag, Math.abs(Number(e.data[i]))); }
      const rel = m / Math.max(1, mag);
      if (rel > worst) { worst = rel; wn = k; }
      if (rel > 1e-4) console.log(task, k, 'err', m, 'mag', mag);
    }
    console.log(task, 'worst', worst, wn);
  }
});
