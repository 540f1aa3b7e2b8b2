/**
 * A JSON batch body, `{"resources": [ … ], "batchId": "…"}`, split into the bytes of each
 * resource without building any object: each resource's span is then what an NDJSON line is to
 * ingestion (lines.ts), recognised by the cache from its bytes when a scanner sends the same
 * bytes for an unchanged resource, and parsed and checked only when it is not.
 *
 * The split checks the body's structure outside the spans (the object, its two keys, the array,
 * commas and whitespace); the bytes inside a span are checked by whoever reads them: the cache
 * recognises only bytes that were parsed and checked before (as the same resource), and every
 * other span is parsed and checked in full. So a body split here is JSON exactly when each of its
 * spans is.
 *
 * Anything else (another key, a resource that is not an object, an empty array, escapes in a key
 * or the batch id, stray bytes) is not split: the caller parses the body
 * as a whole and checks it as it always did, refusals worded the same.
 */

const WS = new Uint8Array(256)
for (const b of [0x20, 0x09, 0x0a, 0x0d]) WS[b] = 1
/** JSON's structural bytes (lines.ts reads a leading id with them too). */
export const QUOTE = 0x22
export const BACKSLASH = 0x5c
export const OPEN_OBJECT = 0x7b
const CLOSE_OBJECT = 0x7d
const OPEN_ARRAY = 0x5b
const CLOSE_ARRAY = 0x5d
const COMMA = 0x2c
export const COLON = 0x3a

/** A JSON batch body, split: each resource's bytes, and the batch id if it has one. */
export class SplitBatch {
  constructor (readonly body: Buffer, readonly spans: Buffer[], readonly batchId: string | undefined) {}
}

class NotSplit extends Error {}
const notSplit = new NotSplit()

/** Splits a batch body (UTF-8, checked by the caller), or undefined when it is not of the plain shape above. */
export function splitBatch (body: Buffer): SplitBatch | undefined {
  try {
    return split(body)
  } catch (err) {
    if (err === notSplit) return undefined
    throw err
  }
}

function split (body: Buffer): SplitBatch {
  const end = body.length
  let i = skip(body, 0)
  expect(body, i++, OPEN_OBJECT)
  let spans: Buffer[] | undefined
  let batchId: string | undefined
  for (;;) {
    i = skip(body, i)
    const keyEnd = stringEnd(body, i)
    const key = body.toString('latin1', i + 1, keyEnd - 1)
    i = skip(body, keyEnd)
    expect(body, i++, COLON)
    i = skip(body, i)
    if (key === 'resources' && spans === undefined) {
      spans = []
      i = resources(body, i, spans)
    } else if (key === 'batchId' && batchId === undefined) {
      const stop = stringEnd(body, i)
      batchId = body.toString('utf8', i + 1, stop - 1)
      i = stop
    } else {
      throw notSplit
    }
    i = skip(body, i)
    if (body[i] === COMMA) { i++; continue }
    expect(body, i++, CLOSE_OBJECT)
    break
  }
  if (skip(body, i) !== end || spans === undefined) throw notSplit
  return new SplitBatch(body, spans, batchId)
}

/** The index of the first byte from `i` that is not JSON whitespace. */
export function skip (body: Buffer, i: number): number {
  while (i < body.length && WS[body[i]!] === 1) i++
  return i
}

function expect (body: Buffer, i: number, byte: number): void {
  if (body[i] !== byte) throw notSplit
}

/** The index just past the string starting at `i`; one holding an escape or a control character is not split. */
function stringEnd (body: Buffer, i: number): number {
  expect(body, i, QUOTE)
  const close = body.indexOf(QUOTE, i + 1)
  if (close === -1) throw notSplit
  for (let j = i + 1; j < close; j++) if (body[j]! < 0x20 || body[j] === BACKSLASH) throw notSplit
  return close + 1
}

/** Reads the array of resources from `i`, each one's span into `spans`; returns the index past the array. */
function resources (body: Buffer, i: number, spans: Buffer[]): number {
  expect(body, i++, OPEN_ARRAY)
  for (;;) {
    i = skip(body, i)
    const stop = objectEnd(body, i)
    spans.push(body.subarray(i, stop))
    i = skip(body, stop)
    if (body[i] === COMMA) { i++; continue }
    expect(body, i, CLOSE_ARRAY)
    return i + 1
  }
}

/**
 * The index just past the object starting at `i`: strings skipped (with their escapes), brackets
 * counted. Whether the bytes between are JSON is for the parse (or the cache) to say.
 */
function objectEnd (body: Buffer, i: number): number {
  expect(body, i, OPEN_OBJECT)
  let depth = 0
  for (let j = i; j < body.length; j++) {
    const b = body[j]
    if (b === QUOTE) {
      j = closingQuote(body, j)
    } else if (b === OPEN_OBJECT || b === OPEN_ARRAY) {
      depth++
    } else if (b === CLOSE_OBJECT || b === CLOSE_ARRAY) {
      if (--depth === 0) {
        if (b !== CLOSE_OBJECT) throw notSplit
        return j + 1
      }
    }
  }
  throw notSplit
}

/**
 * The index of the quote that closes the string opened at `open`: the next quote not escaped,
 * found with `indexOf` (most of a resource's bytes are in strings; a byte loop here was a third
 * slower); a quote is escaped when an odd number of backslashes precede it.
 */
function closingQuote (body: Buffer, open: number): number {
  for (let from = open + 1; ;) {
    const close = body.indexOf(QUOTE, from)
    if (close === -1) throw notSplit
    let k = close - 1
    while (body[k] === BACKSLASH) k--
    if ((close - 1 - k) % 2 === 0) return close
    from = close + 1
  }
}
