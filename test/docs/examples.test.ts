/**
 * Every code example in README.md and docs/*.md runs, or says why not.
 *
 * Fenced blocks tagged js/javascript/mjs, ts/typescript, bash/sh/shell are examples. An HTML
 * comment `<!-- not-run: REASON -->` on the line before a block exempts it (the reason is
 * required and each exemption is counted). Everything else runs:
 *
 * - js: as an ES module against the built package. The script is written under dist/, inside
 *   the package, so `import ... from 'uniter-ts'` resolves through the package's own `exports`
 *   map (self-reference), as it does for a user. It runs in a fresh folder holding the fixtures
 *   below; `<!-- args: A B -->` before the block gives its command-line arguments.
 *     tiny-model/     a tiny random UNITER folder with the ITM head (BUTD-sized 2048-d regions)
 *     butd-detector/  the tiny reference Faster R-CNN (test/fixtures/detector/frcnn-tiny)
 *     uniter-base/    a tiny random UNITER whose img_dim (256) matches that detector's features
 *     photo.jpg       a fixture picture
 * - bash: every command line must be `node bin/uniter.js ...` (cheap arguments); it runs in the
 *   repository root and must exit 0. A block with any other line must be marked not-run.
 * - ts: must be marked not-run (examples are written in js so that they run as they are).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { PRESETS } from '../../src/model/config.js';
import { randomParams, removeTempDirs, tempDir, writeModelFolder } from '../export/model-folders.js';

after(removeTempDirs);

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const SCRIPTS = path.join(ROOT, 'dist', 'docs-examples');
after(() => fs.rmSync(SCRIPTS, { recursive: true, force: true }));

export interface Example {
  file: string;
  line: number;
  lang: 'js' | 'ts' | 'bash';
  code: string;
  /** The reason of a `<!-- not-run: ... -->` marker, or null. */
  notRun: string | null;
  args: string[];
}

const LANGS: Record<string, Example['lang']> = { js: 'js', javascript: 'js', mjs: 'js', ts: 'ts', typescript: 'ts', bash: 'bash', sh: 'bash', shell: 'bash' };

/** The fenced examples of a Markdown text (blocks in other languages, or none, are not examples). */
export function findExamples(file: string, text: string): Example[] {
  const lines = text.split('\n');
  const out: Example[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([\w+-]*)/.exec(lines[i]);
    if (!open) continue;
    const fence = open[2];
    let end = i + 1;
    while (end < lines.length && !lines[end].trimStart().startsWith(fence)) end++;
    const lang = LANGS[open[3].toLowerCase()];
    if (lang) {
      // The markers: HTML comments on the lines right before the block.
      let notRun: string | null = null;
      let args: string[] = [];
      for (let k = i - 1; k >= 0 && /^\s*<!--.*-->\s*$/.test(lines[k]); k--) {
        const nr = /<!--\s*not-run:\s*(.*?)\s*-->/.exec(lines[k]);
        if (nr) notRun = nr[1];
        const a = /<!--\s*args:\s*(.*?)\s*-->/.exec(lines[k]);
        if (a) args = a[1].split(/\s+/).filter((x) => x);
      }
      out.push({ file, line: i + 1, lang, code: lines.slice(i + 1, end).join('\n') + '\n', notRun, args });
    }
    i = end;
  }
  return out;
}

/**
 * README.md must open with its two commands and nothing before them, so its opening block
 * carries no marker: it is exempt here by rule (the main job runs for about 21 minutes and is
 * run with few steps by test/pretrain; `npm test` is this suite).
 */
const README_OPENING = 'the main job and the test suite (README opening block; test/pretrain runs the main job with a few steps)';

function allExamples(): Example[] {
  const files = ['README.md', ...fs.readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];
  const all = files.flatMap((f) => findExamples(f, fs.readFileSync(path.join(ROOT, f), 'utf8')));
  for (const ex of all) if (ex.file === 'README.md' && ex.line === 1) ex.notRun = README_OPENING;
  return all;
}

test('findExamples reads languages, markers and arguments', () => {
  const md = [
    'text', '```js', 'console.log(1)', '```',
    '<!-- not-run: needs real weights -->', '```bash', 'npm install', '```',
    '```', 'plain, not an example', '```',
    '<!-- args: a b -->', '```javascript', 'x', '```',
    '<!-- not-run: -->', '```sh', 'y', '```',
  ].join('\n');
  const ex = findExamples('x.md', md);
  assert.deepEqual(ex.map((e) => [e.lang, e.line, e.notRun, e.args]), [['js', 2, null, []], ['bash', 6, 'needs real weights', []], ['js', 13, null, ['a', 'b']], ['bash', 17, '', []]]);
  assert.equal(ex[0].code, 'console.log(1)\n');
});

const run = promisify(execFile);

/** The folder every js example starts in: the fixtures named in the header. */
async function fixtureDir(): Promise<string> {
  const dir = tempDir('docs-example-');
  const small = { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 };
  const world = { ...PRESETS.tiny, ...small };
  writeModelFolder(path.join(dir, 'tiny-model'), world, randomParams(world, 'pretrain'));
  const frcnn = path.join(ROOT, 'test/fixtures/detector/frcnn-tiny');
  fs.mkdirSync(path.join(dir, 'butd-detector'));
  fs.copyFileSync(path.join(frcnn, 'config.json'), path.join(dir, 'butd-detector/config.json'));
  fs.copyFileSync(path.join(frcnn, 'weights.safetensors'), path.join(dir, 'butd-detector/model.safetensors'));
  const forDetector = { ...PRESETS.tiny, ...small, img_dim: 256, img_label_dim: 22 };
  writeModelFolder(path.join(dir, 'uniter-base'), forDetector, randomParams(forDetector, 'pretrain'));
  await sharp(path.join(frcnn, 'images/img0.png')).jpeg({ quality: 92 }).toFile(path.join(dir, 'photo.jpg'));
  return dir;
}

/** Command lines of a bash block: comments and blank lines dropped, continuations joined. */
function commandLines(code: string): string[] {
  return code
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.replace(/(^|\s)#.*$/, '').trim())
    .filter((l) => l.length > 0);
}

test('every example in README.md and docs/ runs, or is marked not-run with a reason', async (t) => {
  const examples = allExamples();
  assert.ok(examples.length >= 5, `found ${examples.length} examples`);
  let ran = 0;
  const skipped: string[] = [];
  let fixtures: string | null = null;
  for (const ex of examples) {
    const where = `${ex.file}:${ex.line}`;
    if (ex.notRun !== null) {
      assert.ok(ex.notRun.length > 0, `${where}: a not-run marker needs a reason`);
      skipped.push(`${where} (${ex.notRun})`);
      continue;
    }
    if (ex.lang === 'ts') assert.fail(`${where}: a TypeScript example cannot run as written; write it in js or mark it <!-- not-run: REASON -->`);
    if (ex.lang === 'bash') {
      const lines = commandLines(ex.code);
      assert.ok(lines.length > 0, `${where}: empty bash example`);
      for (const line of lines) {
        assert.ok(line.startsWith('node bin/uniter.js '), `${where}: '${line}' is not a 'node bin/uniter.js ...' line; mark the block <!-- not-run: REASON --> if it cannot run in the test`);
        const r = await run('bash', ['-c', line], { cwd: ROOT, timeout: 120_000, maxBuffer: 1 << 24 }).catch((e: { code: number; stderr: string }) => assert.fail(`${where}: '${line}' exited ${e.code}: ${e.stderr}`));
        assert.ok(r.stdout.length + r.stderr.length > 0, `${where}: '${line}' printed nothing`);
      }
      ran++;
      continue;
    }
    fixtures ??= await fixtureDir();
    const cwd = fs.mkdtempSync(path.join(fixtures, 'run-'));
    for (const f of ['tiny-model', 'butd-detector', 'uniter-base', 'photo.jpg']) fs.symlinkSync(path.join(fixtures, f), path.join(cwd, f));
    fs.mkdirSync(SCRIPTS, { recursive: true });
    const script = path.join(SCRIPTS, `${ex.file.replace(/[/.]/g, '_')}_${ex.line}.mjs`);
    fs.writeFileSync(script, ex.code);
    const r = await run(process.execPath, [script, ...ex.args], { cwd, timeout: 120_000, maxBuffer: 1 << 24 }).catch((e: { code: number; stderr: string }) => assert.fail(`${where}: the example exited ${e.code}:\n${e.stderr}`));
    assert.doesNotMatch(r.stderr, /Error/, `${where}: ${r.stderr}`);
    assert.ok(r.stdout.trim().length > 0, `${where}: the example printed nothing`);
    ran++;
  }
  t.diagnostic(`examples: ${ran} ran, ${skipped.length} marked not-run: ${skipped.join('; ')}`);
  assert.ok(ran >= 3, `only ${ran} examples ran`);
});
