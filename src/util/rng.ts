/**
 * Seeded pseudo-random numbers. Every random choice in uniter-ts (data order, masking,
 * negatives, dropout, initialization) draws from an Rng built from a seed and a label, so a
 * run can be reproduced and resumed exactly: the whole state is four 32-bit words.
 *
 * Generator: xoshiro128** (fast, 2^128 period); seeding through splitmix32 + string hashing.
 */

/** 32-bit FNV-1a hash of a string, used to derive independent streams from labels. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function splitmix32(state: { x: number }): number {
  state.x = (state.x + 0x9e3779b9) | 0;
  let z = state.x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

export type RngState = [number, number, number, number];

export class Rng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;
  private spareNormal: number | null = null;

  /** Build from a numeric seed and any number of labels (numbers or strings). */
  constructor(seed: number, ...labels: Array<string | number>) {
    const st = { x: seed >>> 0 };
    let mix = splitmix32(st);
    for (const l of labels) {
      st.x = (st.x ^ (typeof l === 'number' ? Math.imul(l >>> 0, 0x9e3779b1) ^ (l / 4294967296) : hashString(l))) | 0;
      mix ^= splitmix32(st);
    }
    this.s0 = splitmix32(st) ^ mix;
    this.s1 = splitmix32(st);
    this.s2 = splitmix32(st);
    this.s3 = splitmix32(st);
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** An independent stream derived from this one's seed material and a label (does not advance this one). */
  fork(...labels: Array<string | number>): Rng {
    return new Rng(this.s0 ^ this.s2, this.s1, this.s3, ...labels);
  }

  /** Uniform 32-bit unsigned integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform float in [0, 1). */
  uniform(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [lo, hi) (or [0, lo) with one argument). */
  int(lo: number, hi?: number): number {
    if (hi === undefined) {
      hi = lo;
      lo = 0;
    }
    if (!(hi > lo)) throw new RangeError(`Rng.int: empty range [${lo}, ${hi})`);
    return lo + Math.floor(this.uniform() * (hi - lo));
  }

  /** Standard normal (Box-Muller, caches the second value). */
  normal(mean = 0, std = 1): number {
    if (this.spareNormal !== null) {
      const v = this.spareNormal;
      this.spareNormal = null;
      return mean + std * v;
    }
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spareNormal = r * Math.sin(2 * Math.PI * v);
    return mean + std * r * Math.cos(2 * Math.PI * v);
  }

  /** In-place Fisher-Yates shuffle; returns the array. */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
    return a;
  }

  /** One element chosen uniformly. */
  choice<T>(a: readonly T[]): T {
    if (a.length === 0) throw new RangeError('Rng.choice: empty array');
    return a[this.int(a.length)];
  }

  /** Fill with N(mean, std) samples. */
  fillNormal(out: Float32Array | Float64Array, mean = 0, std = 1): void {
    for (let i = 0; i < out.length; i++) out[i] = this.normal(mean, std);
  }

  /**
   * out[i] = scale where the next draw is below `threshold` (a u32 bound), else 0: exactly
   * `nextU32() < threshold ? scale : 0` per element, with the state held in locals (a dropout
   * mask has millions of elements; this is about twice as fast as calling nextU32 for each).
   */
  fillThreshold(out: Float32Array | Uint8Array, threshold: number, scale: number): void {
    let s0 = this.s0;
    let s1 = this.s1;
    let s2 = this.s2;
    let s3 = this.s3;
    for (let i = 0; i < out.length; i++) {
      const x = Math.imul(s1, 5);
      const r = Math.imul((x << 7) | (x >>> 25), 9) >>> 0;
      const t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = (s3 << 11) | (s3 >>> 21);
      out[i] = r < threshold ? scale : 0;
    }
    this.s0 = s0;
    this.s1 = s1;
    this.s2 = s2;
    this.s3 = s3;
  }

  getState(): RngState {
    return [this.s0, this.s1, this.s2, this.s3];
  }

  setState(s: RngState): void {
    [this.s0, this.s1, this.s2, this.s3] = s;
    this.spareNormal = null;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
