/** Issue 16: one CLI grammar: every command's --help explains every option; one exit-code and error convention. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { uniterProcess } from '../helpers/cli.js';


const uniter = uniterProcess;

const COMMANDS = ['finetune', 'evaluate', 'data', 'world', 'convert', 'check-golden', 'pretrain', 'export-onnx', 'ablate', 'extract', 'serve', 'worker', 'retrieval-score'];

test('every command (and data build / inspect) prints its full help with --help, every option on a line of its own, exit 0', async () => {
  const top = await uniter('--help');
  const listed = [...top.stdout.matchAll(/^ {2}([a-z-]+) +/gm)].map((m) => m[1]);
  assert.deepEqual([...listed].sort(), [...COMMANDS].sort());
  for (const args of [...COMMANDS.map((c) => [c]), ['data', 'build'], ['data', 'inspect']]) {
    const r = await uniter(...args, '--help');
    // The parser refuses to print a help text that lacks a line for one of the command's options (exit 1).
    assert.equal(r.code, 0, `${args.join(' ')} --help: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^usage: uniter ${args.join(' ')}`), args.join(' '));
    assert.equal(r.stderr, '', args.join(' '));
  }
  // pretrain --help is no longer one line
  const p = await uniter('help', 'pretrain');
  for (const flag of ['--config', '--out', '--steps', '--seed', '--resume', '--allow-changed', '--overwrite', '--threads', '--json', '--quiet']) assert.match(p.stdout, new RegExp(`^\\s+${flag}\\b`, 'm'), flag);
});

test('usage errors exit 2 with one "uniter CMD:" line and the synopsis once; failures exit 1 with the same prefix', async () => {
  const cases: Array<[string[], number, RegExp]> = [
    [['finetune'], 2, /^uniter finetune: missing TASK\n/],
    [['finetune', 'vqa', '--bogus'], 2, /^uniter finetune: unknown option --bogus\n/],
    [['finetune', 'nosuch'], 2, /^uniter finetune: unknown task 'nosuch'/],
    [['evaluate', 'vqa'], 2, /^uniter evaluate: --checkpoint DIR is required\n/],
    [['pretrain', '--steps', 'x'], 2, /^uniter pretrain: --steps must be an integer >= 1/],
    [['data'], 2, /^uniter data: missing subcommand/],
    [['data', 'build'], 2, /^uniter data build: missing --jsonl, --images, --out\n/],
    [['data', 'build', '--frob'], 2, /^uniter data build: unknown option --frob\n/],
    [['data', 'inspect'], 2, /^uniter data inspect: missing PATH\n/],
    [['world'], 2, /^uniter world: --out DIR is required\n/],
    [['convert', 'a', 'b', '--frobnicate'], 2, /^uniter convert: unknown option --frobnicate\n/],
    [['check-golden'], 2, /^uniter check-golden: missing fixture directory/],
    [['export-onnx', 'x.onnx'], 2, /^uniter export-onnx: --checkpoint DIR is required\n/],
    [['ablate', '--seeds', '0'], 2, /^uniter ablate: --seeds must be an integer >= 1/],
    [['extract'], 2, /^uniter extract: --out STORE is required\n/],
    [['extract', '--out', '/tmp/uniter-never-written', 'a.png'], 2, /^uniter extract: --detector DIR is required\n/],
    [['extract', '--frob'], 2, /^uniter extract: unknown option --frob\n/],
    [['extract', '--out', '/tmp/uniter-never-written', '--threads', '0', 'a.png'], 2, /^uniter extract: --threads must be an integer >= 1, got '0'\n/],
    [['retrieval-score'], 2, /^uniter retrieval-score: --model DIR is required\n/],
    [['retrieval-score', '--frob'], 2, /^uniter retrieval-score: unknown option --frob\n/],
    [['worker'], 2, /^uniter worker: --redis URL is required\n/],
    [['worker', '--redis', 'http://x'], 2, /^uniter worker: --redis http:\/\/x: the scheme must be redis:\/\//],
    [['worker', '--redis', 'redis://127.0.0.1:6379', '--lock-ms', '100'], 2, /^uniter worker: --lock-ms must be an integer >= 500, got '100'\n/],
    [['serve', '--model', '/nonexistent', '--port', 'x'], 2, /^uniter serve: --port must be an integer >= 0, got 'x'\n/],
    [['export-onnx', '--checkpoint', 'm', 'x.onnx', '--opset', '99'], 2, /^uniter export-onnx: --opset must be 18\.\.21, got 99\n/],
    [['data', 'inspect', '/nonexistent/x'], 1, /^uniter data inspect: \/nonexistent\/x: no such file/],
    [["convert", "/nonexistent/x.pt", "/tmp/uniter-never-written"], 1, /^uniter convert: \/nonexistent\/x\.pt: cannot read checkpoint/],
    [['evaluate', 'vqa', '--checkpoint', '/nonexistent/m'], 1, /^uniter evaluate: checkpoint '\/nonexistent\/m' does not exist/],
  ];
  for (const [args, code, pattern] of cases) {
    const r = await uniter(...args);
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(pattern.source, 'm'), args.join(' '));
    assert.equal((r.stderr.match(/^usage: /gm) ?? []).length, code === 2 ? 1 : 0, `${args.join(' ')}: the synopsis is printed once for usage errors, never for failures:\n${r.stderr}`);
    assert.equal(r.stdout, '', args.join(' '));
  }
});

test('uniter --version and uniter help CMD still work', async () => {
  assert.match((await uniter('--version')).stdout, /^\d+\.\d+\.\d+\n$/);
  const viaHelp = await uniter('help', 'convert');
  assert.equal(viaHelp.code, 0);
  assert.equal(viaHelp.stdout, (await uniter('convert', '--help')).stdout);
  assert.match(viaHelp.stdout, /--num-heads N/);
});

test('every usage error has the one form: "uniter CMD: message", the synopsis of CMD --help, where the full help is; exit 2', async () => {
  const cases: string[][] = [['convert'], ['export-onnx'], ['extract'], ['retrieval-score'], ['worker'], ['serve', '--model', '/nonexistent', '--port', 'x'], ['evaluate', 'vqa'], ['world'], ['pretrain', '--steps', 'x'], ['ablate', '--seeds', '0'], ['check-golden'], ['finetune']];
  for (const args of cases) {
    const name = args[0];
    const synopsis = (await uniter(name, '--help')).stdout.split('\n')[0].trim();
    const r = await uniter(...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    const lines = r.stderr.split('\n');
    assert.match(lines[0], new RegExp(`^uniter ${name}: \\S`), args.join(' '));
    assert.equal(lines[1], synopsis, `${args.join(' ')}: the synopsis line of 'uniter ${name} --help'`);
    assert.equal(lines[2], `(every option: uniter help ${name})`, args.join(' '));
  }
});
