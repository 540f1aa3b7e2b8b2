/**
 * Request validation with two Ajv instances. Querystrings and path parameters arrive as text
 * and are coerced to their schema's types; bodies are JSON and are taken as sent, so a
 * number where a string belongs is an error, not silently turned into "1". Unknown fields
 * are rejected rather than dropped: a scanner should learn of its typo.
 */
import { Ajv, type Options } from 'ajv'
import addFormats from 'ajv-formats'
import fp from 'fastify-plugin'
import { sharedSchemas } from '../routes/schemas.js'

function ajv (options: Options): Ajv {
  const instance = new Ajv({ removeAdditional: false, useDefaults: true, allErrors: false, strict: false, ...options })
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
  fastify.setValidatorCompiler(({ schema, httpPart }) =>
    (httpPart === 'body' ? body : text).compile(schema))
}, { name: 'validation' })
