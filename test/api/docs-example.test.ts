import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { Uniter } from '../../src/api/uniter.js';
import { generateWorld } from '../../src/data/world.js';
import { toNumbers } from '../../src/engine/host.js';
import { PRESETS } from '../../src/model/config.js';
import { randomParams, removeTempDirs, tempDir, writeModelFolder } from '../export/model-folders.js';

after(removeTempDirs);

const DOC = fileURLToPath(new URL('../../../docs/api.md', import.meta.url));
const INDEX = new URL('../../src/index.js', import.meta.url).href;

/** The first ```js block after the heading, with the package imports pointed at this build. */
function exampleFromDocs(heading: string): string {
  const text = fs.readFileSync(DOC, 'utf8');
  const at = text.indexOf(heading);
  assert.ok(at >= 0, `docs/api.md has the heading '${heading}'`);
  const m = /```js\n([\s\S]*?)```/.exec(text.slice(at));
  assert.ok(m, 'a js code block follows the heading');
  return m[1]
    .replace(/from 'uniter-ts'/g, `from '${INDEX}'`)
    .replace(/from 'onnxruntime-node'/g, `from '${import.meta.resolve('onnxruntime-node')}'`);
}

test('the complete example of docs/api.md runs and prints the library and ONNX scores', async () => {
  const root = tempDir('api-docs-');
  // Full bert-base-cased vocabulary and BUTD-sized features (the world's), tiny everything else.
  const cfg = { ...PRESETS.tiny, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64 };
  const modelDir = writeModelFolder(path.join(root, 'model'), cfg, randomParams(cfg, 'pretrain'));
  const script = path.join(root, 'example.mjs');
  fs.writeFileSync(script, exampleFromDocs('## A complete example'));
  const { stdout } = await promisify(execFile)(process.execPath, [script, modelDir], { cwd: root });
  const lines = stdout.trim().split('\n');
  assert.equal(lines.length, 2, stdout);

  // The same computation in this process.
  const world = generateWorld({ preset: 'tiny' });
  const captions = world.textDb('itm_world_val');
  const record = captions.get(captions.ids()[0]);
  const model = Uniter.fromPretrained(modelDir, { task: 'itm', threads: 1 });
  const text = model.tokenizer.decode(record.input_ids as number[]);
  const image = world.images.get(record.img_fname as string);
  const other = world.images.get(world.images.keys().find((n) => n !== record.img_fname)!);
  const [p1, p2] = await model.scoreItm([{ text, image }, { text, image: other }]);
  assert.ok(p1 > 0 && p1 < 1 && p2 > 0 && p2 < 1 && p1 !== p2);
  assert.equal(lines[0], `"${text}": P(match) ${p1.toFixed(3)} with its image, ${p2.toFixed(3)} with another`);
  const logits = toNumbers(await model.scores([{ text, image }]));
  assert.equal(lines[1], `ONNX itm_scores ${logits.map((v) => v.toFixed(4)).join(' ')}`);
  assert.ok(fs.existsSync(path.join(root, 'itm.onnx')) && fs.existsSync(path.join(root, 'itm.onnx.json')));
});
