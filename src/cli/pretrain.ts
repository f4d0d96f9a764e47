/**
 * `uniter pretrain [--config FILE]`: pre-train UNITER. Without a config it runs the embedded
 * default: generate the synthetic grounded world, pre-train a tiny UNITER on it with every task
 * (MLM, MRFR, MRC-kl, ITM + WRA), and show what it learned on held-out data.
 */
import * as path from 'node:path';
import { loadPretrainConfig } from '../pretrain/config.js';
import { embeddedDefault, embeddedRunRecord, initialParams, modelConfigFrom, openStoreSources, settingsFromConfig } from '../pretrain/run.js';
import { checkRunMemory, pretrain, PretrainResult } from '../pretrain/trainer.js';
import { writeTrainingReport } from '../report/training.js';
import { showWhatItLearned } from '../pretrain/demo.js';
import { setDefaultThreads } from '../engine/runtime.js';
import type { Command } from './main.js';
import { UsageError, guard, intFlag, parseArgs, printJsonLine } from './common.js';
import { writeModelCard } from '../model/model-card.js';

const USAGE = `pretrain [--config FILE] [--out DIR] [--steps N] [--seed N] [--resume [--allow-changed F,...]] [--overwrite] [--json] [--quiet] [--threads N]
      Pre-train UNITER. Without --config: the embedded default (the synthetic world, a tiny UNITER, every
      task: ITM+WRA, MLM, MRFR, MRC-kl), output in runs/pretrain-default. The final model goes to OUT/model
      (config.json, model.safetensors, vocab.txt, a README.md model card), checkpoints to OUT/ckpt, the
      log to OUT/log.jsonl and the report to OUT/report.html.
  --config FILE          pre-training config (official field names, see docs/config.md and configs/)
  --out DIR              output folder (overrides the config's output_dir; default runs/pretrain-default)
  --steps N              optimizer steps (overrides num_train_steps)
  --seed N               random seed (overrides seed)
  --resume               continue the run in --out from its newest intact checkpoint (same model, data and settings)
  --allow-changed F,...  with --resume: fields that may differ from the recorded run (lr, steps, seed, warmup_steps, ...)
  --overwrite            replace a run already in --out (without it, a new run refuses a folder that holds one)
  --threads N            ONNX Runtime threads (default: the runtime's choice)
  --json                 print one JSON line of held-out metrics at the end; the rest goes to stderr
  --quiet                no progress display and no messages`;

export const command: Command = {
  name: 'pretrain',
  summary: 'pre-train UNITER (default: a tiny model on the built-in synthetic world)',
  usage: USAGE,
  run: (argv) => guard('pretrain', USAGE, () => runPretrain(argv)),
};

async function runPretrain(argv: string[]): Promise<number> {
  {
    const a = parseArgs(argv, { string: ['config', 'out', 'steps', 'threads', 'seed', 'allow-changed'], boolean: ['resume', 'json', 'quiet', 'overwrite'] }, USAGE);
    if (a.positional.length) throw new UsageError(`unexpected argument '${a.positional[0]}'`);
    const steps = a.string.steps !== undefined ? intFlag(a.string.steps, '--steps', 1) : undefined;
    const seed = a.string.seed !== undefined ? intFlag(a.string.seed, '--seed', 0) : undefined;
    if (a.string.threads) setDefaultThreads(intFlag(a.string.threads, '--threads', 1));
    if (a.boolean.resume && a.boolean.overwrite) throw new UsageError('--resume and --overwrite exclude each other');
    if (a.string['allow-changed'] !== undefined && !a.boolean.resume) throw new UsageError('--allow-changed only applies with --resume');
    const ownership = { overwrite: a.boolean.overwrite, allowChanged: (a.string['allow-changed'] ?? '').split(',').map((f) => f.trim()).filter(Boolean) };
    const say = (msg: string) => {
      if (!a.boolean.quiet) (a.boolean.json ? process.stderr : process.stdout).write(msg + '\n');
    };
    let result: PretrainResult;
    let outDir: string;
    let dataDescription: string;
    if (a.string.config) {
      const overrides: Record<string, unknown> = {};
      if (steps !== undefined) overrides.num_train_steps = steps;
      if (seed !== undefined) overrides.seed = seed;
      if (a.string.out) overrides.output_dir = path.resolve(a.string.out);
      const cfg = loadPretrainConfig(a.string.config, { overrides });
      if (!cfg.output_dir) throw new UsageError(`${a.string.config}: field 'output_dir' is required (or pass --out DIR)`);
      outDir = cfg.output_dir;
      const model = modelConfigFrom(cfg);
      const data = openStoreSources(cfg);
      dataDescription = describeStores(cfg);
      try {
        // Refuse a run that cannot fit before the initial parameters take their share.
        checkRunMemory({ modelConfig: model, settings: settingsFromConfig(cfg), train: data.train, val: data.val });
        const { params, report } = initialParams(model, cfg.seed, cfg.checkpoint);
        if (report) say(`loaded ${report.loaded.length} tensors from ${report.source}; missing (fresh init): ${report.missing.length}${fmtList(report.missing)}; unexpected (ignored): ${report.unexpected.length}${fmtList(report.unexpected)}`);
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
      dataDescription = `the synthetic grounded world (seed ${d.world.options.seed}): ${c.images.train} train images, ${c.txtDbs.pretrain_world_train} captions`;
      say(`generated the synthetic world in ${((Date.now() - t) / 1000).toFixed(1)} s: ${c.images.train} train / ${c.images.val} val images, ${c.objects} objects, ${c.txtDbs.pretrain_world_train} train captions`);
      say(`model: tiny UNITER (hidden ${d.model.hidden_size}, ${d.model.num_hidden_layers} layers); ${d.settings.steps} steps of ITM+WRA / MLM / MRFR / MRC-kl mixed ${d.train[0].mix_ratio?.join(':')}; output in ${outDir}`);
      result = await pretrain({ modelConfig: d.model, settings: d.settings, train: d.train, val: d.val, outDir, resume: a.boolean.resume, quiet: a.boolean.quiet, runConfig: embeddedRunRecord(d), ...ownership });
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
    writeModelCard(path.join(outDir, 'model'), {
      trainedBy: `uniter pretrain${a.string.config ? ` --config ${a.string.config}` : ' (embedded default: synthetic world, tiny UNITER, ITM+WRA / MLM / MRFR / MRC-kl)'}`,
      data: dataDescription,
      steps: result.steps,
      metrics: v,
    });
    if (a.boolean.json) printJsonLine(summary);
    return 0;
  }
}

function fmtList(xs: string[]): string {
  return xs.length ? ` (${xs.slice(0, 4).join(', ')}${xs.length > 4 ? ', ...' : ''})` : '';
}

/** The stores a pre-training config reads, for the model card. */
function describeStores(cfg: { train_datasets?: unknown }): string {
  const sets = Array.isArray(cfg.train_datasets) ? (cfg.train_datasets as Array<{ name?: unknown; db?: unknown; img?: unknown }>) : [];
  if (!sets.length) return 'the stores named by the config';
  return sets.map((d) => `${String(d.name ?? '?')} (txt_db ${JSON.stringify(d.db)}, img_db ${JSON.stringify(d.img)})`).join('; ');
}
