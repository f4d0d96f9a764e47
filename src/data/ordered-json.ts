/**
 * JSON objects whose key order matters. The side files of the stores (`id2len.json`,
 * `txt2img.json`, ...) are written by Python, which keeps insertion order, and the official
 * training iterates them in file order. A JavaScript object would move integer-like keys (VQA
 * question ids such as "262148000") to the front, so these helpers read and write key/value pairs
 * in file order instead.
 */

export class OrderedJsonError extends Error {}

/** The top-level object of `text` as [key, value] pairs in file order. `where` labels errors. */
export function parseJsonEntries(text: string, where: string): Array<[string, unknown]> {
  let i = 0;
  const fail = (why: string): never => {
    throw new OrderedJsonError(`${where}: invalid JSON at character ${i}: ${why}`);
  };
  const skipSpace = (): void => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\n' || text[i] === '\r' || text[i] === '\t')) i++;
  };
  const stringEnd = (from: number): number => {
    let j = from + 1;
    while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
    if (j >= text.length) fail('unterminated string');
    return j + 1;
  };
  const valueEnd = (from: number): number => {
    const c = text[from];
    if (c === '"') return stringEnd(from);
    if (c === '[' || c === '{') {
      let depth = 0;
      let j = from;
      while (j < text.length) {
        const ch = text[j];
        if (ch === '"') {
          j = stringEnd(j);
          continue;
        }
        if (ch === '[' || ch === '{') depth++;
        else if (ch === ']' || ch === '}') {
          depth--;
          if (depth === 0) return j + 1;
        }
        j++;
      }
      fail('unterminated array or object');
    }
    let j = from;
    while (j < text.length && text[j] !== ',' && text[j] !== '}' && !/\s/.test(text[j])) j++;
    return j;
  };
  const parse = (from: number, to: number): unknown => {
    try {
      return JSON.parse(text.slice(from, to));
    } catch (e) {
      i = from;
      return fail((e as Error).message);
    }
  };
  skipSpace();
  if (text[i] !== '{') fail('expected a JSON object');
  i++;
  const out: Array<[string, unknown]> = [];
  skipSpace();
  if (text[i] === '}') {
    i++;
  } else {
    for (;;) {
      skipSpace();
      if (text[i] !== '"') fail('expected a string key');
      const kEnd = stringEnd(i);
      const key = parse(i, kEnd) as string;
      i = kEnd;
      skipSpace();
      if (text[i] !== ':') fail("expected ':'");
      i++;
      skipSpace();
      if (i >= text.length) fail('missing value');
      const vEnd = valueEnd(i);
      out.push([key, parse(i, vEnd)]);
      i = vEnd;
      skipSpace();
      if (text[i] === ',') {
        i++;
        continue;
      }
      if (text[i] === '}') {
        i++;
        break;
      }
      fail("expected ',' or '}'");
    }
  }
  skipSpace();
  if (i !== text.length) fail('trailing characters after the object');
  return out;
}

/** A JSON object text from pairs, in the given order (separators as Python's json.dump writes them). */
export function stringifyJsonEntries(entries: Iterable<readonly [string, unknown]>): string {
  const parts: string[] = [];
  for (const [k, v] of entries) parts.push(`${JSON.stringify(k)}: ${JSON.stringify(v)}`);
  return `{${parts.join(', ')}}`;
}
