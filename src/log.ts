/**
 * Logger options shared by the server's own pino and Fastify's: errors are logged with their
 * strings cut short. A failing statement carries its parameters (drizzle puts them in the
 * message), and one failing 10 MB batch once made a 29.9 MB log line.
 */
import { pino, type LoggerOptions } from 'pino'

/** Longest string kept in a logged error; the rest is replaced by a count. */
export const MAX_LOGGED_STRING = 2048

function bounded (value: unknown, depth = 0): unknown {
  if (typeof value === 'string') {
    return value.length <= MAX_LOGGED_STRING ? value : `${value.slice(0, MAX_LOGGED_STRING)}… (${value.length - MAX_LOGGED_STRING} more characters)`
  }
  if (Array.isArray(value)) {
    const items = value.slice(0, 20).map((v) => bounded(v, depth + 1))
    return value.length > 20 ? [...items, `… (${value.length - 20} more items)`] : items
  }
  if (typeof value === 'object' && value !== null) {
    if (depth > 4) return '[object]'
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, bounded(v, depth + 1)]))
  }
  return value
}

export const boundedError = (err: Error) => bounded(pino.stdSerializers.err(err))

/** `pretty`: one readable, coloured line an event (pino-pretty, in a worker thread), for a person at a terminal. */
export function logOptions (level: string, pretty = false): LoggerOptions {
  const options: LoggerOptions = { level, serializers: { err: boundedError } }
  if (!pretty) return options
  return { ...options, transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } } }
}

/** Pretty logs when asked, or when nobody asked and a person is reading standard output. */
export const prettyLogs = (format: 'json' | 'pretty' | undefined) => format === 'pretty' || (format === undefined && process.stdout.isTTY === true)
