import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { JsonlLogger, ProgressDisplay, formatDuration, readJsonl } from '../../src/pretrain/progress.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-progress-test-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

function fakeStream(isTTY: boolean) {
  const writes: string[] = [];
  return { writes, stream: { isTTY, columns: 120, write: (t: string) => writes.push(t) } };
}

function clock() {
  let t = 0;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

describe('ProgressDisplay', () => {
  it('redraws one line in place on a terminal with step, task, loss, throughput and ETA', () => {
    const { writes, stream } = fakeStream(true);
    const c = clock();
    const p = new ProgressDisplay({ total: 100, stream, now: c.now });
    for (let step = 1; step <= 10; step++) {
      c.advance(500); // 2 steps per second, 4000 tokens per step
      p.update({ step, task: 'mlm_coco', loss: 3.25, lr: 5e-5, tokens: 4000 });
    }
    const last = writes[writes.length - 1];
    assert.ok(last.startsWith('\r\x1b[K'), 'redraws in place');
    assert.ok(!last.includes('\n'));
    assert.match(last, /step  10\/100 {2}10\.0%/);
    assert.match(last, /mlm_coco/);
    assert.match(last, /loss 3\.2500/);
    assert.match(last, /lr 5\.00e-5/);
    assert.match(last, /8\.0k tok\/s/);
    assert.match(last, /ETA 45s/); // 90 steps at 0.5 s
    assert.match(last, /\[##\.{26}\] step/, 'a 30-column bar, 10% filled');
    assert.ok(writes.length === 10, 'redraws at most once per 100 ms');

    p.log('validation: mlm acc 0.42');
    assert.equal(writes[writes.length - 2], '\r\x1b[Kvalidation: mlm acc 0.42\n');
    assert.ok(writes[writes.length - 1].startsWith('\r\x1b[Kstep') || writes[writes.length - 1].startsWith('\r\x1b[K['), 'live line restored after a message');
    p.done();
    assert.equal(writes[writes.length - 1], '\n');
  });

  it('throttles terminal redraws', () => {
    const { writes, stream } = fakeStream(true);
    const c = clock();
    const p = new ProgressDisplay({ total: 1000, stream, now: c.now, redrawIntervalMs: 100 });
    for (let step = 1; step <= 100; step++) {
      c.advance(10);
      p.update({ step });
    }
    assert.ok(writes.length >= 9 && writes.length <= 11, `${writes.length} redraws for 1 s of updates`);
  });

  it('prints plain periodic lines when not a terminal, always the first and last step', () => {
    const { writes, stream } = fakeStream(false);
    const c = clock();
    const p = new ProgressDisplay({ total: 60, stream, now: c.now, lineIntervalMs: 10_000, startStep: 20 });
    for (let step = 21; step <= 60; step++) {
      c.advance(1000);
      p.update({ step, task: 'itm_vg', loss: 0.69, tokens: 100 });
    }
    p.done();
    assert.ok(writes.every((w) => w.endsWith('\n') && !w.includes('\r') && !w.includes('\x1b')));
    assert.match(writes[0], /^step 21\/60/);
    assert.match(writes[writes.length - 1], /^step 60\/60 100\.0%/);
    assert.ok(writes.length >= 4 && writes.length <= 6, `${writes.length} lines over 40 s at one per 10 s`);
  });

  it('writes nothing when quiet', () => {
    const { writes, stream } = fakeStream(true);
    const p = new ProgressDisplay({ total: 5, stream, quiet: true });
    p.update({ step: 1, loss: 1 });
    p.log('hello');
    p.done();
    assert.deepEqual(writes, []);
  });

  it('formats durations compactly', () => {
    assert.equal(formatDuration(42), '42s');
    assert.equal(formatDuration(185), '3m05s');
    assert.equal(formatDuration(2 * 3600 + 7 * 60), '2h07m');
    assert.equal(formatDuration(3 * 86400 + 4 * 3600), '3d04h');
  });
});

describe('JsonlLogger / readJsonl', () => {
  it('appends one JSON object per line, keeping non-finite numbers readable', () => {
    const file = path.join(root, 'a.jsonl');
    const log = new JsonlLogger(file);
    log.log({ type: 'train', step: 1, task: 'mlm_coco', loss: 2.5 });
    log.log({ type: 'train', step: 2, task: 'itm_coco', loss: NaN });
    // Written through: readable before close.
    assert.equal(fs.readFileSync(file, 'utf8').split('\n').length, 3);
    log.close();
    assert.deepEqual(readJsonl(file), [
      { type: 'train', step: 1, task: 'mlm_coco', loss: 2.5 },
      { type: 'train', step: 2, task: 'itm_coco', loss: 'NaN' },
    ]);
    assert.throws(() => log.log({ step: 3 }), /log is closed/);
  });

  it('drops a torn last line from a killed writer, and cuts it before appending again', () => {
    const file = path.join(root, 'torn.jsonl');
    fs.writeFileSync(file, '{"type":"train","step":1,"loss":1}\n{"type":"train","st');
    assert.deepEqual(readJsonl(file), [{ type: 'train', step: 1, loss: 1 }]);
    const log = new JsonlLogger(file);
    log.log({ type: 'train', step: 2, loss: 0.5 });
    log.close();
    assert.deepEqual(readJsonl(file).map((r) => r.step), [1, 2]);
  });

  it('names the line of a corrupt record in the middle', () => {
    const file = path.join(root, 'bad.jsonl');
    fs.writeFileSync(file, '{"step":1}\nnot json\n{"step":3}\n');
    assert.throws(() => readJsonl(file), new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: not a JSON record`));
  });

  it('on resume, drops records after the checkpoint step so curves are not doubled', () => {
    const file = path.join(root, 'resume.jsonl');
    const log = new JsonlLogger(file);
    for (let step = 1; step <= 8; step++) log.log({ type: 'train', step, loss: 1 / step });
    log.log({ type: 'val', step: 5, task: 'mlm_coco', acc: 0.3 });
    log.log({ type: 'note', text: 'no step field' });
    log.close();
    const resumed = new JsonlLogger(file, { resumeFromStep: 5 });
    resumed.log({ type: 'train', step: 6, loss: 0.16 });
    resumed.close();
    const recs = readJsonl(file);
    assert.deepEqual(recs.filter((r) => r.type === 'train').map((r) => r.step), [1, 2, 3, 4, 5, 6]);
    assert.equal(recs.filter((r) => r.type === 'val').length, 1);
    assert.equal(recs.filter((r) => r.type === 'note').length, 1);
  });
});
