import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readSafetensors } from '../../src/engine/safetensors.js';
import {
  LATEST_FILE,
  MODEL_FILE,
  OPTIMIZER_FILE,
  TIES_METADATA_KEY,
  checkpointRoot,
  listCheckpoints,
  loadCheckpoint,
  loadLatestCheckpoint,
  loadModelFolder,
  saveCheckpoint,
  saveModelFolder,
  withTiedAliases,
} from '../../src/pretrain/checkpoint.js';
import { TaskMixer } from '../../src/pretrain/mixer.js';
import { AdamW } from '../../src/pretrain/optimizer.js';
import { Rng } from '../../src/util/rng.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-ckpt-test-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let dirCounter = 0;
const freshDir = (label: string) => path.join(tmpRoot, `${label}-${dirCounter++}`);

const WORD = 'uniter.embeddings.word_embeddings.weight';
const DECODER = 'cls.predictions.decoder.weight';
const IMG_LINEAR = 'uniter.img_embeddings.img_linear.weight';
const FEAT_REGRESS = 'feat_regress.weight';

function tinyModel(seed: number) {
  const rng = new Rng(seed, 'params');
  const shapes = new Map<string, number[]>([
    [WORD, [6, 4]],
    [IMG_LINEAR, [4, 5]],
    ['uniter.encoder.layer.0.attention.self.query.bias', [4]],
    ['cls.predictions.bias', [6]],
  ]);
  const params = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) {
    const a = new Float32Array(shape.reduce((x, y) => x * y, 1));
    rng.fillNormal(a);
    params.set(name, a);
  }
  return { params, shapes };
}

describe('checkpoints', () => {
  it('round-trips parameters (ties stored once), optimizer moments and trainer state', () => {
    const out = freshDir('roundtrip');
    const { params, shapes } = tinyModel(1);
    // The decoder shares the word-embedding array (detected), feat_regress is declared tied.
    const withAlias = new Map(params);
    withAlias.set(DECODER, params.get(WORD)!);
    const opt = new AdamW(params, shapes);
    opt.step(new Map([[WORD, new Float32Array(24).fill(0.5)], ['cls.predictions.bias', new Float32Array(6).fill(-1)]]), 1e-3);
    const mixer = new TaskMixer([{ name: 'coco', tasks: ['itm', 'mlm'], mix_ratio: [1, 2] }], new Rng(3, 'mix'));
    mixer.next();
    const dataRng = new Rng(5, 'data');
    dataRng.uniform();
    const dir = saveCheckpoint(out, {
      step: 7,
      params: withAlias,
      shapes,
      ties: { [FEAT_REGRESS]: IMG_LINEAR },
      optimizer: opt.state(),
      rng: { data: dataRng.getState() },
      samplers: { mlm_coco: { epoch: 2, position: 17 } },
      mixer: mixer.state(),
      config: { learning_rate: 5e-5 },
      extra: { note: 'hello' },
    });
    assert.equal(dir, path.join(checkpointRoot(out), 'step_7'));
    assert.equal(fs.readFileSync(path.join(checkpointRoot(out), LATEST_FILE), 'utf8').trim(), 'step_7');

    const reread = loadCheckpoint(dir, { loadOptimizer: false });
    assert.equal(reread.optimizer, null);
    const expanded = withTiedAliases(reread.params, reread.ties);
    assert.ok(expanded.get(DECODER) === expanded.get(WORD) && expanded.get(FEAT_REGRESS) === expanded.get(IMG_LINEAR), 'aliases share the stored array');

    const raw = readSafetensors(path.join(dir, MODEL_FILE));
    assert.deepEqual([...raw.tensors.keys()].sort(), [...params.keys()].sort(), 'each tensor stored once, aliases not stored');
    assert.deepEqual(JSON.parse(raw.metadata[TIES_METADATA_KEY]), { [FEAT_REGRESS]: IMG_LINEAR, [DECODER]: WORD });

    const ck = loadLatestCheckpoint(out)!;
    assert.equal(ck.step, 7);
    for (const [name, v] of params) assert.deepEqual(ck.params.get(name), v, name);
    assert.deepEqual(ck.shapes.get(WORD), [6, 4]);
    assert.deepEqual(ck.ties, { [FEAT_REGRESS]: IMG_LINEAR, [DECODER]: WORD });
    assert.deepEqual(ck.trainer.samplers, { mlm_coco: { epoch: 2, position: 17 } });
    assert.deepEqual(ck.trainer.config, { learning_rate: 5e-5 });
    assert.deepEqual(ck.trainer.extra, { note: 'hello' });

    // RNG, mixer and optimizer continue exactly where they were.
    const rngResumed = new Rng(0);
    rngResumed.setState(ck.trainer.rng.data);
    assert.equal(rngResumed.uniform(), dataRng.uniform());
    const mixerResumed = new TaskMixer([{ name: 'coco', tasks: ['itm', 'mlm'], mix_ratio: [1, 2] }], new Rng(0));
    mixerResumed.restore(ck.trainer.mixer!);
    assert.deepEqual(Array.from({ length: 20 }, () => mixerResumed.next()), Array.from({ length: 20 }, () => mixer.next()));
    const optResumed = new AdamW(ck.params, ck.shapes);
    optResumed.loadState(ck.optimizer!);
    const g = new Map([[WORD, new Float32Array(24).fill(-0.25)]]);
    opt.step(g, 1e-3);
    optResumed.step(g, 1e-3);
    assert.deepEqual(ck.params.get(WORD), params.get(WORD));

  });

  it('keeps the last K checkpoints and points latest at the newest', () => {
    const out = freshDir('keep');
    const { params, shapes } = tinyModel(2);
    for (const step of [100, 200, 300, 400, 500]) saveCheckpoint(out, { step, params, shapes }, { keepLast: 2 });
    assert.deepEqual(listCheckpoints(out).map((c) => c.step), [400, 500]);
    assert.equal(loadLatestCheckpoint(out)!.step, 500);
    saveCheckpoint(out, { step: 600, params, shapes }, { keepLast: 3 });
    assert.deepEqual(listCheckpoints(out).map((c) => c.step), [400, 500, 600]);
    assert.deepEqual(
      fs.readdirSync(checkpointRoot(out)).filter((n) => n.startsWith('.')),
      [],
      'no temporary directories left behind',
    );
  });

  it('re-saving the same step replaces it', () => {
    const out = freshDir('resave');
    const a = tinyModel(3);
    const b = tinyModel(4);
    saveCheckpoint(out, { step: 5, ...a });
    saveCheckpoint(out, { step: 5, ...b });
    assert.deepEqual(loadLatestCheckpoint(out)!.params.get(WORD), b.params.get(WORD));
    assert.deepEqual(fs.readdirSync(checkpointRoot(out)).sort(), [LATEST_FILE, 'step_5']);
  });

  it('returns null without checkpoints, falls back to the newest directory without a pointer, rejects a bad pointer', () => {
    assert.equal(loadLatestCheckpoint(freshDir('none')), null);
    const out = freshDir('pointer');
    const { params, shapes } = tinyModel(5);
    saveCheckpoint(out, { step: 1, params, shapes }, { keepLast: 5 });
    saveCheckpoint(out, { step: 2, params, shapes }, { keepLast: 5 });
    const pointer = path.join(checkpointRoot(out), LATEST_FILE);
    fs.rmSync(pointer);
    assert.equal(loadLatestCheckpoint(out)!.step, 2);
    fs.writeFileSync(pointer, 'garbage\n');
    assert.throws(() => loadLatestCheckpoint(out), new RegExp(`${escapeRe(pointer)}: expected a checkpoint name like 'step_1000', got 'garbage'`));
  });

  it('reports a damaged checkpoint by file', () => {
    const out = freshDir('damaged');
    const { params, shapes } = tinyModel(6);
    const dir = saveCheckpoint(out, { step: 1, params, shapes });
    const file = path.join(dir, MODEL_FILE);
    const size = fs.statSync(file).size;
    fs.truncateSync(file, size - 10);
    assert.throws(() => loadLatestCheckpoint(out), new RegExp(`${escapeRe(file)}: ${size - 10} bytes, but trainer\\.json recorded ${size} bytes`));
    fs.writeFileSync(path.join(dir, 'trainer.json'), '{"format": "something else"}');
    assert.throws(() => loadCheckpoint(dir), /trainer\.json: not a uniter-ts trainer state/);
  });

  it('saveModelFolder writes config.json + model.safetensors and replaces an existing folder', () => {
    const dir = path.join(freshDir('model'), 'uniter-tiny');
    const a = tinyModel(7);
    const withAlias = new Map(a.params);
    withAlias.set(DECODER, a.params.get(WORD)!);
    saveModelFolder(dir, { hidden_size: 4, vocab_size: 6 }, withAlias, a.shapes);
    const b = tinyModel(8);
    saveModelFolder(dir, { hidden_size: 4, vocab_size: 6, note: 'second' }, b.params, b.shapes, { ties: { [DECODER]: WORD } });
    const loaded = loadModelFolder(dir);
    assert.deepEqual(loaded.config, { model_type: 'uniter', hidden_size: 4, vocab_size: 6, note: 'second' });
    assert.deepEqual(loaded.params.get(WORD), b.params.get(WORD));
    assert.deepEqual(loaded.ties, { [DECODER]: WORD });
    assert.deepEqual(fs.readdirSync(dir).sort(), ['README.md', 'config.json', 'model.safetensors', 'vocab.txt']);
    assert.throws(() => saveModelFolder(dir, {}, b.params, b.shapes, { ties: { [DECODER]: 'missing.weight' } }), /tie 'cls\.predictions\.decoder\.weight' -> 'missing\.weight' names a parameter that is not in the parameter map/);
    assert.deepEqual(loadModelFolder(dir).config.note, 'second', 'a failed save leaves the previous folder');
  });
});

// --- crash safety: a writer process killed mid-write -----------------------------------------

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'checkpoint-writer-child.js');

function runChild(args: string[]): { child: ChildProcess; line: (text: string) => Promise<void>; exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>; stderr: () => string; stdout: () => string } {
  const child = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters: Array<{ text: string; resolve: () => void }> = [];
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    for (const w of waiters) if (out.includes(w.text)) w.resolve();
  });
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const line = (text: string) =>
    new Promise<void>((resolve, reject) => {
      if (out.includes(text)) return resolve();
      waiters.push({ text, resolve });
      void exit.then(({ code }) => reject(new Error(`child exited (${code}) before printing ${text}; stderr: ${err}`)));
    });
  return { child, line, exit, stderr: () => err, stdout: () => out };
}

async function writeComplete(out: string, step: number, count: number, size: number): Promise<void> {
  const { exit, stderr, stdout } = runChild([out, String(step), String(count), String(size), 'none']);
  assert.deepEqual(await exit, { code: 0, signal: null }, `writer of step ${step} failed: ${stderr()}`);
  assert.match(stdout(), /DONE/, `writer of step ${step} exited without writing (is dist/ being rebuilt?)`);
}

/** The loaded checkpoint is whole: every parameter and moment value equals its step. */
function assertWhole(out: string, expectedStep: number): void {
  const ck = loadLatestCheckpoint(out)!;
  assert.equal(ck.step, expectedStep);
  assert.equal(ck.trainer.extra.marker, expectedStep);
  for (const [name, v] of ck.params) assert.ok(v.every((x) => x === expectedStep), `${name} holds values of another step`);
  for (const [name, t] of ck.optimizer!.tensors) assert.ok((t.data as Float32Array).every((x) => x === expectedStep), `${name} holds values of another step`);
}

describe('checkpoint writes killed with SIGKILL', () => {
  // A 32 MiB model file and 64 MiB of moments: the write takes long enough to be interrupted.
  const COUNT = 8;
  const SIZE = 1 << 20;

  for (const pauseAt of ['model-half', 'optimizer-half', 'renamed'] as const) {
    it(`never replace the previous good checkpoint (killed at ${pauseAt})`, async () => {
      const out = freshDir(`kill-${pauseAt}`);
      await writeComplete(out, 1, 4, 4096);
      const { child, line, exit } = runChild([out, '2', String(COUNT), String(SIZE), pauseAt]);
      await line('PAUSED');
      child.kill('SIGKILL');
      assert.equal((await exit).signal, 'SIGKILL');

      const entries = fs.readdirSync(checkpointRoot(out));
      if (pauseAt === 'renamed') {
        assert.ok(entries.includes('step_2'), 'the new directory was in place when killed');
      } else {
        assert.ok(entries.some((n) => n.startsWith('.step_2.tmp-')), `a partial write was left behind: ${entries}`);
        assert.ok(!entries.includes('step_2'));
        const partial = path.join(checkpointRoot(out), entries.find((n) => n.startsWith('.step_2.tmp-'))!);
        const file = path.join(partial, pauseAt === 'model-half' ? MODEL_FILE : OPTIMIZER_FILE);
        assert.ok(fs.statSync(file).size > 0, 'the killed writer had started the file');
      }
      assertWhole(out, 1);

      // The next save clears the debris and commits normally.
      await writeComplete(out, 3, 4, 4096);
      assertWhole(out, 3);
      assert.deepEqual(fs.readdirSync(checkpointRoot(out)).filter((n) => n.startsWith('.')), []);
    });
  }

  it('leave a whole checkpoint whenever the kill lands (timing-based)', async () => {
    for (const delayMs of [0, 15, 60]) {
      const out = freshDir(`kill-timed-${delayMs}`);
      await writeComplete(out, 1, 4, 4096);
      const { child, line, exit } = runChild([out, '2', String(COUNT), String(SIZE), 'none']);
      await line('WRITING');
      await new Promise((r) => setTimeout(r, delayMs));
      child.kill('SIGKILL');
      const { signal } = await exit;
      const ck = loadLatestCheckpoint(out)!;
      // Killed before the commit: the old one; killed after it (or finished): the new one. Never a mix.
      assert.ok(ck.step === 1 || ck.step === 2, `step ${ck.step}, signal ${signal}`);
      assertWhole(out, ck.step);
    }
  });
});

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
