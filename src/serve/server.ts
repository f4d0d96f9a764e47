/**
 * `uniter serve`: a JSON HTTP API over the pipelines (one route per task, alignment, health)
 * and the web page that shows what the model aligned. Fastify validates every body against a
 * schema (a 400 names the field); ONNX Runtime runs in worker threads, so the event loop only
 * parses, validates and routes; a bounded number of requests may wait for the workers (503
 * beyond it); close() stops accepting, lets requests in flight finish, then ends the workers.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { Worker } from 'node:worker_threads';
import Fastify, { FastifyError, FastifyInstance, FastifyReply } from 'fastify';
import { InputError, PIPELINE_TASKS, PipelineTask } from '../api/pipeline.js';
import { Uniter } from '../api/uniter.js';
import type { ScoringTask } from '../api/scoring-heads.js';
import type { Gallery } from './gallery.js';
import type { Job, Reply, WorkerConfig } from './worker.js';

export interface ServeOptions {
  modelDir: string;
  detectorDir?: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Worker threads, each with its own sessions (default 1). */
  workers?: number;
  /** ONNX Runtime threads per worker (default: cores / workers). */
  threads?: number;
  /** Requests waiting for or running in the workers beyond which the server answers 503. */
  queueLimit?: number;
  /** Largest batch a worker forms from waiting requests of one task. */
  maxBatch?: number;
  /** Largest request body in bytes (413 beyond). */
  bodyLimit?: number;
  /** Images offered on the page and addressable by id. */
  gallery?: Gallery;
  /** Shown on the page and by /api/info: how to serve something else. */
  note?: string;
  log?: boolean;
}

export interface RunningServer {
  url: string;
  app: FastifyInstance;
  tasks: PipelineTask[];
  close(): Promise<void>;
}

const STATIC_DIR = new URL('../../../src/serve/static/', import.meta.url);
const STATIC_FILES: Record<string, string> = {
  '/': 'index.html',
  '/app.js': 'app.js',
  '/style.css': 'style.css',
};
const CONTENT_TYPES: Record<string, string> = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };

/** Pipelines a model folder can run, from the heads its weights hold. */
export function tasksOfHeads(heads: readonly ScoringTask[]): PipelineTask[] {
  const out = new Set<PipelineTask>();
  for (const h of heads) {
    if (h === 'itm') out.add('itm').add('retrieval');
    else if (h === 'retrieval') out.add('retrieval');
    else if (h === 'vqa' || h === 've') out.add(h);
    else if (h.startsWith('nlvr2')) out.add('nlvr2');
    else if (h.startsWith('re_')) out.add('refexp');
  }
  return PIPELINE_TASKS.filter((t) => out.has(t));
}

class WorkerPool {
  private readonly workers: Array<{ worker: Worker; pending: number }> = [];
  private readonly waiting = new Map<number, { resolve: (r: Reply) => void; slot: { pending: number } }>();
  private nextId = 1;
  pending = 0;

  constructor(count: number, cfg: WorkerConfig) {
    for (let i = 0; i < count; i++) {
      const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: cfg });
      const slot = { worker, pending: 0 };
      worker.on('message', (msg: Reply | { warm: string }) => {
        if ('warm' in msg) return;
        const w = this.waiting.get(msg.id);
        if (!w) return;
        this.waiting.delete(msg.id);
        w.slot.pending--;
        this.pending--;
        w.resolve(msg);
      });
      worker.on('error', (e) => {
        // A crashed worker fails its requests instead of leaving them hanging.
        for (const [id, w] of this.waiting) {
          if (w.slot !== slot) continue;
          this.waiting.delete(id);
          this.pending--;
          w.resolve({ id, ok: false, status: 500, error: `worker failed: ${e.message}` });
        }
        slot.pending = 0;
      });
      this.workers.push(slot);
    }
  }

  warm(task: PipelineTask): void {
    for (const w of this.workers) w.worker.postMessage({ kind: 'warm', task });
  }

  submit(kind: Job['kind'], task: PipelineTask, input: unknown): Promise<Reply> {
    const slot = this.workers.reduce((a, b) => (b.pending < a.pending ? b : a));
    const id = this.nextId++;
    slot.pending++;
    this.pending++;
    return new Promise((resolve) => {
      this.waiting.set(id, { resolve, slot });
      slot.worker.postMessage({ id, kind, task, input } satisfies Job);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }
}

// ---------------------------------------------------------------------------------------------
// Request schemas: the shape of every body, so that Fastify's 400 names the field.

const MAX_TEXT = 2000;
const MAX_GALLERY = 512;

const textSchema = { anyOf: [{ type: 'string', minLength: 1, maxLength: MAX_TEXT }, { type: 'array', items: { type: 'integer', minimum: 0 }, maxItems: 512 }] };
const box4 = { type: 'array', items: { type: 'number' }, minItems: 4, maxItems: 4 };
/** An image: an id of the gallery's store, or an object (checked in full by parseImage). */
const imageSchema = {
  anyOf: [
    { type: 'string', minLength: 1, maxLength: 500 },
    {
      type: 'object',
      properties: {
        id: { type: 'string', minLength: 1, maxLength: 500 },
        features: { type: 'array', maxItems: 1_000_000 },
        boxes: { type: 'array', items: box4, maxItems: 100 },
        width: { type: 'number', exclusiveMinimum: 0 },
        height: { type: 'number', exclusiveMinimum: 0 },
        labels: { type: 'array', items: { type: 'string', maxLength: 200 } },
        rgb: { type: 'string', maxLength: 24_000_000 },
        bytes: { type: 'string', maxLength: 24_000_000 },
      },
      additionalProperties: false,
    },
  ],
};
const textImage = { type: 'object', required: ['text', 'image'], properties: { text: textSchema, image: imageSchema }, additionalProperties: false };
const SCHEMAS: Record<PipelineTask | 'alignment', object> = {
  itm: textImage,
  ve: textImage,
  refexp: textImage,
  alignment: textImage,
  vqa: { ...textImage, properties: { ...textImage.properties, topK: { type: 'integer', minimum: 1, maximum: 100 } } },
  nlvr2: { type: 'object', required: ['text', 'images'], properties: { text: textSchema, images: { type: 'array', items: imageSchema, minItems: 2, maxItems: 2 } }, additionalProperties: false },
  retrieval: {
    type: 'object',
    properties: {
      text: textSchema,
      images: { type: 'array', items: imageSchema, minItems: 1, maxItems: MAX_GALLERY },
      image: imageSchema,
      texts: { type: 'array', items: textSchema, minItems: 1, maxItems: MAX_GALLERY },
    },
    additionalProperties: false,
    oneOf: [{ required: ['text', 'images'] }, { required: ['image', 'texts'] }],
  },
};

/** JSON image -> what the pipeline takes; gallery ids become the stored regions (with names). */
function parseImage(json: unknown, field: string, gallery: Gallery | undefined): { image: unknown; id?: string } {
  const fromStore = (id: string) => {
    if (!gallery || !gallery.source.has(id)) throw new InputError(field, `no image '${id}' in this server's gallery${gallery ? '' : ' (it serves none)'}`);
    const rec = gallery.source.get(id);
    return { image: { nbb: rec.nbb, features: rec.features, normBb: rec.normBb }, id };
  };
  if (typeof json === 'string') return fromStore(json);
  const o = json as Record<string, unknown>;
  const kinds = ['id', 'features', 'rgb', 'bytes'].filter((k) => o[k] !== undefined);
  if (kinds.length !== 1) throw new InputError(field, `give exactly one of 'id', 'features' (+ 'boxes'), 'rgb' (+ 'width', 'height') or 'bytes'; got ${kinds.length ? kinds.join(', ') : 'none'}`);
  const decode = (k: 'rgb' | 'bytes') => {
    const s = o[k] as string;
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw new InputError(`${field}.${k}`, 'must be base64');
    return new Uint8Array(Buffer.from(s, 'base64'));
  };
  switch (kinds[0]) {
    case 'id':
      return fromStore(o.id as string);
    case 'features':
      if (!Array.isArray(o.boxes)) throw new InputError(`${field}.boxes`, "is required with 'features'");
      return { image: { features: o.features, boxes: o.boxes, width: o.width, height: o.height, labels: o.labels } };
    case 'rgb': {
      if (!Number.isInteger(o.width) || !Number.isInteger(o.height)) throw new InputError(`${field}.width`, "'rgb' needs integer 'width' and 'height'");
      return { image: { width: o.width, height: o.height, data: decode('rgb') } };
    }
    default:
      return { image: decode('bytes') };
  }
}

/** Region boxes and names of a gallery image (what the page draws). */
function regionsOf(gallery: Gallery, id: string): { boxes: number[][]; labels: string[] } {
  const rec = gallery.source.get(id);
  const dim = rec.softLabels ? rec.softLabels.length / Math.max(1, rec.nbb) : 0;
  const labels: string[] = [];
  const boxes: number[][] = [];
  for (let k = 0; k < rec.nbb; k++) {
    boxes.push(Array.from(rec.normBb.subarray(k * 6, k * 6 + 4)));
    if (!rec.softLabels) labels.push(`region ${k}`);
    else {
      let best = 1;
      for (let c = 2; c < dim; c++) if (rec.softLabels[k * dim + c] > rec.softLabels[k * dim + best]) best = c;
      labels.push(gallery.classNames[best] ?? `class ${best}`);
    }
  }
  return { boxes, labels };
}

const round = (x: number) => Math.round(x * 1e5) / 1e5;
/** Numbers in nested arrays to 5 decimals: alignment payloads shrink by half. */
function roundDeep(x: unknown): unknown {
  if (typeof x === 'number') return round(x);
  if (Array.isArray(x)) return x.map(roundDeep);
  if (x && typeof x === 'object') return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, roundDeep(v)]));
  return x;
}

export async function startServer(opts: ServeOptions): Promise<RunningServer> {
  // Load once here: a folder that cannot load fails before the port opens, with the loader's message.
  const probe = Uniter.fromPretrained(opts.modelDir, { threads: 1 });
  const tasks = tasksOfHeads(probe.heads);
  if (!tasks.length) throw new Error(`${opts.modelDir}: its weights hold no head a pipeline runs (heads: ${probe.heads.join(', ') || 'none'})`);
  const gallery = opts.gallery;
  if (gallery && gallery.source.imgDim !== probe.config.img_dim) throw new Error(`the gallery's features are ${gallery.source.imgDim} wide, the model's img_dim is ${probe.config.img_dim}`);
  if (opts.detectorDir && !fs.existsSync(opts.detectorDir)) throw new Error(`detector folder '${opts.detectorDir}' does not exist`);

  const workers = opts.workers ?? 1;
  if (!(Number.isInteger(workers) && workers >= 1)) throw new Error(`workers must be a positive integer, got ${opts.workers}`);
  const threads = opts.threads ?? Math.max(1, Math.floor(os.availableParallelism() / workers));
  const queueLimit = opts.queueLimit ?? 64;
  const pool = new WorkerPool(workers, { modelDir: opts.modelDir, detectorDir: opts.detectorDir, threads, maxBatch: opts.maxBatch ?? 16 });
  for (const t of tasks) pool.warm(t);

  // No type coercion: a number where text belongs is a 400, not the string "5".
  const app = Fastify({ ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } }, logger: opts.log ?? false, bodyLimit: opts.bodyLimit ?? 32 * 1024 * 1024, return503OnClosing: true });

  app.setErrorHandler((err: FastifyError, _req, reply) => {
    if (err.validation) {
      const v = err.validation[0];
      const missing = (v.params as { missingProperty?: string })?.missingProperty;
      const extra = (v.params as { additionalProperty?: string })?.additionalProperty;
      const at = v.instancePath.replace(/^\//, '').replace(/\/(\d+)/g, '[$1]').replace(/\//g, '.');
      const field = [at, missing ?? extra].filter(Boolean).join(at && (missing ?? extra) ? '.' : '') || 'body';
      const message = extra ? `unknown field '${extra}'` : missing ? `is required` : (v.message ?? 'is invalid');
      return reply.code(400).send({ error: `${field}: ${message}`, field });
    }
    if (err.statusCode === 413) return reply.code(413).send({ error: `request body is larger than the limit of ${app.initialConfig.bodyLimit} bytes`, field: 'body' });
    if (err.statusCode && err.statusCode < 500) return reply.code(err.statusCode).send({ error: err.message });
    return reply.code(500).send({ error: err.message });
  });

  // While closing, answers to requests in flight end their keep-alive connection, so that
  // close() does not wait out the keep-alive timeout of sockets that were busy when it began.
  let closing = false;
  app.addHook('onSend', async (_req, reply, payload) => {
    if (closing) reply.header('connection', 'close');
    return payload;
  });

  const dispatch = async (reply: FastifyReply, kind: Job['kind'], task: PipelineTask, input: unknown) => {
    if (pool.pending >= queueLimit) {
      return reply.code(503).header('retry-after', '1').send({ error: `server busy: ${pool.pending} requests are queued or running (limit ${queueLimit}); retry later` });
    }
    const r = await pool.submit(kind, task, input);
    if (!r.ok) return reply.code(r.status).send({ error: r.error, ...(r.field ? { field: r.field } : {}) });
    return r.result;
  };

  const needTask = (task: PipelineTask, reply: FastifyReply) => {
    if (tasks.includes(task)) return true;
    void reply.code(422).send({ error: `this model cannot run '${task}': its heads give ${tasks.join(', ')} (serve a model fine-tuned for ${task} with --model DIR)` });
    return false;
  };

  for (const task of PIPELINE_TASKS) {
    app.post(`/api/${task}`, { schema: { body: SCHEMAS[task] } }, async (req, reply) => {
      if (!needTask(task, reply)) return reply;
      const body = req.body as Record<string, unknown>;
      try {
        const input: Record<string, unknown> = { ...body };
        let ids: Array<string | undefined> | undefined;
        if ('image' in body) input.image = parseImage(body.image, 'image', gallery).image;
        if (Array.isArray(body.images)) {
          const parsed = body.images.map((im, k) => parseImage(im, `images[${k}]`, gallery));
          input.images = parsed.map((p) => p.image);
          ids = parsed.map((p) => p.id);
        }
        const result = (await dispatch(reply, 'run', task, input)) as Record<string, unknown>;
        // Gallery ranking: name the images by their ids (the worker saw only features).
        if (task === 'retrieval' && ids && result && Array.isArray(result.ranking)) for (const r of result.ranking as Array<{ index: number; id?: string }>) if (ids[r.index]) r.id = ids[r.index];
        return result;
      } catch (e) {
        if (e instanceof InputError) return reply.code(400).send({ error: e.message, field: e.field });
        throw e;
      }
    });
  }

  app.post('/api/alignment', { schema: { body: SCHEMAS.alignment } }, async (req, reply) => {
    const body = req.body as { text: unknown; image: unknown };
    try {
      const { image, id } = parseImage(body.image, 'image', gallery);
      const result = (await dispatch(reply, 'align', tasks[0], { text: body.text, image })) as Record<string, unknown> | FastifyReply;
      if (!result || (result as FastifyReply).sent) return result;
      const out = roundDeep(result) as Record<string, unknown>;
      if (id && gallery) {
        const named = regionsOf(gallery, id);
        out.boxLabels = named.labels;
        out.boxes = named.boxes;
        out.image = id;
      }
      return out;
    } catch (e) {
      if (e instanceof InputError) return reply.code(400).send({ error: e.message, field: e.field });
      throw e;
    }
  });

  app.get('/api/health', async () => ({ status: 'ok', tasks, workers, queue: { pending: pool.pending, limit: queueLimit } }));

  app.get('/api/info', async () => ({
    model: opts.modelDir,
    tasks,
    heads: probe.heads,
    config: { hidden_size: probe.config.hidden_size, layers: probe.config.num_hidden_layers, heads: probe.config.num_attention_heads, img_dim: probe.config.img_dim },
    detector: opts.detectorDir ?? null,
    gallery: gallery ? gallery.ids.length : 0,
    note: opts.note ?? null,
  }));

  app.get('/api/gallery', async () => ({
    images: (gallery?.ids ?? []).map((id) => ({ ...gallery!.describe(id), regions: regionsOf(gallery!, id) })),
  }));

  for (const [route, file] of Object.entries(STATIC_FILES)) {
    const body = fs.readFileSync(new URL(file, STATIC_DIR));
    const type = CONTENT_TYPES[file.split('.').pop()!];
    app.get(route, async (_req, reply) => reply.type(type).header('cache-control', 'no-cache').send(body));
  }

  const url = await app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 8080 });
  let shutdown: Promise<void> | null = null;
  return {
    url,
    app,
    tasks,
    close() {
      // Fastify stops accepting and waits for requests in flight; only then do the workers go.
      closing = true;
      shutdown ??= app.close().then(() => pool.close());
      return shutdown;
    },
  };
}
