/**
 * The shipped configs (configs/) stay valid: every official-style file parses with the project's
 * own parsers (pre-training with checkPaths off: the official data is not here), names the
 * official model config it sits beside, and carries the official hyper-parameters; the tiny
 * configs really train, on a synthetic world written beside them, with the step counts shortened.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parsePretrainConfig } from '../../src/pretrain/config.js';
import { parseFinetuneConfig } from '../../src/finetune/defaults.js';
import { getTask } from '../../src/finetune/task-registry.js';
import { PRESETS, loadConfig } from '../../src/model/config.js';
import { generateWorld, writeWorld } from '../../src/data/world.js';

const CONFIGS = fileURLToPath(new URL('../../../configs', import.meta.url));
const OFFICIAL = path.join(CONFIGS, 'official');
const TINY = path.join(CONFIGS, 'tiny');
const BIN = fileURLToPath(new URL('../../../bin/uniter.js', import.meta.url));

const readJson = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8')) as Record<string, unknown>;
const jsonFiles = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort();

/** The downstream task of an official-style fine-tuning file, from its official name. */
function taskOf(file: string): string {
  const m = /^train-(vqa|ve|nlvr2|vcr|itm|refcoco\+?|refcocog)-/.exec(file);
  assert.ok(m, `${file}: named like the official train-<task>-*.json`);
  return m[1] === 'itm' ? 'retrieval' : m[1].startsWith('refcoco') ? 're' : m[1];
}

test('configs/ holds the official model configs, pre-training for base and large, and every downstream task', () => {
  const official = jsonFiles(OFFICIAL);
  assert.deepEqual(loadConfig(path.join(OFFICIAL, 'uniter-base.json')), PRESETS.base);
  assert.deepEqual(loadConfig(path.join(OFFICIAL, 'uniter-large.json')), PRESETS.large);
  const pretrain = official.filter((f) => f.startsWith('pretrain-'));
  assert.ok(pretrain.some((f) => f.includes('-base-')) && pretrain.some((f) => f.includes('-large-')), pretrain.join(' '));
  const tasks = new Set(official.filter((f) => f.startsWith('train-')).map(taskOf));
  assert.deepEqual([...tasks].sort(), ['nlvr2', 're', 'retrieval', 'vcr', 've', 'vqa']);
  assert.deepEqual(jsonFiles(TINY), ['finetune-nlvr2.json', 'finetune-re.json', 'finetune-retrieval.json', 'finetune-vcr.json', 'finetune-ve.json', 'finetune-vqa.json', 'pretrain.json']);
  // Nothing else: every file is checked by one of the tests below.
  assert.deepEqual(official.filter((f) => !/^(uniter-(base|large)|pretrain-.*|train-.*)\.json$/.test(f)), []);
});

test('every official-style pre-training config parses, with the official model config beside it', () => {
  for (const file of jsonFiles(OFFICIAL).filter((f) => f.startsWith('pretrain-'))) {
    const raw = readJson(path.join(OFFICIAL, file));
    const cfg = parsePretrainConfig(raw, { source: file, baseDir: OFFICIAL, checkPaths: false });
    assert.equal(cfg.model.kind, 'file', file);
    if (cfg.model.kind !== 'file') continue;
    const size = file.includes('-large-') ? 'large' : 'base';
    assert.equal(cfg.model.path, path.join(OFFICIAL, `uniter-${size}.json`), file);
    assert.equal(cfg.num_train_steps, raw.num_train_steps);
    assert.ok(cfg.train_datasets.length >= 1 && cfg.train_datasets.every((d) => d.db.length === d.img.length && d.tasks.length === d.mix_ratio.length));
    assert.equal(cfg.betas[1], 0.98);
  }
  // The official recipes (uniter-spec 2.8, 2.10): spot checks.
  const indomain = parsePretrainConfig(readJson(path.join(OFFICIAL, 'pretrain-indomain-base-8gpu.json')), { baseDir: OFFICIAL, checkPaths: false });
  assert.deepEqual(indomain.train_datasets.map((d) => d.mix_ratio), [[2, 2, 1, 1], [2, 2, 1, 1]]);
  assert.equal(indomain.gradient_accumulation_steps, 2);
  const large = parsePretrainConfig(readJson(path.join(OFFICIAL, 'pretrain-alldata-large-16gpu.json')), { baseDir: OFFICIAL, checkPaths: false });
  assert.deepEqual([large.train_batch_size, large.gradient_accumulation_steps, large.num_train_steps], [6144, 4, 500000]);
  const vcr = parsePretrainConfig(readJson(path.join(OFFICIAL, 'pretrain-vcr-base-4gpu.json')), { baseDir: OFFICIAL, checkPaths: false });
  assert.deepEqual([vcr.grad_norm, vcr.max_txt_len, vcr.train_datasets[0].tasks], [-1, 220, ['mlm', 'mrfr', 'mrckl']]);
});

test('every official-style fine-tuning config parses for its task, with the official hyper-parameters', () => {
  for (const file of jsonFiles(OFFICIAL).filter((f) => f.startsWith('train-'))) {
    const raw = readJson(path.join(OFFICIAL, file));
    const task = getTask(taskOf(file));
    const cfg = parseFinetuneConfig(raw, task, { source: file, baseDir: OFFICIAL });
    const size = file.includes('-large-') ? 'large' : 'base';
    assert.deepEqual(cfg.model?.config, PRESETS[size], file);
    assert.equal(cfg.settings.steps, raw.num_train_steps, file);
    assert.equal(cfg.settings.warmupSteps, raw.warmup_steps, file);
    assert.equal(cfg.settings.learningRate, raw.learning_rate, file);
    assert.equal(cfg.settings.trainBatchTokens, raw.train_batch_size, file);
    assert.ok(cfg.paths && cfg.paths.train.length >= 1 && cfg.paths.val, file);
    assert.equal(cfg.checkpoint, raw.checkpoint, file);
  }
  const vqa = parseFinetuneConfig(readJson(path.join(OFFICIAL, 'train-vqa-base-4gpu.json')), getTask('vqa'), { source: 'vqa', baseDir: OFFICIAL });
  assert.equal(vqa.settings.lrMultiplier, 10);
  assert.equal(vqa.paths?.train.length, 3);
  const vcr = parseFinetuneConfig(readJson(path.join(OFFICIAL, 'train-vcr-base-4gpu.json')), getTask('vcr'), { source: 'vcr', baseDir: OFFICIAL });
  assert.equal(vcr.paths?.train[0].img, '/img/vcr_gt_train;/img/vcr_train');
  const nlvr2 = parseFinetuneConfig(readJson(path.join(OFFICIAL, 'train-nlvr2-base-1gpu.json')), getTask('nlvr2'), { source: 'nlvr2', baseDir: OFFICIAL });
  assert.deepEqual([nlvr2.options.model, nlvr2.settings.seed], ['paired-attn', 77]);
  const rePlus = parseFinetuneConfig(readJson(path.join(OFFICIAL, 'train-refcoco+-base-1gpu.json')), getTask('re'), { source: 're', baseDir: OFFICIAL });
  assert.equal(rePlus.options.mlp, 2);
  const itm = parseFinetuneConfig(readJson(path.join(OFFICIAL, 'train-itm-flickr-base-16gpu-hn.json')), getTask('retrieval'), { source: 'itm', baseDir: OFFICIAL });
  assert.deepEqual([itm.options.negative_size, itm.options.hard_neg_size], [399, 31]);
});

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'configs-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function uniterJson(args: string[]): Promise<Record<string, unknown>> {
  const { stdout } = await promisify(execFile)(process.execPath, [BIN, ...args, '--json', '--quiet'], { cwd: tmp, maxBuffer: 1 << 24 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

test('the tiny configs pre-train and fine-tune every task on a synthetic world written beside them', async () => {
  for (const f of jsonFiles(TINY)) fs.copyFileSync(path.join(TINY, f), path.join(tmp, f));
  // The docs write the world with `uniter world --out world`; a smaller one keeps the test short.
  writeWorld(generateWorld({ preset: 'tiny', numImages: 40 }), path.join(tmp, 'world'));
  const tinyParsed = parsePretrainConfig(readJson(path.join(tmp, 'pretrain.json')), { baseDir: tmp });
  assert.deepEqual(tinyParsed.model, { kind: 'preset', preset: 'tiny' });
  // The file as shipped, with its step counts shortened (warm-up and validation follow the steps).
  const short = { ...readJson(path.join(tmp, 'pretrain.json')), num_train_steps: 2, warmup_steps: 1, valid_steps: 2, save_steps: 2 };
  fs.writeFileSync(path.join(tmp, 'pretrain-short.json'), JSON.stringify(short));
  const pre = await uniterJson(['pretrain', '--config', 'pretrain-short.json']);
  assert.equal(pre.steps, 2);
  assert.ok(fs.existsSync(path.join(tmp, 'runs/pretrain/report.html')));
  for (const task of ['vqa', 've', 'nlvr2', 'vcr', 'retrieval', 're']) {
    const cfg = readJson(path.join(tmp, `finetune-${task}.json`));
    assert.equal(cfg.checkpoint, 'runs/pretrain', `finetune-${task}.json starts from the tiny pre-training run`);
    const r = await uniterJson(['finetune', task, '--config', `finetune-${task}.json`, '--steps', '2']);
    assert.equal(r.task, task);
    assert.equal(r.steps, 2);
    assert.equal(r.out, path.join(tmp, `runs/finetune-${task}`));
    assert.ok(r.validation && typeof r.validation === 'object', JSON.stringify(r));
  }
});
