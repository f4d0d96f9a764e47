import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError, PRETRAIN_DEFAULTS, loadPretrainConfig, parsePretrainConfig, trainTaskNames } from '../../src/pretrain/config.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-config-test-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
for (const d of ['txt/coco_train.db', 'txt/coco_val.db', 'txt/vg_train.db', 'img/coco', 'img/vg']) fs.mkdirSync(path.join(root, d), { recursive: true });
fs.writeFileSync(path.join(root, 'uniter-tiny.json'), JSON.stringify({ hidden_size: 32, num_attention_heads: 4, num_hidden_layers: 2, vocab_size: 512 }));

interface RawDataset {
  name: string;
  db: string[];
  img: string[];
  tasks: string[];
  mix_ratio?: number[];
}
interface RawConfig {
  [field: string]: unknown;
  train_datasets: RawDataset[];
  val_datasets: RawDataset[];
}

function validConfig(): RawConfig {
  return {
    model: { preset: 'tiny' },
    output_dir: 'runs/tiny',
    train_datasets: [
      { name: 'coco', db: ['txt/coco_train.db'], img: ['img/coco'], tasks: ['itm', 'mlm', 'mrfr', 'mrckl'], mix_ratio: [2, 2, 1, 1] },
      { name: 'vg', db: ['txt/vg_train.db'], img: ['img/vg'], tasks: ['itm', 'mlm', 'mrfr', 'mrckl'], mix_ratio: [2, 2, 1, 0] },
    ],
    val_datasets: [{ name: 'coco', db: ['txt/coco_val.db'], img: ['img/coco'], tasks: ['itm', 'mlm'] }],
    num_train_steps: 100,
    warmup_steps: 10,
  };
}

/** Parse and return the list of problems (empty when valid). */
function issuesOf(raw: unknown, opts: { checkPaths?: boolean } = {}): string[] {
  try {
    parsePretrainConfig(raw, { baseDir: root, source: 'pretrain.json', ...opts });
    return [];
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    assert.match(e.message, /^pretrain\.json: invalid pretraining config:/);
    return e.issues;
  }
}

function mutate(f: (c: RawConfig) => void): RawConfig {
  const c = validConfig();
  f(c);
  return c;
}

describe('pretraining config', () => {
  it('parses a valid config, resolving paths and filling official defaults', () => {
    const file = path.join(root, 'pretrain.json');
    fs.writeFileSync(file, JSON.stringify(validConfig()));
    const c = loadPretrainConfig(file);
    assert.deepEqual(c.model, { kind: 'preset', preset: 'tiny' });
    assert.equal(c.output_dir, path.join(root, 'runs/tiny'));
    assert.deepEqual(c.train_datasets[0].db, [path.join(root, 'txt/coco_train.db')]);
    assert.deepEqual(c.train_datasets[1].mix_ratio, [2, 2, 1, 0]);
    assert.equal(c.num_train_steps, 100);
    assert.equal(c.learning_rate, 5e-5);
    assert.equal(c.gradient_accumulation_steps, PRETRAIN_DEFAULTS.gradient_accumulation_steps);
    assert.deepEqual(c.betas, [0.9, 0.98]);
    assert.equal(c.grad_norm, 5);
    assert.equal(c.save_steps, c.valid_steps, 'checkpoints follow validation by default, as the official loop');
    assert.equal(c.joint_masking, false);
    assert.equal(c.checkpoint_activations, false);
    assert.equal(c.checkpoint, null);
    assert.deepEqual(trainTaskNames(c), ['itm_coco', 'mlm_coco', 'mrfr_coco', 'mrckl_coco', 'itm_vg', 'mlm_vg', 'mrfr_vg']);
  });

  it('accepts the official layout: model_config path, optim/fp16/n_workers fields, grad_norm -1', () => {
    const raw = mutate((c) => {
      delete c.model;
      c.model_config = 'uniter-tiny.json';
      Object.assign(c, { optim: 'adamw', fp16: true, n_workers: 4, pin_mem: true, grad_norm: -1, itm_ot_lambda: 0 });
    });
    const c = parsePretrainConfig(raw, { baseDir: root });
    assert.equal(c.model.kind, 'file');
    assert.equal(c.model.kind === 'file' && c.model.fields.hidden_size, 32);
    assert.equal(c.grad_norm, -1);
  });

  it('reads learning-rate multipliers by parameter-name substring', () => {
    const c = parsePretrainConfig({ ...validConfig(), lr_multipliers: { img_linear: 0.1, pooler: 2 } }, { baseDir: root });
    assert.deepEqual(c.lr_multipliers, { img_linear: 0.1, pooler: 2 });
    assert.deepEqual(parsePretrainConfig(validConfig(), { baseDir: root }).lr_multipliers, {});
  });

  it('applies overrides before validation', () => {
    const c = parsePretrainConfig(validConfig(), { baseDir: root, overrides: { num_train_steps: 7, warmup_steps: 2, model: { config: { hidden_size: 8, num_attention_heads: 2 } } } });
    assert.equal(c.num_train_steps, 7);
    assert.deepEqual(c.model, { kind: 'inline', fields: { hidden_size: 8, num_attention_heads: 2 } });
  });

  const cases: Array<[string, (c: RawConfig) => void, RegExp]> = [
    ['unknown task', (c) => (c.train_datasets[0].tasks[1] = 'mlmm'), /field 'train_datasets\[0\]\.tasks\[1\]': unknown task "mlmm"; expected one of itm, mlm, mrfr, mrc, mrckl/],
    ['negative ratio', (c) => (c.train_datasets[1].mix_ratio![0] = -2), /field 'train_datasets\[1\]\.mix_ratio\[0\]': expected an integer >= 0, got -2/],
    ['fractional ratio', (c) => (c.train_datasets[1].mix_ratio![0] = 0.5), /field 'train_datasets\[1\]\.mix_ratio\[0\]': expected an integer >= 0, got 0\.5/],
    ['missing ratios', (c) => delete c.train_datasets[0].mix_ratio, /field 'train_datasets\[0\]\.mix_ratio': required: one integer weight per task/],
    ['ratio/task length mismatch', (c) => c.train_datasets[0].mix_ratio!.pop(), /field 'train_datasets\[0\]\.mix_ratio': has 3 entries but tasks has 4/],
    ['ratios summing to zero', (c) => c.train_datasets.forEach((d) => (d.mix_ratio = [0, 0, 0, 0])), /field 'train_datasets': the mix ratios sum to zero/],
    ['missing data path', (c) => (c.train_datasets[0].db = ['txt/nope.db']), new RegExp(`field 'train_datasets\\[0\\]\\.db\\[0\\]': path does not exist: ${root.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/txt/nope\\.db`)],
    ['missing image path in val', (c) => (c.val_datasets[0].img = ['img/none']), /field 'val_datasets\[0\]\.img\[0\]': path does not exist/],
    ['db/img count mismatch', (c) => c.train_datasets[0].db.push('txt/vg_train.db'), /field 'train_datasets\[0\]\.img': needs one img_db per txt_db: 2 db vs 1 img/],
    ['zero steps', (c) => (c.num_train_steps = 0), /field 'num_train_steps': expected an integer >= 1, got 0/],
    ['fractional accumulation', (c) => (c.gradient_accumulation_steps = 1.5), /field 'gradient_accumulation_steps': expected an integer >= 1, got 1\.5/],
    ['warm-up longer than training', (c) => (c.warmup_steps = 1000), /field 'warmup_steps': must be <= num_train_steps \(100\), got 1000/],
    ['negative learning rate', (c) => (c.learning_rate = -1e-4), /field 'learning_rate': expected a positive number, got -0\.0001/],
    ['dropout of 1', (c) => (c.dropout = 1), /field 'dropout': expected a number in \[0, 1\), got 1/],
    ['misspelt field', (c) => (c.lerning_rate = 1e-4), /field 'lerning_rate': unknown field \(did you mean 'learning_rate'\?\)/],
    ['unknown preset', (c) => (c.model = { preset: 'huge' }), /field 'model\.preset': expected one of 'tiny', 'base', 'large', got "huge"/],
    ['missing model', (c) => delete c.model, /field 'model': required/],
    ['heads not dividing hidden', (c) => (c.model = { config: { hidden_size: 30, num_attention_heads: 4 } }), /field 'model\.config\.hidden_size': must be divisible by num_attention_heads \(4\), got 30/],
    ['mix_ratio on a val dataset', (c) => (c.val_datasets[0].mix_ratio = [1, 1]), /field 'val_datasets\[0\]\.mix_ratio': mix ratios only apply to train_datasets/],
    ['duplicate dataset names', (c) => (c.train_datasets[1].name = 'coco'), /field 'train_datasets\[1\]\.name': duplicate dataset name 'coco'/],
    ['duplicate task', (c) => (c.train_datasets[0].tasks[1] = 'itm'), /field 'train_datasets\[0\]\.tasks\[1\]': task 'itm' is listed twice/],
    ['no train datasets', (c) => (c.train_datasets = []), /field 'train_datasets': required: a non-empty list of datasets/],
    ['sequence too long', (c) => (c.max_txt_len = 420), /field 'max_bb': max_bb \+ max_txt_len \+ 2 = 522 exceeds the 512-token sequence limit/],
    ['min_bb above max_bb', (c) => (c.min_bb = 200), /field 'min_bb': must be <= max_bb \(100\), got 200/],
    ['joint_masking not boolean', (c) => (c.joint_masking = 'yes'), /field 'joint_masking': expected true or false, got "yes"/],
    ['checkpoint_activations not boolean', (c) => (c.checkpoint_activations = 1), /field 'checkpoint_activations': expected true or false, got 1/],
    ['other optimizer', (c) => (c.optim = 'adamax'), /field 'optim': only 'adamw' is implemented/],
    ['lr_multipliers not an object', (c) => (c.lr_multipliers = [0.1]), /field 'lr_multipliers': expected an object \{"name substring": multiplier\}, got \[0\.1\]/],
    ['negative lr multiplier', (c) => (c.lr_multipliers = { img_linear: -1 }), /field 'lr_multipliers\.img_linear': expected a non-empty name substring with a finite multiplier >= 0, got -1/],
    ['missing checkpoint file', (c) => (c.checkpoint = 'weights/none.safetensors'), /field 'checkpoint': path does not exist/],
  ];
  for (const [label, change, expected] of cases) {
    it(`names the field: ${label}`, () => {
      const issues = issuesOf(mutate(change));
      assert.ok(issues.some((i) => expected.test(i)), `expected ${expected} among:\n${issues.join('\n')}`);
    });
  }

  it('reports every problem at once', () => {
    const issues = issuesOf(
      mutate((c) => {
        c.num_train_steps = -5;
        c.train_datasets[0].tasks[0] = 'vqa';
        c.seed = 'x';
      }),
    );
    assert.equal(issues.length, 3, issues.join('\n'));
  });

  it('can skip path checks (for inspecting a config on another machine)', () => {
    assert.deepEqual(issuesOf(mutate((c) => (c.train_datasets[0].db = ['/nowhere/x.db'])), { checkPaths: false }), []);
  });

  it('names the file when it is not JSON', () => {
    const file = path.join(root, 'broken.json');
    fs.writeFileSync(file, '{ "model": ');
    assert.throws(() => loadPretrainConfig(file), new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: invalid pretraining config:\\n  - the config is not valid JSON`));
  });
});
