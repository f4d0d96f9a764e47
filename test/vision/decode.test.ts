import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { checkRgbImage, decodeImage, ImageDecodeError, toRgbImage, type DecodeFailure } from '../../src/vision/decode.js';
import { readSafetensors } from '../../src/engine/safetensors.js';
import { encodePng, pngHeaderOnly } from '../helpers/png.js';

const FIXTURE = fileURLToPath(new URL('../../../test/fixtures/detector/frcnn-tiny/', import.meta.url));

function pattern(n: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 73 + seed * 31 + ((i * i) % 17)) % 256);
}

async function refuses(p: Promise<unknown>, kind: DecodeFailure, re: RegExp): Promise<ImageDecodeError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ImageDecodeError, `expected ImageDecodeError, got ${e}`);
    assert.equal(e.kind, kind, e.message);
    assert.match(e.message, re);
    return e;
  }
  assert.fail(`expected a ${kind} refusal`);
}

test('PNG RGB decodes to the exact stored pixels, from a path and from bytes', async () => {
  const data = pattern(13 * 11 * 3, 1);
  const png = encodePng({ width: 13, height: 11, channels: 3, data });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-decode-'));
  const file = path.join(dir, 'a.png');
  fs.writeFileSync(file, png);
  const a = await decodeImage(file);
  const b = await decodeImage(png);
  assert.equal(a.width, 13);
  assert.equal(a.height, 11);
  assert.equal(a.format, 'png');
  assert.deepEqual([...a.data], data);
  assert.deepEqual(b.data, a.data);
});

test('alpha is dropped, not composited: transparent pixels keep their stored colour (PNG and lossless WebP)', async () => {
  const w = 12;
  const h = 10;
  const rgba = pattern(w * h * 4, 2).map((v, i) => (i % 4 === 3 ? (i % 8 === 3 ? 0 : 100) : v));
  const rgb = rgba.filter((_, i) => i % 4 !== 3);
  const png = await decodeImage(encodePng({ width: w, height: h, channels: 4, data: rgba }));
  assert.deepEqual([...png.data], rgb);
  // exact: keep the RGB of transparent pixels (libwebp otherwise rewrites it to compress better).
  const webp = await sharp(Buffer.from(rgba), { raw: { width: w, height: h, channels: 4 } }).webp({ lossless: true, exact: true }).toBuffer();
  const d = await decodeImage(webp);
  assert.equal(d.format, 'webp');
  assert.deepEqual([...d.data], rgb);
});

test('grey PNG (with and without alpha) becomes three equal channels', async () => {
  const grey = pattern(10 * 10, 3);
  const g = await decodeImage(encodePng({ width: 10, height: 10, channels: 1, data: grey }));
  assert.deepEqual([...g.data], grey.flatMap((v) => [v, v, v]));
  const ga = grey.flatMap((v, i) => [v, i % 3 === 0 ? 0 : 255]);
  const d = await decodeImage(encodePng({ width: 10, height: 10, channels: 2, data: ga }));
  assert.deepEqual([...d.data], grey.flatMap((v) => [v, v, v]));
});

test('16-bit PNG keeps the high byte of each sample (as imread / png_set_strip_16)', async () => {
  // 0x00ff and 0x7f80 tell the high byte (0, 127) from rounding v * 255 / 65535 (1, 127) and 0x80ff (128 vs 128) ...
  const base = [0x1234, 0xfff0, 0x00ff, 0x80ff, 0x7f80, 0xff7f, 0x0180, 0x017f, 0x0080, 0xfe80, 0xff80, 0x0000];
  const data = Array.from({ length: 10 * 10 * 3 }, (_, i) => base[i % base.length]);
  const d = await decodeImage(encodePng({ width: 10, height: 10, channels: 3, data, depth: 16 }));
  assert.deepEqual([...d.data], data.map((v) => v >> 8));
  const rgba = Array.from({ length: 10 * 10 * 4 }, (_, i) => base[i % base.length]);
  const d4 = await decodeImage(encodePng({ width: 10, height: 10, channels: 4, data: rgba, depth: 16 }));
  assert.deepEqual([...d4.data], rgba.filter((_, i) => i % 4 !== 3).map((v) => v >> 8));
  const grey = Array.from({ length: 100 }, (_, i) => base[i % base.length]);
  const g = await decodeImage(encodePng({ width: 10, height: 10, channels: 1, data: grey, depth: 16 }));
  assert.deepEqual([...g.data], grey.flatMap((v) => [v >> 8, v >> 8, v >> 8]));
});

test('lossless WebP decodes exactly; JPEG decodes close to its source', async () => {
  const data = pattern(16 * 12 * 3, 4);
  const raw = { raw: { width: 16, height: 12, channels: 3 as const } };
  const webp = await decodeImage(await sharp(Buffer.from(data), raw).webp({ lossless: true }).toBuffer());
  assert.deepEqual([...webp.data], data);
  // A smooth gradient survives JPEG at quality 100 within a few levels.
  const smooth = Array.from({ length: 32 * 24 * 3 }, (_, i) => ((i / 3) | 0) % 32 * 4 + (i % 3) * 20);
  const jpg = await decodeImage(await sharp(Buffer.from(smooth), { raw: { width: 32, height: 24, channels: 3 } }).jpeg({ quality: 100, chromaSubsampling: '4:4:4' }).toBuffer());
  assert.equal(jpg.format, 'jpeg');
  assert.equal(jpg.width, 32);
  assert.equal(jpg.height, 24);
  let worst = 0;
  for (let i = 0; i < smooth.length; i++) worst = Math.max(worst, Math.abs(jpg.data[i] - smooth[i]));
  assert.ok(worst <= 6, `JPEG q100 differs by ${worst} levels`);
});

test('EXIF orientation is applied (3: 180 degrees, 6: 90 degrees clockwise), for PNG exactly and JPEG', async () => {
  // 12 x 10 image; pixel (x, y) holds (x * 20, y * 20, 7).
  const W = 12;
  const H = 10;
  const data: number[] = [];
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) data.push(x * 20, y * 20, 7);
  const src = encodePng({ width: W, height: H, channels: 3, data });
  const at = (img: { width: number; data: Uint8Array }, x: number, y: number) => [...img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3)];

  const o3 = await decodeImage(await sharp(src).withMetadata({ orientation: 3 }).png().toBuffer());
  assert.equal(o3.orientation, 3);
  assert.deepEqual([o3.width, o3.height], [W, H]);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) assert.deepEqual(at(o3, x, y), [(W - 1 - x) * 20, (H - 1 - y) * 20, 7]);

  const o6 = await decodeImage(await sharp(src).withMetadata({ orientation: 6 }).png().toBuffer());
  assert.equal(o6.orientation, 6);
  assert.deepEqual([o6.width, o6.height], [H, W]);
  // 90 degrees clockwise: displayed (x', y') shows stored (y', H - 1 - x').
  for (let y = 0; y < W; y++) for (let x = 0; x < H; x++) assert.deepEqual(at(o6, x, y), [y * 20, (H - 1 - x) * 20, 7]);

  const j6 = await decodeImage(await sharp(src).jpeg({ quality: 100, chromaSubsampling: '4:4:4' }).withMetadata({ orientation: 6 }).toBuffer());
  assert.deepEqual([j6.width, j6.height, j6.orientation], [H, W, 6]);
  for (const [x, y] of [[0, 0], [9, 0], [0, 11], [9, 11]]) {
    const got = at(j6, x, y);
    const want = [y * 20, (H - 1 - x) * 20, 7];
    for (let c = 0; c < 3; c++) assert.ok(Math.abs(got[c] - want[c]) <= 8, `JPEG orientation 6 at (${x}, ${y}): ${got} vs ${want}`);
  }
});

test('CMYK JPEG is converted to RGB by libvips (a CMYK red stays red)', async () => {
  const red = Array.from({ length: 16 * 16 * 3 }, (_, i) => [220, 20, 30][i % 3]);
  const cmyk = await sharp(Buffer.from(red), { raw: { width: 16, height: 16, channels: 3 } }).toColourspace('cmyk').jpeg({ quality: 100 }).toBuffer();
  assert.equal((await sharp(cmyk).metadata()).space, 'cmyk');
  const d = await decodeImage(cmyk);
  assert.equal(d.data.length, 16 * 16 * 3);
  const [r, g, b] = d.data;
  assert.ok(r > 150 && g < 90 && b < 90, `CMYK red decoded as ${r}, ${g}, ${b}`);
});

test('an animated WebP gives its first frame and reports the frame count', async () => {
  const frame = (rgb: number[]) => encodePng({ width: 16, height: 16, channels: 3, data: Array.from({ length: 16 * 16 * 3 }, (_, i) => rgb[i % 3]) });
  const anim = await sharp([frame([255, 0, 0]), frame([0, 0, 255])], { join: { animated: true } }).webp({ lossless: true }).toBuffer();
  const d = await decodeImage(anim);
  assert.equal(d.frames, 2);
  assert.deepEqual([d.width, d.height], [16, 16]);
  assert.deepEqual([...d.data.subarray(0, 3)], [255, 0, 0]);
});

test('the golden fixture PNGs decode to exactly inputs.safetensors imgN/rgb', async () => {
  const st = readSafetensors(path.join(FIXTURE, 'inputs.safetensors'));
  for (const name of ['img0', 'img1']) {
    const want = st.tensors.get(`${name}/rgb`);
    assert.ok(want, `${name}/rgb missing`);
    const d = await decodeImage(path.join(FIXTURE, 'images', `${name}.png`));
    assert.deepEqual([d.height, d.width, 3], want.shape);
    assert.ok(want.data instanceof Uint8Array);
    assert.ok(Buffer.from(d.data).equals(Buffer.from(want.data)), `${name}: pixels differ`);
  }
});

test('refusals name the file and the reason', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-decode-bad-'));
  const good = encodePng({ width: 40, height: 30, channels: 3, data: pattern(40 * 30 * 3, 5) });
  const put = (name: string, bytes: Uint8Array) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, bytes);
    return f;
  };
  await refuses(decodeImage(path.join(dir, 'missing.jpg')), 'unreadable', /missing\.jpg: cannot read image \(no such file\)/);
  await refuses(decodeImage(dir), 'unreadable', /is a directory/);
  await refuses(decodeImage(put('empty.png', new Uint8Array(0))), 'corrupt', /empty\.png: empty file/);
  await refuses(decodeImage(put('text.jpg', Buffer.from('this is not an image at all'))), 'unsupported', /text\.jpg: not a JPEG, PNG or WebP image/);
  await refuses(decodeImage(put('trunc.png', good.subarray(0, good.length - 40))), 'corrupt', /trunc\.png: corrupt or truncated PNG data/);
  const jpg = await sharp(good).jpeg().toBuffer();
  await refuses(decodeImage(put('trunc.jpg', jpg.subarray(0, jpg.length >> 1))), 'corrupt', /trunc\.jpg: corrupt or truncated JPEG data/);
  await refuses(decodeImage(put('head.jpg', jpg.subarray(0, 30))), 'corrupt', /head\.jpg: corrupt or truncated image header/);
  const garbage = Buffer.concat([good.subarray(0, 33), Buffer.alloc(200, 0x5a)]);
  await refuses(decodeImage(put('garbage.png', garbage)), 'corrupt', /garbage\.png: corrupt/);
  await refuses(decodeImage(put('a.gif', await sharp(good).gif().toBuffer())), 'unsupported', /a\.gif: unsupported image format GIF \(accepted: JPEG, PNG, WebP\)/);
  await refuses(decodeImage(put('cut.gif', Buffer.from('GIF89a\x10\x00'))), 'unsupported', /cut\.gif: unsupported image format GIF/);
  await refuses(decodeImage(put('a.tif', await sharp(good).tiff().toBuffer())), 'unsupported', /unsupported image format TIFF/);
  await refuses(decodeImage(put('a.avif', await sharp(good).avif().toBuffer())), 'unsupported', /unsupported image format HEIF\/AVIF/);
  await refuses(decodeImage(put('one.png', encodePng({ width: 1, height: 1, channels: 3, data: [1, 2, 3] }))), 'too-small', /one\.png: image is 1 x 1 px; the shorter side must be at least 10 px/);
  await refuses(decodeImage(put('thin.png', encodePng({ width: 200, height: 9, channels: 1, data: new Array(1800).fill(9) }))), 'too-small', /200 x 9/);
  await refuses(decodeImage(encodePng({ width: 9, height: 9, channels: 1, data: new Array(81).fill(9) }), { name: 'bytes-9' }), 'too-small', /^bytes-9: /);
  // A real 30000 x 10 image, and headers of 30000 x 30000 (2.7 GB of pixels) and 11000 x 10000.
  await refuses(decodeImage(put('wide.png', await sharp({ create: { width: 30000, height: 10, channels: 3, background: 'red' } }).png().toBuffer())), 'too-large', /wide\.png: image is 30000 x 10 px; sides over 20000 px are refused/);
  const t0 = performance.now();
  const heap0 = process.memoryUsage().rss;
  await refuses(decodeImage(put('huge.png', pngHeaderOnly(30000, 30000))), 'too-large', /huge\.png: image is 30000 x 30000 px/);
  assert.ok(performance.now() - t0 < 2000, 'the size check must not decode pixels');
  assert.ok(process.memoryUsage().rss - heap0 < 500e6, 'the size check must not allocate the pixels');
  await refuses(decodeImage(put('mp.png', pngHeaderOnly(11000, 10000))), 'too-large', /110\.0 megapixels; more than 100 megapixels are refused/);
  await refuses(decodeImage(encodePng({ width: 40, height: 30, channels: 3, data: pattern(3600, 1) }), { limits: { maxPixels: 1000 } }), 'too-large', /megapixels/);
});

test('toRgbImage passes pixels through after checking them', async () => {
  const img = { width: 10, height: 10, data: new Uint8Array(300) };
  assert.equal(await toRgbImage(img), img);
  assert.throws(() => checkRgbImage({ width: 10, height: 10, data: new Uint8Array(299) }, 'mine'), /mine: data must be a Uint8Array of 10 x 10 x 3 = 300 bytes/);
  assert.throws(() => checkRgbImage({ width: 1, height: 1, data: new Uint8Array(3) }), /shorter side must be at least 10/);
  const png = encodePng({ width: 10, height: 10, channels: 3, data: pattern(300, 9) });
  assert.deepEqual([...(await toRgbImage(png)).data], pattern(300, 9));
});
