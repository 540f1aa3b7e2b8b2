/**
 * Request validation with two Ajv instances. Querystrings and path parameters arrive as text
 * and are coerced to their schema's types; bodies are JSON and are taken as sent, so a
 * number where a string belongs is an error, not silently turned into "1". Unknown fields
 * are rejected rather than dropped: a scanner should learn of its typo.
 */
import { Ajv, type ErrorObject, type Options, type ValidateFunction } from 'ajv'
import addFormats from 'ajv-formats'
import fp from 'fastify-plugin'
import { sharedSchemas } from '../contract.js'
import { SplitBatch } from '../reconcile/spans.js'
import { MAX_LISTED_ERRORS } from './problems.js'

function ajv (options: Options): Ajv {
  const instance = new Ajv({ removeAdditional: false, useDefaults: true, allErrors: false, strict: false, ...options })
  addFormats.default(instance)
  return instance
}

/** Bodies of at most this many JSON values are checked for every error at once. */
const LIST_ALL_VALUES = 500

/** Whether `value` holds at most `limit` JSON values; walks no further than that. */
function atMost (value: unknown, limit: number): boolean {
  const stack = [value]
  for (let n = 0; stack.length > 0; n++) {
    if (n + stack.length > limit) return false
    const v = stack.pop()
    if (typeof v !== 'object' || v === null) continue
    for (const key in v) {
      stack.push((v as Record<string, unknown>)[key])
      if (n + stack.length > limit) return false
    }
  }
  return true
}

/** The errors a validator found, with how many there were when that is more than it lists. */
type Listed = ErrorObject[] & { total?: number }

/**
 * A request is told everything wrong with it, within bounds: Ajv's `allErrors` makes an error
 * object for every fault, so a 16 MB body of bad items would make millions. A valid body costs
 * one pass of the stopping validator. A refused one is checked again: a small body (≤ 500 JSON
 * values) for every error; a batch of resources one resource at a time, listing the first error
 * of each of the first 20 bad ones and counting the rest; anything else gives its first error.
 */
function listing (first: ValidateFunction, all: ValidateFunction, resource: ValidateFunction) {
  const validate = (data: unknown): boolean => {
    // A batch split into its resources' bytes is checked resource by resource as it is read (routes/runs.ts).
    if (data instanceof SplitBatch || first(data)) return true
    validate.errors = explain(data)
    return false
  }
  validate.errors = null as Listed | null
  const explain = (data: unknown): Listed => {
    if (atMost(data, LIST_ALL_VALUES)) {
      all(data)
      return all.errors ?? []
    }
    const resources = (data as { resources?: unknown }).resources
    const errors: Listed = (first.errors ?? []).filter((e) => !e.instancePath.startsWith('/resources/'))
    if (!Array.isArray(resources)) return errors
    let bad = 0
    resources.forEach((item, i) => {
      if (resource(item)) return
      bad++
      if (bad <= MAX_LISTED_ERRORS) errors.push(...(resource.errors ?? []).map((e) => ({ ...e, instancePath: `/resources/${i}${e.instancePath}` })))
    })
    errors.total = errors.length - Math.min(bad, MAX_LISTED_ERRORS) + bad
    return errors
  }
  return validate
}

export default fp(async function validation (fastify) {
  const body = ajv({ coerceTypes: false })
  const bodyAll = ajv({ coerceTypes: false, allErrors: true })
  const text = ajv({ coerceTypes: 'array' })
  // Schemas referenced by $id (Resource, Run, …) must be known to both.
  for (const schema of sharedSchemas) {
    body.addSchema(schema)
    bodyAll.addSchema(schema)
    text.addSchema(schema)
  }
  const resource = body.compile({ $ref: 'Resource' })
  // A streamed body (NDJSON) is a stream here: its route checks it line by line, with `validateResource`.
  fastify.setValidatorCompiler(({ schema, httpPart, contentType }) => {
    if (httpPart === 'body' && contentType === NDJSON) return () => true
    if (httpPart !== 'body') return text.compile(schema)
    return listing(body.compile(schema), bodyAll.compile(schema), resource)
  })
  fastify.decorate('validateResource', resource)
}, { name: 'validation' })

/** The media type of a body of resources one per line, streamed (routes/runs.ts). */
export const NDJSON = 'application/x-ndjson'

declare module 'fastify' {
  interface FastifyInstance {
    /** Ajv's check of one resource, as the JSON bodies' schemas check each of theirs. */
    validateResource: ValidateFunction
  }
}
