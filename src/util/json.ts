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
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw makeError(`${file}: ${what} is not valid JSON (${(e as Error).message})`);
  }
}

export function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** As readJsonFile, for files whose top level must be an object. */
export function readJsonObject(file: string, what: string, makeError: ErrorFactory = plainError): Record<string, unknown> {
  const raw = readJsonFile(file, what, makeError);
  if (!isJsonObject(raw)) throw makeError(`${file}: ${what} must be a JSON object, got ${Array.isArray(raw) ? 'an array' : raw === null ? 'null' : typeof raw}`);
  return raw;
}
