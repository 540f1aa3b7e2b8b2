/** Page cursors (src/cursor.ts): what one API issues, both decode; anything else is refused. */
import t from 'tap'
import { decodeCursor, encodeCursor } from '../src/cursor.js'

t.test('a cursor gives back the key it was made of, of the kind asked for', async (t) => {
  t.equal(decodeCursor<string>(encodeCursor('arn:aws:s3:::b'), 'string'), 'arn:aws:s3:::b')
  t.equal(decodeCursor<number>(encodeCursor(42), 'number'), 42)
  t.same(decodeCursor<[number, number]>(encodeCursor([7, 9]), 'pair'), [7, 9])
  t.match(encodeCursor(Number.MAX_SAFE_INTEGER), /^[A-Za-z0-9_-]{1,32}$/, 'a run cursor fits the REST pattern')
})

t.test('a cursor this server did not issue decodes to nothing', async (t) => {
  const b64 = (text: string) => Buffer.from(text).toString('base64url')
  const foreign: Array<[string, 'string' | 'number' | 'pair']> = [
    ['%%%', 'string'], [b64('not json'), 'number'], [b64('{"a":1}'), 'number'], [b64('[]'), 'number'],
    [encodeCursor('7'), 'number'], [encodeCursor(7), 'string'], [encodeCursor([1, 2]), 'number'],
    [b64('[0]'), 'number'], [b64('[-3]'), 'number'], [b64('[1.5]'), 'number'], [b64('[1e400]'), 'number'],
    [b64('[[1]]'), 'pair'], [b64('[[1,"2"]]'), 'pair'], [encodeCursor('a\u0000b'), 'string']
  ]
  for (const [cursor, kind] of foreign) t.equal(decodeCursor(cursor, kind), undefined, `${cursor} as ${kind}`)
})
