/**
 * The page in a real browser: Debian's chromium driven by puppeteer-core (never a downloaded
 * browser). It loads the page, submits a caption, hovers a word and checks that the shaded
 * regions are the ones with the largest transport-plan mass for that word, then the same with
 * attention. Screenshots go to a temp dir, or to docs/ with UNITER_SCREENSHOTS=docs (and
 * UNITER_SERVE_MODEL=DIR to show a trained model, e.g. the main job's).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateWorld } from '../../src/data/world.js';
import { embeddedRecipe } from '../../src/pretrain/run.js';
import { worldGallery } from '../../src/serve/gallery.js';
import { RunningServer, startServer } from '../../src/serve/server.js';
import { removeTempDirs } from '../export/model-folders.js';
import { serveFixture } from './fixtures.js';

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));
if (!CHROMIUM) {
  console.error('\n*** SKIPPING the browser test: no chromium at /usr/bin/chromium. Install it with `apt-get install -y chromium` (.ci/run does). ***\n');
}

let server: RunningServer;
type Browser = import('puppeteer-core').Browser;
let browser: Browser;
const shots = process.env.UNITER_SCREENSHOTS === 'docs' ? 'docs/img' : fs.mkdtempSync(path.join(os.tmpdir(), 'serve-shots-'));

before(async () => {
  if (!CHROMIUM) return;
  const trained = process.env.UNITER_SERVE_MODEL;
  if (trained) {
    server = await startServer({ modelDir: trained, gallery: worldGallery(generateWorld(embeddedRecipe().world)), port: 0, threads: 1 });
  } else {
    const { modelDir, gallery } = serveFixture();
    server = await startServer({ modelDir, gallery, port: 0, threads: 1 });
  }
  const puppeteer = (await import('puppeteer-core')).default;
  browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
});

after(async () => {
  await browser?.close();
  await server?.close();
  removeTempDirs();
});

test('the page: caption in, score out; hovering a word shades the regions with the most plan mass', { skip: !CHROMIUM && 'chromium not installed' }, async () => {
  fs.mkdirSync(shots, { recursive: true });
  const page = await browser.newPage();
  await page.setViewport({ width: 1440, height: 900 });
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(server.url + '/', { waitUntil: 'load' });
  await page.waitForSelector('body[data-ready="1"]');
  const galleryCount = await page.$$eval('#gallery canvas', (cs) => cs.length);
  assert.ok(galleryCount >= 4);

  // Pick the second gallery image and submit one of its captions.
  await page.click('#gallery canvas:nth-child(2)');
  const imageId = await page.$eval('#gallery canvas.selected', (c) => (c as HTMLElement).dataset.id!);
  const caption = await page.$eval('#suggestions button', (b) => b.textContent!);
  await page.$eval('#text', (el, v) => ((el as HTMLInputElement).value = v as string), caption);
  await page.click('#run');
  await page.waitForSelector('body[data-aligned]');
  const result = await page.$eval('#result', (el) => el.textContent!);
  assert.match(result, /\d+\.\d% match/);

  // The API's own alignment of the same pair: the reference for what the page must shade.
  const res = await fetch(server.url + '/api/alignment', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: caption, image: imageId }) });
  const al = (await res.json()) as { words: Array<{ text: string; tokens: number[] }>; plan: number[][]; regions: number; attention: { textToRegion: number[][][][]; layers: number; heads: number } };
  const wordCount = await page.$$eval('#words .word', (ws) => ws.length);
  assert.equal(wordCount, al.words.length);
  // A content word (the last before the period is usually a shape).
  const w = al.words.map((x, i) => ({ x, i })).filter(({ x }) => /^[a-z]{3,}$/.test(x.text)).pop()!.i;
  await page.hover(`#words .word[data-word="${w}"]`);
  const shadedRects = await page.$$eval('#regions rect', (rs) => rs.map((r) => ({ k: Number((r as SVGElement).dataset.region), opacity: Number((r as SVGElement).style.fillOpacity) })));
  // Drawn largest first: index the shades by region number.
  const shaded = [...shadedRects].sort((a, b) => a.k - b.k);
  assert.deepEqual(shaded.map((s) => s.k), [...Array(al.regions).keys()]);
  assert.equal(shaded.length, al.regions);
  const mass = Array.from({ length: al.regions }, (_, k) => al.words[w].tokens.reduce((s, t) => s + al.plan[t][k], 0));
  const order = (xs: number[]) => xs.map((v, k) => ({ v, k })).sort((a, b) => b.v - a.v).map((e) => e.k);
  const byMass = order(mass);
  const byShade = order(shaded.map((s) => s.opacity));
  // The most shaded regions are the ones with the largest plan mass, in the same order.
  assert.equal(byShade[0], byMass[0], `most shaded region ${byShade[0]}, largest mass ${byMass[0]} (${mass.map((m) => m.toFixed(4)).join(' ')})`);
  assert.ok(Math.abs(shaded[byMass[0]].opacity - 0.75) < 1e-6);
  for (let k = 0; k < al.regions; k++) assert.ok(Math.abs(shaded[k].opacity - (0.75 * mass[k]) / mass[byMass[0]]) < 1e-3, `region ${k} shade ${shaded[k].opacity} vs mass ${mass[k]}`);
  await page.screenshot({ path: path.join(shots, 'serve-plan.png') });

  // Attention, last layer, head 1: shading follows that head's token-to-region attention.
  await page.click('input[name=mode][value=attention]');
  await page.select('#head', '0');
  await page.hover(`#words .word[data-word="${w}"]`);
  const att = (await page.$$eval('#regions rect', (rs) => rs.map((r) => [Number((r as SVGElement).dataset.region), Number((r as SVGElement).style.fillOpacity)]))).sort((a, b) => a[0] - b[0]).map((x) => x[1]);
  const L = al.attention.layers - 1;
  const amass = Array.from({ length: al.regions }, (_, k) => al.words[w].tokens.reduce((s, t) => s + al.attention.textToRegion[L][0][t][k], 0));
  assert.equal(order(att)[0], order(amass)[0]);
  await page.screenshot({ path: path.join(shots, 'serve-attention.png') });

  // Clicking a region lists its words by plan mass.
  await page.click('input[name=mode][value=plan]');
  await page.$eval(`#regions rect[data-region="${byMass[0]}"]`, (r) => r.dispatchEvent(new MouseEvent('click', { bubbles: true })));
  const regionWords = await page.$eval('#region-words', (el) => el.textContent!);
  assert.match(regionWords, new RegExp(`region ${byMass[0]}`));

  // Retrieval: the gallery ranked live by the caption; its own image should be among those shown.
  await page.select('#task', 'retrieval');
  await page.click('#run');
  await page.waitForSelector('#ranking li');
  const ranked = await page.$$eval('#ranking li', (ls) => ls.map((l) => (l as HTMLElement).dataset.id));
  assert.equal(ranked.length, galleryCount);
  assert.ok(ranked.includes(imageId));
  await page.screenshot({ path: path.join(shots, 'serve-retrieval.png'), fullPage: true });
  for (const f of ['serve-plan.png', 'serve-attention.png', 'serve-retrieval.png']) {
    const head = fs.readFileSync(path.join(shots, f)).subarray(0, 8);
    assert.deepEqual([...head], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `${f} is a PNG`);
  }
  assert.deepEqual(errors, []);
  await page.close();
});
