import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { command } from '../../src/cli/convert.js';
import { runCommand } from '../helpers/cli.js';
import { HostTensor, floatToHalf, halfToFloat } from '../../src/engine/host.js';
import { readSafetensors } from '../../src/engine/safetensors.js';
import { PyDict } from '../../src/interop/torch-pickle.js';
import { readTorchCheckpoint } from '../../src/interop/torch-checkpoint.js';
import { serializeTorchZip, stateDictFromHost } from '../../src/interop/torch-writer.js';

const GOLDEN = fileURLToPath(new URL('../../../test/fixtures/golden/tiny/', import.meta.url));
const GOLDEN_CONFIG = path.join(GOLDEN, 'config.json');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-convert-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));

const golden = readSafetensors(path.join(GOLDEN, 'weights.safetensors'));
const goldenTied = JSON.parse(golden.metadata.tied) as Record<string, string>;

const runCli = (args: string[]) => runCommand(command, args);

/** The golden float32 value as it comes back from a float16 checkpoint. */
const viaHalf = (v: number) => Math.fround(halfToFloat(floatToHalf(v)));

/**
 * The golden model as an old-style AMP checkpoint: float16, wrapped in {'model_state': ...},
 * `bert.` instead of `uniter.`, TF LayerNorm names, ties as shared storages.
 */
function oldStyleCheckpoint(file: string): Map<string, string> {
  const fileNameOf = new Map<string, string>();
  const oldName = (n: string) => n.replace(/^uniter\./, 'bert.').replace(/LayerNorm\.weight$/, 'LayerNorm.gamma').replace(/LayerNorm\.bias$/, 'LayerNorm.beta');
  const renamed = new Map<string, HostTensor>();
  for (const [n, t] of golden.tensors) {
    renamed.set(oldName(n), t);
    fileNameOf.set(n, oldName(n));
  }
  const tied = Object.fromEntries(Object.entries(goldenTied).map(([a, p]) => [oldName(a), oldName(p)]));
  const wrapper = new PyDict();
  wrapper.entries.set('model_state', stateDictFromHost(renamed, { tied, floatDtype: 'float16' }));
  wrapper.entries.set('step', 6500);
  fs.writeFileSync(file, serializeTorchZip(wrapper, { archiveName: 'model_step_6500' }));
  return fileNameOf;
}

describe('uniter convert (end to end)', () => {
  const ckpt = path.join(TMP, 'model_step_6500.pt');
  const outDir = path.join(TMP, 'model');
  let fileNames: Map<string, string>;

  before(() => {
    fileNames = oldStyleCheckpoint(ckpt);
  });

  it('converts an old-style float16 checkpoint to a model folder with official names', async () => {
    const r = await runCli([ckpt, outDir, '--config', GOLDEN_CONFIG]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /torch zip format, state dict under 'model_state'/);
    assert.match(r.out, /70 tensors -> 68 stored \+ 2 tied aliases/);
    assert.match(r.out, /cast float16 -> float32: 68 tensors \(exact\)/);
    assert.match(r.out, /tied: cls\.predictions\.decoder\.weight -> uniter\.embeddings\.word_embeddings\.weight \(shared storage\)/);
    const renamedCount = [...fileNames].filter(([official, inFile]) => official !== inFile).length;
    assert.ok(renamedCount > 40);
    assert.match(r.out, new RegExp(`renamed ${renamedCount} keys:`));
    assert.deepEqual(fs.readdirSync(outDir).sort(), ['README.md', 'config.json', 'model.safetensors', 'vocab.txt']); // nothing temporary left behind
    assert.deepEqual(fs.readdirSync(TMP).filter((n) => n.startsWith('.')), []);

    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(outDir, 'config.json'), 'utf8')), { model_type: 'uniter', ...JSON.parse(fs.readFileSync(GOLDEN_CONFIG, 'utf8')) });
    const converted = readSafetensors(path.join(outDir, 'model.safetensors'));
    assert.deepEqual(JSON.parse(converted.metadata.tied), goldenTied);
    const expectedNames = [...golden.tensors.keys()].sort(); // the golden file stores ties once, too
    assert.deepEqual([...converted.tensors.keys()].sort(), expectedNames);
    for (const name of expectedNames) {
      const g = golden.tensors.get(name) as HostTensor;
      const c = converted.tensors.get(name) as HostTensor;
      assert.equal(c.dtype, 'float32', name);
      assert.deepEqual(c.shape, g.shape, name);
      const want = Float32Array.from(g.data as Float32Array, viaHalf);
      assert.deepEqual(c.data, want, `${name} (file name ${fileNames.get(name)})`);
    }
  });

  it('refuses to guess the head count of a hidden size of 32 without --config', async () => {
    const r = await runCli([ckpt, path.join(TMP, 'noconfig')]);
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot infer config field 'num_attention_heads'.*--config/);
    assert.ok(!fs.existsSync(path.join(TMP, 'noconfig', 'config.json')));
  });

  it('--to-torch-safetensors writes every official name, ties expanded', async () => {
    const out = path.join(TMP, 'torch.safetensors');
    const r = await runCli(['--to-torch-safetensors', outDir, out]);
    assert.equal(r.code, 0, r.err);
    const st = readSafetensors(out);
    assert.deepEqual([...st.tensors.keys()].sort(), [...golden.tensors.keys(), ...Object.keys(goldenTied)].sort());
    for (const [alias, primary] of Object.entries(goldenTied)) {
      const a = st.tensors.get(alias) as HostTensor;
      assert.deepEqual(a, st.tensors.get(primary));
      assert.deepEqual(a.data, Float32Array.from(golden.tensors.get(primary)?.data as Float32Array, viaHalf));
    }
  });

  for (const legacy of [false, true]) {
    it(`--to-torch${legacy ? ' --legacy-format' : ''} writes a checkpoint whose ties share storage and that converts back identically`, async () => {
      const pt = path.join(TMP, legacy ? 'back.legacy.pt' : 'back.pt');
      const r = await runCli(['--to-torch', outDir, pt, ...(legacy ? ['--legacy-format'] : [])]);
      assert.equal(r.code, 0, r.err);
      const back = readTorchCheckpoint(pt);
      assert.equal(back.format, legacy ? 'legacy' : 'zip');
      assert.equal(back.tensors.size, golden.tensors.size + Object.keys(goldenTied).length);
      assert.deepEqual(Object.fromEntries(back.ties), goldenTied);
      const again = path.join(TMP, legacy ? 'again-legacy' : 'again');
      const r2 = await runCli([pt, again, '--config', GOLDEN_CONFIG]);
      assert.equal(r2.code, 0, r2.err);
      assert.match(r2.out, /dtypes kept \(no cast needed\)/);
      const first = readSafetensors(path.join(outDir, 'model.safetensors'));
      const second = readSafetensors(path.join(again, 'model.safetensors'));
      assert.deepEqual(second.tensors, first.tensors);
      assert.equal(second.metadata.tied, first.metadata.tied);
    });
  }

  it('usage errors exit 2 and bad inputs exit 1 with the file named', async () => {
    assert.equal((await runCli([])).code, 2);
    assert.equal((await runCli(['--to-torch', '--to-torch-safetensors', 'a', 'b'])).code, 2);
    assert.equal((await runCli(['a', 'b', '--frobnicate'])).code, 2);
    assert.equal((await runCli(['--to-torch-safetensors', outDir, 'x', '--config', GOLDEN_CONFIG])).code, 2);
    const missing = path.join(TMP, 'missing.pt');
    const r = await runCli([missing, path.join(TMP, 'o')]);
    assert.equal(r.code, 1);
    assert.ok(r.err.includes(`${missing}: cannot read checkpoint`), r.err);
    const badConfig = path.join(TMP, 'bad.json');
    fs.writeFileSync(badConfig, '{"hidden_size": ');
    const r2 = await runCli([ckpt, path.join(TMP, 'o'), '--config', badConfig]);
    assert.equal(r2.code, 1);
    assert.match(r2.err, /bad\.json: config is not valid JSON/);
  });
});
