/**
 * `uniter pretrain [--config FILE]`: pre-train UNITER. Without a config it runs the embedded
 * default: generate the synthetic grounded world, pre-train a tiny UNITER on it with every task
 * (MLM, MRFR, MRC-kl, ITM + WRA), and show what it learned on held-out data.
 */
import * as path from 'node:path';
import { loadPretrainConfig } from '../pretrain/config.js';
import { embeddedDefault, initialParams, modelConfigFrom, openStoreSources, settingsFromConfig } from '../pretrain/run.js';
import { pretrain, PretrainResult } from '../pretrain/trainer.js';
import { writeTrainingReport } from '../report/training.js';
import { showWhatItLearned } from '../pretrain/demo.js';
import { setDefaultThreads } from '../engine/runtime.js';
import type { Command } from './main.js';
import { parseArgs } from './args.js';

const USAGE = `pretrain [--config FILE] [--out DIR] [--steps N] [--resume [--allow-changed F,...]] [--overwrite] [--json] [--quiet] [--threads N] [--seed N]
      --resume              continue the run in --out from its newest intact checkpoint (same model, data and settings)
      --allow-changed F,... with --resume: fields that may differ from the recorded run (lr, steps, seed, warmup_steps, ...)
      --overwrite           replace a run already in --out (without it, a new run refuses a folder that holds one)`;

export const command: Command = {
  name: 'pretrain',
  summary: 'pre-train UNITER (default: a tiny model on the built-in synthetic world)',
  async run(argv) {
    const a = parseArgs(argv, { string: ['config', 'out', 'steps', 'threads', 'seed', 'allow-changed'], boolean: ['resume', 'json', 'quiet', 'overwrite'] }, USAGE);
    if (a.positional.length) throw new Error(`pretrain: unexpected argument '${a.positional[0]}' (usage: uniter ${USAGE})`);
    const steps = a.string.steps !== undefined ? positiveInt(a.string.steps, '--steps') : undefined;
    const seed = a.string.seed !== undefined ? positiveInt(a.string.seed, '--seed', 0) : undefined;
    if (a.string.threads) setDefaultThreads(positiveInt(a.string.threads, '--threads'));
    if (a.boolean.resume && a.boolean.overwrite) throw new Error('pretrain: --resume and --overwrite exclude each other');
    if (a.string['allow-changed'] !== undefined && !a.boolean.resume) throw new Error('pretrain: --allow-changed only applies with --resume');
    const ownership = { overwrite: a.boolean.overwrite, allowChanged: (a.string['allow-changed'] ?? '').split(',').map((f) => f.trim()).filter(Boolean) };
    const say = (msg: string) => {
      if (!a.boolean.quiet) (a.boolean.json ? process.stderr : process.stdout).write(msg + '\n');
    };
    let result: PretrainResult;
    let outDir: string;
    if (a.string.config) {
      const overrides: Record<string, unknown> = {};
      if (steps !== undefined) overrides.num_train_steps = steps;
      if (seed !== undefined) overrides.seed = seed;
      if (a.string.out) overrides.output_dir = path.resolve(a.string.out);
      const cfg = loadPretrainConfig(a.string.config, { overrides });
      if (!cfg.output_dir) throw new Error(`${a.string.config}: field 'output_dir' is required (or pass --out DIR)`);
      outDir = cfg.output_dir;
      const model = modelConfigFrom(cfg);
      const { params, report } = initialParams(model, cfg.seed, cfg.checkpoint);
      if (report) say(`loaded ${report.loaded.length} tensors from ${report.source}; missing (fresh init): ${report.missing.length}${fmtList(report.missing)}; unexpected (ignored): ${report.unexpected.length}${fmtList(report.unexpected)}`);
      const data = openStoreSources(cfg);
      try {
        result = await pretrain({ modelConfig: model, settings: settingsFromConfig(cfg), train: data.train, val: data.val, outDir, initial: params, resume: a.boolean.resume, quiet: a.boolean.quiet, runConfig: cfg, ...ownership });
      } finally {
        data.close();
      }
    } else {
      outDir = path.resolve(a.string.out ?? 'runs/pretrain-default');
      say('uniter pretrain: no --config given, running the embedded default (synthetic world, tiny UNITER, all tasks)');
      const t = Date.now();
      const d = embeddedDefault({ steps, seed });
      const c = d.world.counts();
      say(`generated the synthetic world in ${((Date.now() - t) / 1000).toFixed(1)} s: ${c.images.train} train / ${c.images.val} val images, ${c.objects} objects, ${c.txtDbs.pretrain_world_train} train captions`);
      say(`model: tiny UNITER (hidden ${d.model.hidden_size}, ${d.model.num_hidden_layers} layers); ${d.settings.steps} steps of ITM+WRA / MLM / MRFR / MRC-kl mixed ${d.train[0].mix_ratio?.join(':')}; output in ${outDir}`);
      result = await pretrain({ modelConfig: d.model, settings: d.settings, train: d.train, val: d.val, outDir, resume: a.boolean.resume, quiet: a.boolean.quiet, runConfig: { embedded: true, settings: d.settings }, ...ownership });
      if (!a.boolean.quiet) await showWhatItLearned(result, d, (m) => say(m));
    }
    const report = path.join(outDir, 'report.html');
    writeTrainingReport(path.join(outDir, 'log.jsonl'), report, { title: 'UNITER pre-training' });
    const v = result.validation;
    const summary = {
      itm_acc: v.itm?.itm_acc ?? null,
      mlm_acc: v.mlm?.mlm_acc ?? null,
      mrckl_acc: v.mrckl?.mrckl_acc ?? null,
      mrfr_loss: v.mrfr?.mrfr_loss ?? null,
      ot_pos: v.itm?.ot_pos ?? null,
      ot_neg: v.itm?.ot_neg ?? null,
      steps: result.steps,
      seconds: Math.round(result.seconds * 10) / 10,
    };
    say(`\nheld-out validation after ${result.steps} steps (${summary.seconds} s):`);
    for (const [task, m] of Object.entries(v)) say(`  ${task.padEnd(8)} ${Object.entries(m).map(([k, x]) => `${k} ${x.toFixed(4)}`).join('   ')}`);
    say(`report: ${report}\ncheckpoints: ${path.join(outDir, 'ckpt')}`);
    if (a.boolean.json) console.log(JSON.stringify(summary));
    return 0;
  },
};

function positiveInt(s: string, flag: string, min = 1): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < min) throw new Error(`${flag} must be an integer >= ${min}, got '${s}'`);
  return n;
}

function fmtList(xs: string[]): string {
  return xs.length ? ` (${xs.slice(0, 4).join(', ')}${xs.length > 4 ? ', ...' : ''})` : '';
}
