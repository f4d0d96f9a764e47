/**
 * A txt_db of the world held in memory: records with the official field names plus the side
 * files the official layout keeps next to the LMDB (txt2img.json, img2txts.json, and per task
 * refs.json / images.json / id2len_qa.json ...). Implements the shared TextSource contract.
 */
import type { TextRecord, TextSource } from '../types.js';

export class WorldTextDb implements TextSource {
  private readonly records = new Map<string, TextRecord>();
  private readonly lengths = new Map<string, number>();
  readonly txt2img: Record<string, string | string[]> = {};
  readonly img2txts: Record<string, string[]> = {};
  /** Extra JSON files of this db directory, by file name (e.g. 'refs.json'). */
  readonly sideFiles: Record<string, unknown> = {};

  constructor(
    /** Directory name without `.db` (e.g. 'pretrain_world_train'). */
    readonly name: string,
    /** Image stores the records' img_fname values point into (in img_fname order for pairs). */
    readonly imageStores: readonly string[],
  ) {}

  /**
   * Adds a record; id2len, txt2img and img2txts follow it as the txt_db writer derives them
   * (length = wordpieces of `input_ids`; every image of a pair lists the record).
   */
  add(record: TextRecord): void {
    if (this.records.has(record.id)) throw new Error(`world txt_db '${this.name}': duplicate record id '${record.id}'`);
    this.records.set(record.id, record);
    this.lengths.set(record.id, record.input_ids.length);
    this.txt2img[record.id] = record.img_fname;
    for (const f of Array.isArray(record.img_fname) ? record.img_fname : [record.img_fname]) {
      const list = (this.img2txts[f] ??= []);
      if (list[list.length - 1] !== record.id) list.push(record.id);
    }
  }

  get size(): number {
    return this.records.size;
  }

  ids(): string[] {
    return [...this.records.keys()];
  }

  has(id: string): boolean {
    return this.records.has(id);
  }

  get(id: string): TextRecord {
    const r = this.records.get(id);
    if (!r) throw new Error(`world txt_db '${this.name}': no record '${id}'`);
    return r;
  }

  len(id: string): number {
    const n = this.lengths.get(id);
    if (n === undefined) throw new Error(`world txt_db '${this.name}': no record '${id}'`);
    return n;
  }

  /** id2len.json content. */
  id2len(): Record<string, number> {
    return Object.fromEntries(this.lengths);
  }

  /**
   * The same records with lengths from another id2len table of this db (VCR: 'id2len_qa.json'
   * or 'id2len_qar.json'), as the official VCR reader picks one per task.
   */
  withLengths(sideFile: string): TextSource {
    const table = this.sideFiles[sideFile] as Record<string, number> | undefined;
    if (!table || typeof table !== 'object') throw new Error(`world txt_db '${this.name}': no length table '${sideFile}'`);
    return {
      ids: () => this.ids(),
      get: (id) => this.get(id),
      len: (id) => {
        const n = table[id];
        if (n === undefined) throw new Error(`world txt_db '${this.name}': '${sideFile}' has no entry for '${id}'`);
        return n;
      },
    };
  }
}
