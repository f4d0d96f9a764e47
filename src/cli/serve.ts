/**
 * `uniter serve`: the HTTP API and the web page (src/serve/). Without --model it serves what the
 * main job (`uniter pretrain`, embedded default) trained, with the synthetic world's held-out
 * images as the gallery, so the demo needs nothing but that run.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImgDb } from '../data/imgdb.js';
import { generateWorld } from '../data/world.js';
import { embeddedRecipe } from '../pretrain/run.js';
import { Gallery, storeGallery, worldGallery } from '../serve/gallery.js';
import { startServer } from '../serve/server.js';
import { intFlag, parseArgs, reportFailure } from './common.js';
import type { Command } from './main.js';

/** Where `uniter pretrain` (no config, no --out) leaves its final model folder. */
export const DEFAULT_MODEL_DIR = path.join('runs', 'pretrain-default', 'model');

const USAGE = `serve [--model DIR] [--detector DIR] [--port 8080] [--host 127.0.0.1] [--world] [--img-db DIR] [--workers N] [--threads N] [--queue N]
      JSON API (POST /api/itm, /api/vqa, /api/ve, /api/nlvr2, /api/retrieval, /api/refexp,
      /api/alignment; GET /api/health, /api/info, /api/gallery) and the page at /. Stops on SIGINT/SIGTERM
      after the requests in flight.
  --model DIR      model folder to serve (default ${DEFAULT_MODEL_DIR}, what 'uniter pretrain' writes,
                   with the synthetic world's test images as the gallery)
  --detector DIR   a BUTD detector folder: the page and the API then take photos
  --port N         TCP port (default 8080)
  --host H         address to listen on (default 127.0.0.1)
  --world          add the synthetic world's gallery to another model trained on the world
  --img-db DIR     offer an official img_db's images by key as the gallery
  --workers N      inference worker threads (default: the server's choice)
  --threads N      ONNX Runtime threads of each worker
  --queue N        requests that may wait; beyond that the API answers 503`;

const NOTE = 'Serving the tiny model the main job pre-trained on the synthetic world; its pictures are painted from each scene\'s shapes, colours and boxes. For real photos: convert an official checkpoint (uniter convert uniter-base.pt my-model/ --num-heads 12 [--ans2label ans2label.json]) and serve it with a detector folder: uniter serve --model my-model --detector my-detector.';

/** An optional integer flag >= 0 (port 0: any free port). */
function countFlag(v: string | undefined, flag: string): number | undefined {
  return v === undefined ? undefined : intFlag(v, `--${flag}`, 0);
}

export const command: Command = {
  name: 'serve',
  summary: 'HTTP API + web page: scores, answers and the word-region alignment, live',
  usage: USAGE,
  async run(argv: string[]): Promise<number> {
    let a;
    let modelDir: string;
    let gallery: Gallery | undefined;
    let opts;
    try {
      a = parseArgs(argv, { string: ['model', 'detector', 'port', 'host', 'workers', 'threads', 'queue', 'img-db'], boolean: ['world'] }, USAGE);
      if (a.positional.length) throw new Error(`unexpected argument '${a.positional[0]}'`);
      const embedded = a.string.model === undefined;
      modelDir = a.string.model ?? DEFAULT_MODEL_DIR;
      if (embedded && !fs.existsSync(modelDir)) {
        const running = fs.existsSync(path.join('runs', 'pretrain-default', 'ckpt'));
        throw new Error(
          `no model at ${modelDir}: run \`node bin/uniter.js pretrain\` first (the main job, about 21 minutes on 2 cores; it writes that folder when it ends${running ? '; runs/pretrain-default/ckpt exists, so a run has started: let it finish, or pass --model runs/pretrain-default/ckpt/step_N' : ''}), or pass --model DIR`,
        );
      }
      if (a.string['img-db'] && (a.boolean.world || embedded)) throw new Error('--img-db and the synthetic world gallery are alternatives: pass one');
      if (a.string['img-db']) gallery = storeGallery(ImgDb.open(a.string['img-db']));
      else if (embedded || a.boolean.world) {
        console.log('generating the synthetic world (the main job\'s) for the gallery...');
        gallery = worldGallery(generateWorld(embeddedRecipe().world));
      }
      opts = {
        modelDir,
        detectorDir: a.string.detector,
        host: a.string.host ?? '127.0.0.1',
        port: countFlag(a.string.port, 'port') ?? 8080,
        workers: countFlag(a.string.workers, 'workers'),
        threads: countFlag(a.string.threads, 'threads'),
        queueLimit: countFlag(a.string.queue, 'queue'),
        gallery,
        note: embedded ? NOTE : undefined,
      };
    } catch (e) {
      return reportFailure('serve', USAGE, e, () => true);
    }
    let server;
    try {
      server = await startServer(opts);
    } catch (e) {
      console.error(`uniter serve: ${(e as Error).message}`);
      return 1;
    }
    console.log(`serving ${modelDir} (${server.tasks.join(', ')}) at ${server.url}${gallery ? ` with ${gallery.ids.length} gallery images` : ''}`);
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        console.log(`${signal}: finishing requests in flight, then stopping`);
        void server.close().then(resolve);
      };
      process.once('SIGINT', () => stop('SIGINT'));
      process.once('SIGTERM', () => stop('SIGTERM'));
    });
    return 0;
  },
};
