/**
 * Reading JSON files with errors that name the file, what it should hold, and whether it could
 * not be read or did not parse. Callers with their own error class pass a factory.
 */
import * as fs from 'node:fs';

export type ErrorFactory = (message: string) => Error;

const plainError: ErrorFactory = (message) => new Error(message);

/** The parsed content of `file`; `what` names it in messages ("model config", "trainer state"). */
export function readJsonFile(file: string, what: string, makeError: ErrorFactory = plainError): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw makeError(`${file}: cannot read ${what} (${(e as Error).message})`);
  }
  // Deep nesting is refused before parsing: recursive walks of the value would overflow the stack.
  const problem = jsonStructureProblem(text, MAX_JSON_DEPTH, false);
  if (problem) throw makeError(`${file}: ${what} is not acceptable JSON (${problem})`);
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw makeError(`${file}: ${what} is not valid JSON (${(e as Error).message})`);
  }
}

/** The deepest nesting JSON files may have (configs and states are a few levels deep). */
export const MAX_JSON_DEPTH = 512;

export function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** As readJsonFile, for files whose top level must be an object. */
export function readJsonObject(file: string, what: string, makeError: ErrorFactory = plainError): Record<string, unknown> {
  const raw = readJsonFile(file, what, makeError);
  if (!isJsonObject(raw)) throw makeError(`${file}: ${what} must be a JSON object, got ${Array.isArray(raw) ? 'an array' : raw === null ? 'null' : typeof raw}`);
  return raw;
}

/**
 * A problem JSON.parse does not report: the first key that occurs twice in one object (JSON.parse
 * silently keeps the last), or nesting deeper than `maxDepth` (later recursive walks would
 * overflow the stack). Iterative, so it cannot overflow itself. Text that is not valid JSON may
 * give any answer; parse it with JSON.parse as well.
 */
export function jsonStructureProblem(text: string, maxDepth = 256, checkDuplicates = true): string | null {
  // One entry per open container: a key set for objects, null for arrays.
  const stack: (Set<string> | null)[] = [];
  let expectKey = false; // the next string in the innermost object is a key
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      stack.push(c === 0x7b ? new Set() : null);
      if (stack.length > maxDepth) return `nesting deeper than ${maxDepth} levels`;
      expectKey = c === 0x7b;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = stack.length > 0 && stack[stack.length - 1] !== null;
    } else if (c === 0x22 /* " */) {
      let j = i + 1;
      let hasEscape = false;
      while (j < text.length && text.charCodeAt(j) !== 0x22) {
        if (text.charCodeAt(j) === 0x5c) {
          hasEscape = true;
          j++;
        }
        j++;
      }
      if (expectKey && checkDuplicates) {
        const raw = text.slice(i, j + 1);
        let key = raw.slice(1, -1);
        if (hasEscape) {
          try {
            key = JSON.parse(raw) as string;
          } catch {
            /* invalid; JSON.parse of the whole text will say so */
          }
        }
        const keys = stack[stack.length - 1] as Set<string>;
        if (keys.has(key)) return `duplicate key ${JSON.stringify(key)}`;
        keys.add(key);
        expectKey = false;
      }
      i = j;
    }
  }
  return null;
}

/** JSON.parse that also refuses duplicate keys and excessive nesting (see jsonStructureProblem). */
export function parseJsonStrict(text: string, maxDepth = 256): unknown {
  const problem = jsonStructureProblem(text, maxDepth);
  if (problem) throw new SyntaxError(problem);
  return JSON.parse(text) as unknown;
}
