/**
 * NDJSON batches: one resource per line (a JSON body's resources are split into such byte spans
 * too, spans.ts). A scanner that sends the same bytes for an unchanged resource on every scan
 * lets Tally recognise them without parsing or checking them: the cache (cache.ts) then holds
 * the bytes' own value (XXH64 of them, seeded with the id digest) instead of the canonical
 * content's. That needs the id before any parsing, so it is read straight from the bytes when
 * they begin `{"id":"` (whitespace allowed around the key and the colon) and the id holds no
 * escape; other resources are parsed first, and recognised by their content's hash only.
 */
import { isUtf8 } from 'node:buffer'
import { TallyError } from '../errors.js'
import { BACKSLASH, COLON, OPEN_OBJECT, QUOTE, skip } from './spans.js'

const NEWLINE = 0x0a
const RETURN = 0x0d
const ID_KEY = Buffer.from('"id"')

/** The id of a resource's bytes that begin `{"id":"<id without escapes>"` (whitespace allowed between), or undefined. */
export function leadingId (line: Buffer): string | undefined {
  if (line[0] !== OPEN_OBJECT) return undefined
  let i = skip(line, 1)
  if (ID_KEY.compare(line, i, i + ID_KEY.length) !== 0) return undefined
  i = skip(line, i + ID_KEY.length)
  if (line[i] !== COLON) return undefined
  i = skip(line, i + 1)
  if (line[i] !== QUOTE) return undefined
  const start = i + 1
  const end = line.indexOf(QUOTE, start)
  if (end <= start) return undefined
  const escape = line.indexOf(BACKSLASH, start)
  if (escape !== -1 && escape < end) return undefined
  return line.toString('utf8', start, end)
}

const tooLong = (maxLine: number) => new TallyError('batch_too_large', `A line holds at most ${maxLine} bytes (BODY_LIMIT)`)

/** A line's bytes without its line ending; undefined for a blank line. */
function content (buffer: Buffer, start: number, end: number): Buffer | undefined {
  const stop = end > start && buffer[end - 1] === RETURN ? end - 1 : end
  const line = buffer.subarray(start, stop)
  return line.some((b) => b !== 0x20 && b !== 0x09) ? line : undefined
}

/**
 * The lines of a stream, `size` at a time (blank lines skipped). The stream is read only as
 * the caller asks for the next lot, so a large body flows at the speed it is ingested. A line
 * longer than `maxLine` bytes is refused (413), one that is not UTF-8 too (400: its bytes would
 * be decoded as U+FFFD, and two ids differing only there would be one).
 */
export async function * lineBatches (stream: AsyncIterable<Buffer>, size: number, maxLine: number): AsyncGenerator<Buffer[]> {
  let rest: Buffer = Buffer.alloc(0)
  let batch: Buffer[] = []
  let lines = 0
  const take = (line: Buffer) => {
    lines++
    if (!isUtf8(line)) throw new TallyError('validation_failed', `line ${lines} is not valid UTF-8: send NDJSON as UTF-8 text`)
    batch.push(line)
  }
  for await (const chunk of stream) {
    const buffer = rest.length === 0 ? chunk : Buffer.concat([rest, chunk])
    let start = 0
    for (let nl = buffer.indexOf(NEWLINE); nl !== -1; nl = buffer.indexOf(NEWLINE, start)) {
      const line = content(buffer, start, nl)
      start = nl + 1
      if (line === undefined) continue
      if (line.length > maxLine) throw tooLong(maxLine)
      take(line)
      if (batch.length === size) {
        yield batch
        batch = []
      }
    }
    rest = buffer.subarray(start)
    if (rest.length > maxLine) throw tooLong(maxLine)
  }
  const last = content(rest, 0, rest.length)
  if (last !== undefined) take(last)
  if (batch.length > 0) yield batch
}
