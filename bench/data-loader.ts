/**
 * Data-loading throughput: examples/second of the full loading path for MLM and ITM (with OT
 * inputs) batches: store read (txt_db: LMDB + lz4 + msgpack; img_db: LMDB + msgpack float16 ->
 * float32) -> task dataset (masking / negatives) -> collate. The stores are written to a
 * temporary directory first (synthetic: 2048-d float16-exact features, 36 regions per image,
 * 40 wordpieces per caption) and removed afterwards. For comparison the same data is also read
 * from memory (float16 decoded per read, no LMDB), which isolates the store overhead.
 * Prints one JSON object. Not run by CI.
 *
 *   node dist/bench/data-loader.js [--seconds 3] [--batch-tokens 6144]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { floatToHalf, halfToFloat } from '../src/engine/host.js';
import { Rng } from '../src/util/rng.js';
import type { ImageRecord, ImageSource, TextRecord, TextSource } from '../src/data/types.js';
import { MemoryTextSource } from '../src/data/golden-batches.js';
import { ItmDataset, MlmDataset, type TaskDataset } from '../src/data/datasets.js';
import { TaskLoader } from '../src/data/sampler.js';
import { ImgDb, writeImgDb } from '../src/data/imgdb.js';
import { TxtDb, writeTxtDb } from '../src/data/txtdb.js';

const IMG_DIM = 2048;
const NBB = 36;
const WORDPIECES = 40;
const N_IMAGES = 256;
const N_CAPTIONS = 2048;

interface SyntheticImage {
  fname: string;
  /** float16 words, as a store holds them. */
  feat: Uint16Array;
  bb: Uint16Array;
}

function synthesize(rng: Rng): { images: SyntheticImage[]; captions: TextRecord[] } {
  const images: SyntheticImage[] = [];
  for (let k = 0; k < N_IMAGES; k++) {
    const feat = new Uint16Array(NBB * IMG_DIM);
    // BUTD-like: non-negative, many exact zeros.
    for (let i = 0; i < feat.length; i++) feat[i] = rng.uniform() < 0.4 ? 0 : floatToHalf(rng.uniform() * 4);
    const bb = new Uint16Array(NBB * 6);
    for (let r = 0; r < NBB; r++) {
      const [x1, y1, w, h] = [rng.uniform() * 0.5, rng.uniform() * 0.5, rng.uniform() * 0.5, rng.uniform() * 0.5];
      bb.set([x1, y1, x1 + w, y1 + h, w, h].map(floatToHalf), r * 6);
    }
    images.push({ fname: `img${k}.npz`, feat, bb });
  }
  const captions = Array.from({ length: N_CAPTIONS }, (_, i) => ({
    id: `cap${i}`,
    input_ids: Array.from({ length: WORDPIECES }, () => rng.int(106, 28996)),
    img_fname: `img${i % N_IMAGES}.npz`,
  }));
  return { images, captions };
}

const HALF_TABLE = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) t[h] = halfToFloat(h);
  return t;
})();

function decodeHalf(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = HALF_TABLE[src[i]];
  return out;
}

/** The synthetic images in memory, float16 decoded on every read. */
class HalfImageSource implements ImageSource {
  readonly imgDim = IMG_DIM;
  readonly labelDim = 0;
  private readonly byName: Map<string, SyntheticImage>;

  constructor(images: SyntheticImage[]) {
    this.byName = new Map(images.map((im) => [im.fname, im]));
  }

  has(fname: string): boolean {
    return this.byName.has(fname);
  }

  get(fname: string): ImageRecord {
    const im = this.byName.get(fname);
    if (!im) throw new Error(`bench image source: no image '${fname}'`);
    return { nbb: NBB, features: decodeHalf(im.feat), normBb: decodeHalf(im.bb) };
  }

  nbb(): number {
    return NBB;
  }

  keys(): string[] {
    return [...this.byName.keys()];
  }
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

function measure<E>(dataset: TaskDataset<E>, source: string, seconds: number, batchTokens: number) {
  const loader = new TaskLoader(dataset, { seed: 1, batchTokens, dropLast: true, maxTxtLen: 60 });
  loader.next(); // warm-up: first epoch set-up (lengths, negatives), JIT
  let examples = 0;
  let batches = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < seconds) {
    examples += loader.next().ids.length;
    batches++;
    elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  }
  return {
    task: dataset.task,
    source,
    batches,
    examples,
    seconds: Number(elapsed.toFixed(3)),
    examples_per_second: Number((examples / elapsed).toFixed(1)),
    batches_per_second: Number((batches / elapsed).toFixed(2)),
    mean_batch_size: Number((examples / batches).toFixed(1)),
  };
}

function main(): void {
  const seconds = arg('seconds', 3);
  const batchTokens = arg('batch-tokens', 6144);
  const { images, captions } = synthesize(new Rng(2024, 'bench-data'));
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'uniter-bench-data-'));
  try {
    const imgDir = path.join(tmp, 'img_db');
    const txtDir = path.join(tmp, 'txt_db');
    const t0 = process.hrtime.bigint();
    writeImgDb(
      imgDir,
      images.map((im) => ({ fname: im.fname, features: decodeHalf(im.feat), normBb: decodeHalf(im.bb), conf: new Float32Array(NBB).fill(0.9), numBoxes: NBB })),
    );
    writeTxtDb(txtDir, captions);
    const writeSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const imgDb = ImgDb.open(imgDir);
    const txtDb = TxtDb.open(txtDir);
    const memImages = new HalfImageSource(images);
    const memText = new MemoryTextSource(captions);
    const runs: Array<[string, TextSource, ImageSource]> = [
      ['txt_db + img_db (LMDB)', txtDb, imgDb],
      ['memory (float16 decode only)', memText, memImages],
    ];
    const results = runs.flatMap(([name, txt, img]) => [measure(new MlmDataset(txt, img), name, seconds, batchTokens), measure(new ItmDataset(txt, img), name, seconds, batchTokens)]);
    imgDb.close();
    txtDb.close();
    console.log(
      JSON.stringify(
        {
          bench: 'data-loader',
          setup: { img_dim: IMG_DIM, regions: NBB, wordpieces: WORDPIECES, images: N_IMAGES, captions: N_CAPTIONS, batch_tokens: batchTokens, store_write_seconds: Number(writeSeconds.toFixed(2)) },
          results,
        },
        null,
        2,
      ),
    );
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main();
