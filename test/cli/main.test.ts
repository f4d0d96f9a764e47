import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { uniterProcess } from '../helpers/cli.js';

const PKG = JSON.parse(fs.readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

const uniter = uniterProcess;

test('uniter --version prints the version of package.json', async () => {
  for (const flag of ['--version', '-v', 'version']) {
    const r = await uniter(flag);
    assert.equal(r.code, 0);
    assert.equal(r.stdout, `${PKG.version}\n`);
    assert.match(r.stdout, /^\d+\.\d+\.\d+/);
  }
});

test('uniter help CMD is uniter CMD --help, for every command', async () => {
  const top = await uniter('--help');
  assert.equal(top.code, 0);
  assert.match(top.stdout, /uniter help <command>/);
  const names = [...top.stdout.matchAll(/^ {2}([a-z-]+) +/gm)].map((m) => m[1]);
  assert.ok(names.includes('finetune') && names.includes('pretrain') && names.length >= 10, names.join(' '));
  for (const name of ['finetune', 'pretrain', 'data', 'export-onnx']) {
    const viaHelp = await uniter('help', name);
    const viaFlag = await uniter(name, '--help');
    assert.equal(viaHelp.code, 0, viaHelp.stderr);
    assert.equal(viaHelp.stdout, viaFlag.stdout);
    assert.notEqual(viaHelp.stdout, top.stdout);
    assert.match(viaHelp.stdout, new RegExp(`uniter ${name}`));
  }
  assert.equal((await uniter('help')).stdout, top.stdout);
});

test('uniter help with an unknown command fails with a clear message', async () => {
  const r = await uniter('help', 'pretrian');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown command 'pretrian'/);
});
