/**
 * Symbolic dimensions. A dimension is a number or a polynomial over named symbols with
 * integer coefficients, in a canonical string form such as "B", "4*B", "Lt+N" or "B*T".
 * Symbols are bound to the dimensions of graph inputs, so the runtime can evaluate any
 * dimension from the shapes of the feeds, and the ONNX emitter can compute it from `Shape` ops.
 */
export type Dim = number | string;

/** A monomial: coefficient and sorted symbol factors. A polynomial is a list of them. */
interface Mono {
  c: number;
  syms: string[];
}
type Poly = Mono[];

function parseMono(s: string): Mono {
  let c = 1;
  const syms: string[] = [];
  for (const f of s.split('*')) {
    if (/^-?\d+$/.test(f)) c *= Number(f);
    else syms.push(f);
  }
  return { c, syms: syms.sort() };
}

function parse(d: Dim): Poly {
  if (typeof d === 'number') return d === 0 ? [] : [{ c: d, syms: [] }];
  return normalize(d.split('+').map(parseMono));
}

function key(m: Mono): string {
  return m.syms.join('*');
}

function normalize(p: Poly): Poly {
  const acc = new Map<string, Mono>();
  for (const m of p) {
    const k = key(m);
    const e = acc.get(k);
    if (e) e.c += m.c;
    else acc.set(k, { c: m.c, syms: [...m.syms] });
  }
  return [...acc.values()].filter((m) => m.c !== 0).sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

function format(p: Poly): Dim {
  if (p.length === 0) return 0;
  if (p.length === 1 && p[0].syms.length === 0) return p[0].c;
  return p
    .map((m) => (m.syms.length === 0 ? String(m.c) : (m.c === 1 ? [] : [String(m.c)]).concat(m.syms).join('*')))
    .join('+');
}

export function dimAdd(a: Dim, b: Dim): Dim {
  return format(normalize(parse(a).concat(parse(b))));
}

export function dimSub(a: Dim, b: Dim): Dim {
  return format(normalize(parse(a).concat(parse(b).map((m) => ({ c: -m.c, syms: m.syms })))));
}

export function dimMul(a: Dim, b: Dim): Dim {
  const out: Poly = [];
  for (const x of parse(a)) for (const y of parse(b)) out.push({ c: x.c * y.c, syms: x.syms.concat(y.syms).sort() });
  return format(normalize(out));
}

/** a / b when b is a monomial dividing every term of a exactly; otherwise null. */
export function dimDiv(a: Dim, b: Dim): Dim | null {
  const pb = parse(b);
  if (pb.length !== 1 || pb[0].c === 0) return null;
  const y = pb[0];
  const out: Poly = [];
  for (const x of parse(a)) {
    if (x.c % y.c !== 0) return null;
    const rest = [...x.syms];
    for (const s of y.syms) {
      const i = rest.indexOf(s);
      if (i < 0) return null;
      rest.splice(i, 1);
    }
    out.push({ c: x.c / y.c, syms: rest });
  }
  return format(normalize(out));
}

export function dimProduct(dims: readonly Dim[]): Dim {
  return dims.reduce<Dim>((acc, d) => dimMul(acc, d), 1);
}

export function dimSum(dims: readonly Dim[]): Dim {
  return dims.reduce<Dim>((acc, d) => dimAdd(acc, d), 0);
}

/** Symbols a dimension depends on. */
export function dimSymbols(d: Dim): string[] {
  const s = new Set<string>();
  for (const m of parse(d)) for (const x of m.syms) s.add(x);
  return [...s];
}

/** Terms of a dimension: constant-coefficient monomials, for materialising it from shapes. */
export function dimTerms(d: Dim): Array<{ c: number; syms: string[] }> {
  return parse(d);
}

export function dimEq(a: Dim, b: Dim): boolean {
  return String(format(parse(a))) === String(format(parse(b)));
}

/** True when the two dims are certainly different (both plain numbers that differ). */
export function dimsConflict(a: Dim, b: Dim): boolean {
  return typeof a === 'number' && typeof b === 'number' && a !== b;
}

export function evalDim(d: Dim, values: ReadonlyMap<string, number>): number {
  let v = 0;
  for (const m of parse(d)) {
    let t = m.c;
    for (const s of m.syms) {
      const x = values.get(s);
      if (x === undefined) throw new Error(`dimension '${d}': symbol '${s}' has no value (not bound to any graph input)`);
      t *= x;
    }
    v += t;
  }
  return v;
}

export function fmtShape(s: readonly Dim[]): string {
  return `[${s.join(', ')}]`;
}

let fresh = 0;
/** A new symbol for a dimension only known at run time (e.g. a data-dependent count). */
export function freshDim(prefix = 'n'): string {
  return `${prefix}_${++fresh}`;
}
