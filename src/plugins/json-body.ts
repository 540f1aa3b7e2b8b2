/**
 * JSON bodies are read as bytes and must be UTF-8 (RFC 8259): decoded as text first, bytes that
 * are not would each become U+FFFD, and two ids that differ only there (`caf\xE9`, `caf\xE8`
 * in Latin-1) would be one resource. Every route's JSON goes through here; the run routes add
 * their own checks (routes/runs.ts).
 */
import { isUtf8 } from 'node:buffer'
import type { FastifyBodyParser } from 'fastify'
import fp from 'fastify-plugin'
import { TallyError } from '../errors.js'

/** The bytes as text; a 400 when they are not UTF-8. `what` names them in the refusal. */
export function utf8Text (bytes: Buffer, what = 'The body'): string {
  if (!isUtf8(bytes)) throw new TallyError('validation_failed', `${what} is not valid UTF-8: send JSON as UTF-8 text`)
  return bytes.toString('utf8')
}

/** A body parser that checks the bytes are UTF-8, then hands the text to `parse`. */
export function utf8Parser (parse: FastifyBodyParser<string>): FastifyBodyParser<Buffer> {
  return (request, body, done) => {
    let text: string
    try {
      text = utf8Text(body)
    } catch (err) {
      return done(err as Error, undefined)
    }
    return parse(request, text, done)
  }
}

export default fp(async function jsonBody (fastify) {
  const parse = fastify.getDefaultJsonParser('error', 'error')
  fastify.removeContentTypeParser('application/json')
  fastify.addContentTypeParser('application/json', { parseAs: 'buffer' }, utf8Parser(parse))
}, { name: 'json-body' })
