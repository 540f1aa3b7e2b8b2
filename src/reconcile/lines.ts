/**
 * NDJSON batches: one resource per line. A scanner that sends the same bytes for an unchanged
 * resource on every scan lets Tally recognise the line without parsing or checking it: the
 * cache (cache.ts) then holds the line's own value (XXH64 of its bytes, seeded with the id
 * digest) instead of the canonical content's. That needs the id before any parsing, so it is
 * read straight from the bytes when the line begins `{"id":"` and the id holds no escape;
 * other lines are parsed first, and simply never recognised.
 */
import { isUtf8 } from 'node:buffer'
import { TallyError } from '../errors.js'

const PREFIX = Buffer.from('{"id":"')
const QUOTE = 0x22
const BACKSLASH = 0x5c
const NEWLINE = 0x0a
const RETURN = 0x0d

/** The id of a line that begins `{"id":"<id without escapes>"`, or undefined. */
export function leadingId (line: Buffer): string | undefined {
  if (line.length < PREFIX.length + 2 || PREFIX.compare(line, 0, PREFIX.length) !== 0) return undefined
  const end = line.indexOf(QUOTE, PREFIX.length)
  if (end <= PREFIX.length) return undefined
  const escape = line.indexOf(BACKSLASH, PREFIX.length)
  if (escape !== -1 && escape < end) return undefined
  return line.toString('utf8', PREFIX.length, end)
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
