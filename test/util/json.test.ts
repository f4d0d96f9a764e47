import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { readJsonFile, readJsonObject } from '../../src/util/json.js';

describe('util/json', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-json-'));
  const write = (name: string, text: string) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text);
    return f;
  };

  it('parses a file', () => {
    assert.deepEqual(readJsonFile(write('ok.json', '[1, {"a": 2}]'), 'list'), [1, { a: 2 }]);
    assert.deepEqual(readJsonObject(write('obj.json', '{"a": 1}'), 'thing'), { a: 1 });
  });

  it('tells a missing file from a file that does not parse, naming the file and what it holds', () => {
    const missing = path.join(dir, 'absent.json');
    assert.throws(() => readJsonFile(missing, 'the model config'), (e: Error) => e.message.startsWith(`${missing}: cannot read the model config (`) && /ENOENT/.test(e.message));
    const bad = write('bad.json', '{ "a": ');
    assert.throws(() => readJsonFile(bad, 'the model config'), (e: Error) => e.message.startsWith(`${bad}: the model config is not valid JSON (`));
  });

  it('insists on an object where one is needed', () => {
    const arr = write('arr.json', '[1]');
    assert.throws(() => readJsonObject(arr, 'trainer state'), new RegExp(`arr\\.json: trainer state must be a JSON object, got an array`));
    assert.throws(() => readJsonObject(write('null.json', 'null'), 'trainer state'), /got null/);
  });

  it('raises the caller\'s error class', () => {
    class MyError extends Error {}
    assert.throws(() => readJsonFile(path.join(dir, 'none.json'), 'x', (m) => new MyError(m)), (e: unknown) => e instanceof MyError);
  });
});
