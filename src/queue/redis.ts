/**
 * Redis connection settings for the BullMQ queue (`--redis URL`). The URL is parsed here so that
 * a wrong one is reported naming the argument, before any connection is attempted.
 *
 *   redis://[[user]:password@]host[:port][/db]      (rediss:// for TLS)
 */
import { Redis } from 'ioredis';

/** What BullMQ and ioredis both take as connection settings. */
export interface RedisOptions {
  host: string;
  port: number;
  db: number;
  username?: string;
  password?: string;
  tls?: Record<string, never>;
}

export class QueueUsageError extends Error {}

export interface RedisTarget {
  /** The URL as given, password hidden (for messages). */
  display: string;
  options: RedisOptions;
}

export function parseRedisUrl(url: string, flag = '--redis'): RedisTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new QueueUsageError(`${flag} ${url}: not a URL (expected redis://host:port[/db])`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new QueueUsageError(`${flag} ${url}: the scheme must be redis:// or rediss://, got '${u.protocol}'`);
  if (!u.hostname) throw new QueueUsageError(`${flag} ${url}: no host`);
  const port = u.port ? Number(u.port) : 6379;
  if (!(Number.isInteger(port) && port >= 1 && port <= 65535)) throw new QueueUsageError(`${flag} ${url}: bad port '${u.port}'`);
  const dbText = u.pathname.replace(/^\//, '');
  const db = dbText === '' ? 0 : Number(dbText);
  if (!(Number.isInteger(db) && db >= 0)) throw new QueueUsageError(`${flag} ${url}: the path must be a database number, got '/${dbText}'`);
  const options: RedisOptions = { host: u.hostname.replace(/^\[|\]$/g, ''), port, db };
  if (u.username) options.username = decodeURIComponent(u.username);
  if (u.password) options.password = decodeURIComponent(u.password);
  if (u.protocol === 'rediss:') options.tls = {};
  const display = u.password ? url.replace(`:${u.password}@`, ':***@') : url;
  return { display, options };
}

/** Fail fast (within `timeoutMs`) with a message naming the URL when Redis cannot be reached. */
export async function checkRedis(target: RedisTarget, timeoutMs = 5000): Promise<void> {
  const client = new Redis({ ...target.options, lazyConnect: true, connectTimeout: timeoutMs, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const info = await client.info('server');
    const version = /redis_version:(\S+)/.exec(info)?.[1];
    if (version && Number(version.split('.')[0]) < 5) throw new Error(`Redis ${version} is too old (BullMQ needs 5.0 or later; Debian's redis-server 7.x works)`);
  } catch (e) {
    throw new QueueUsageError(`--redis ${target.display}: cannot use Redis (${(e as Error).message})`);
  } finally {
    client.disconnect();
  }
}
