/**
 * The package as a user gets it: `npm pack` the repository, install the tarball into a fresh
 * project with the npm registry as the only source (cached packages preferred, so that a machine
 * that ran `npm ci` installs mostly from its cache), then use it the documented ways: the `uniter`
 * binary, the docs/api.md example, `require()` of the ES module, and a strict TypeScript consumer.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { PRESETS } from '../../src/model/config.js';
import { randomParams, removeTempDirs, tempDir, writeModelFolder } from '../export/model-folders.js';

after(removeTempDirs);

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string; dependencies: Record<string, string>; devDependencies: Record<string, string> };
const exec = promisify(execFile);
const npm = (args: string[], cwd: string) => exec('npm', args, { cwd, maxBuffer: 1 << 26, timeout: 300_000 });

const work = tempDir('consumer-');
const project = path.join(work, 'app');

test('npm pack: only what a user needs (library, declarations, binary, vocabulary, configs, docs, LICENSE)', async () => {
  // dist/ is current: `npm test` compiles first. --ignore-scripts skips `prepare` (a second compile).
  const { stdout } = await npm(['pack', '--ignore-scripts', '--json', '--pack-destination', work], ROOT);
  const [info] = JSON.parse(stdout) as Array<{ filename: string; entryCount: number; size: number; files: Array<{ path: string }> }>;
  const files = info.files.map((f) => f.path);
  for (const f of ['package.json', 'README.md', 'LICENSE', 'bin/uniter.js', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/cli/main.js', 'assets/bert-base-cased/vocab.txt', 'configs/tiny/pretrain.json', 'configs/official/uniter-base.json', 'docs/config.md', 'src/serve/static/index.html', 'src/serve/static/app.js']) {
    assert.ok(files.includes(f), `the tarball has ${f}`);
  }
  // src/serve/static/ is the web page `uniter serve` sends (assets, not sources).
  const stray = files.filter((f) => !f.startsWith('src/serve/static/')).filter((f) => /^(test|bench|src|dist\/test|dist\/bench|dist\/docs-examples)\//.test(f) || f.endsWith('.map') || f.endsWith('.ts') && !f.endsWith('.d.ts'));
  assert.deepEqual(stray, [], 'no tests, fixtures, benchmarks, sources or source maps');
  assert.ok(info.entryCount < 400, `${info.entryCount} files`);
  assert.ok(info.size < 2_000_000, `${info.size} bytes packed`);
  fs.renameSync(path.join(work, info.filename), path.join(work, 'uniter-ts.tgz'));
});

test('a fresh project installs the tarball from the registry alone and uses it as documented', { timeout: 600_000 }, async () => {
  assert.ok(fs.existsSync(path.join(work, 'uniter-ts.tgz')), 'the pack test ran first');
  fs.mkdirSync(project);
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({
    name: 'consumer', version: '1.0.0', private: true, type: 'module',
    dependencies: { 'uniter-ts': 'file:../uniter-ts.tgz' },
    devDependencies: { '@types/node': PKG.devDependencies['@types/node'] },
  }, null, 2));
  // No .npmrc, no environment switches: what a user's project has, plus the one line README.md
  // documents (npm 11 runs an unreviewed dependency's install script; a denial skips it). The
  // registry is the only source; cached tarballs are preferred.
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (/^(ONNXRUNTIME_NODE_INSTALL|npm_config_onnxruntime_node_install)/i.test(k)) delete env[k];
  await exec('npm', ['pkg', 'set', 'allowScripts.onnxruntime-node=false', '--json'], { cwd: project, env });
  const install = await exec('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: project, env, maxBuffer: 1 << 26, timeout: 300_000 });
  const out = install.stdout + install.stderr;
  assert.doesNotMatch(out, /Unknown (project|user) config/, out);
  assert.doesNotMatch(out, /onnxruntime-node@[\d.]+ \(postinstall/, 'onnxruntime-node is covered by the denial');
  const mod = path.join(project, 'node_modules');
  // The dependencies the package never imports are gone; onnxruntime-node's CUDA download did not run.
  // (msgpackr itself arrives with bullmq; lmdb and lz4js were never imported.)
  for (const gone of ['lmdb', 'lz4js']) assert.ok(!fs.existsSync(path.join(mod, gone)), `${gone} is not installed`);
  const ortBin = path.join(mod, 'onnxruntime-node/bin/napi-v6', process.platform, process.arch);
  assert.ok(fs.readdirSync(ortBin).some((f) => f.startsWith('onnxruntime_binding')), 'the CPU binding ships in the package');
  assert.ok(!fs.readdirSync(ortBin).some((f) => f.includes('providers_cuda')), 'no CUDA libraries were downloaded');
  // With an npm that runs install scripts (npm 10), the documented switch makes the script a no-op.
  const ortScript = await exec(process.execPath, [path.join(mod, 'onnxruntime-node/script/install.js')], { env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip' }, timeout: 30_000 });
  assert.equal(ortScript.stdout + ortScript.stderr, '');

  // The binary.
  const version = await exec(path.join(mod, '.bin/uniter'), ['--version'], { cwd: project });
  assert.equal(version.stdout.trim(), PKG.version);
  const help = await exec(path.join(mod, '.bin/uniter'), ['help', 'pretrain'], { cwd: project });
  assert.match(help.stdout, /usage: uniter pretrain/);

  // The docs/api.md example, as it is written, against the installed package.
  const doc = fs.readFileSync(path.join(ROOT, 'docs/api.md'), 'utf8');
  const example = /## A complete example[\s\S]*?```js\n([\s\S]*?)```/.exec(doc);
  assert.ok(example, 'docs/api.md has its complete example');
  fs.writeFileSync(path.join(project, 'example.mjs'), example[1]);
  const cfg = { ...PRESETS.tiny, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 };
  writeModelFolder(path.join(project, 'model'), cfg, randomParams(cfg, 'pretrain'));
  const run = await exec(process.execPath, ['example.mjs', 'model'], { cwd: project, timeout: 120_000 });
  const lines = run.stdout.trim().split('\n');
  assert.equal(lines.length, 2, run.stdout);
  assert.match(lines[0], /P\(match\) 0\.\d{3} with its image, 0\.\d{3} with another$/);
  assert.match(lines[1], /^ONNX itm_scores -?\d+\.\d{4} -?\d+\.\d{4}$/);
  // The package's own files are found from the installed copy (the vocabulary, package.json).
  assert.ok(fs.existsSync(path.join(project, 'itm.onnx.json')));

  // require() of the ES module (Node >= 20.19, the engines floor), and the exports map's limits.
  fs.writeFileSync(path.join(project, 'req.cjs'), [
    "const u = require('uniter-ts');",
    "console.log(typeof u.Uniter, typeof u.parseConfig, require('uniter-ts/package.json').version);",
    "try { require('uniter-ts/dist/src/api/uniter.js'); console.log('deep import allowed'); } catch (e) { console.log(e.code); }",
  ].join('\n'));
  const req = await exec(process.execPath, ['req.cjs'], { cwd: project });
  assert.equal(req.stdout, `function function ${PKG.version}\nERR_PACKAGE_PATH_NOT_EXPORTED\n`);

  // A strict TypeScript consumer type-checks against the shipped declarations (lib check on).
  fs.writeFileSync(path.join(project, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false, types: ['node'], noUncheckedIndexedAccess: true, exactOptionalPropertyTypes: true },
    files: ['consumer.ts'],
  }));
  fs.writeFileSync(path.join(project, 'consumer.ts'), [
    "import { Uniter, PRESETS, generateWorld, type UniterConfig, type ScoringTask } from 'uniter-ts';",
    "const cfg: UniterConfig = { ...PRESETS.tiny, num_hidden_layers: 1 };",
    "const task: ScoringTask = 'itm';",
    "export async function score(dir: string): Promise<number[]> {",
    "  const model = Uniter.fromPretrained(dir, { task, threads: 1 });",
    "  const world = generateWorld({ preset: 'tiny', numImages: 8 });",
    "  const image = world.images.get(world.images.keys()[0]!);",
    "  return model.scoreItm([{ text: 'a red circle', image }]);",
    "}",
    "export const hidden: number = cfg.hidden_size;",
    "// @ts-expect-error: the config is typed",
    "export const wrong: UniterConfig = { ...cfg, hidden_size: 'big' };",
  ].join('\n') + '\n');
  await exec(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', project], { cwd: project, timeout: 120_000 }).catch((e: { stdout: string; stderr: string }) => assert.fail(`tsc: ${e.stdout}${e.stderr}`));
});
