/**
 * Request validation with two Ajv instances. Querystrings and path parameters arrive as text
 * and are coerced to their schema's types; bodies are JSON and are taken as sent, so a
 * number where a string belongs is an error, not silently turned into "1". Unknown fields
 * are rejected rather than dropped: a scanner should learn of its typo.
 */
import { Ajv, type Options, type ValidateFunction } from 'ajv'
import addFormats from 'ajv-formats'
import fp from 'fastify-plugin'
import { sharedSchemas } from '../routes/schemas.js'

function ajv (options: Options): Ajv {
  // allErrors: a request is told everything wrong with it at once (the error handler lists a bounded number).
  const instance = new Ajv({ removeAdditional: false, useDefaults: true, allErrors: true, strict: false, ...options })
  addFormats.default(instance)
  return instance
}

export default fp(async function validation (fastify) {
  const body = ajv({ coerceTypes: false })
  const text = ajv({ coerceTypes: 'array' })
  // Schemas referenced by $id (Resource, Run, …) must be known to both.
  for (const schema of sharedSchemas) {
    body.addSchema(schema)
    text.addSchema(schema)
  }
  // A streamed body (NDJSON) is a stream here: its route checks it line by line, with `validateResource`.
  fastify.setValidatorCompiler(({ schema, httpPart, contentType }) =>
    httpPart === 'body' && contentType === NDJSON ? () => true : (httpPart === 'body' ? body : text).compile(schema))
  fastify.decorate('validateResource', body.compile({ $ref: 'Resource' }))
}, { name: 'validation' })

/** The media type of a body of resources one per line, streamed (routes/runs.ts). */
export const NDJSON = 'application/x-ndjson'

declare module 'fastify' {
  interface FastifyInstance {
    /** Ajv's check of one resource, as the JSON bodies' schemas check each of theirs. */
    validateResource: ValidateFunction
  }
}
