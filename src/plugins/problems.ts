/**
 * One error handler for everything: domain errors, Fastify's own (bad JSON, body too large,
 * schema validation, wrong content type), outages and bugs all leave as
 * `application/problem+json` with a stable `code`. 5xx bodies never carry internals.
 */
import type { FastifyError, FastifyReply, FastifySchemaValidationError } from 'fastify'
import fp from 'fastify-plugin'
import { isTallyError, isUnavailable, problemCodes, type ProblemCode } from '../errors.js'
import { patternWords } from '../contract.js'
import { countProblem } from './metrics.js'

/** Validation errors listed in a problem; the count says how many there were. */
export const MAX_LISTED_ERRORS = 20

/** One schema error as a person reads it: the field it is about, and what is wrong in words. */
export function describe (v: FastifySchemaValidationError): { path: string, message: string } {
  const path = v.instancePath || '/'
  const params = v.params as Record<string, unknown>
  if (v.keyword === 'additionalProperties') return { path, message: `unknown field "${String(params.additionalProperty)}"` }
  if (v.keyword === 'required') return { path, message: `missing field "${String(params.missingProperty)}"` }
  if (v.keyword === 'pattern') return { path, message: patternWords[String(params.pattern)] ?? v.message ?? 'does not match its pattern' }
  return { path, message: v.message ?? v.keyword }
}

/** Fastify's own error codes that have a better name in Tally's contract. */
const fastifyCodes: Record<string, ProblemCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'batch_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type'
}

/** Other 4xx errors (Fastify's, or a plugin's: a rate limiter's 429) keep their status, under the code that names it. */
const statusCodes: Record<number, ProblemCode> = {
  400: 'validation_failed',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  405: 'method_not_allowed',
  406: 'not_acceptable',
  413: 'batch_too_large',
  415: 'unsupported_media_type',
  429: 'rate_limited'
}

function send (reply: FastifyReply, code: ProblemCode, detail: string, extra: Record<string, unknown> = {}, statusOverride?: number) {
  countProblem(reply.server.metrics, code)
  const { title } = problemCodes[code]
  const status = statusOverride ?? problemCodes[code].status
  return reply.code(status).type('application/problem+json').send({
    type: `urn:tally:problem:${code}`, title, status, detail, code, ...extra
  })
}

export default fp(async function problems (fastify) {
  fastify.setErrorHandler(function (error: FastifyError, request, reply) {
    if (isTallyError(error)) return send(reply, error.code, error.message, error.extra)
    if (error.validation) {
      // At most MAX_LISTED_ERRORS described; a batch's validator counts the rest (plugins/validation.ts).
      const errors = error.validation.slice(0, MAX_LISTED_ERRORS).map(describe)
      const count = Math.max((error.validation as { total?: number }).total ?? 0, error.validation.length)
      const first = errors[0]!
      const more = count > 1 ? ` (and ${count - 1} more: see errors)` : ''
      return send(reply, 'validation_failed', `${error.validationContext ?? 'request'} ${first.path}: ${first.message}${more}`, {
        errors,
        errorCount: count
      })
    }
    const mapped = fastifyCodes[error.code]
    if (mapped !== undefined) return send(reply, mapped, error.message)
    const status = error.statusCode ?? 500
    if (status >= 400 && status < 500) {
      const code = statusCodes[status] ?? 'client_error'
      // RFC 9110: a 401 says how to authenticate.
      if (status === 401 && reply.getHeader('www-authenticate') === undefined) reply.header('www-authenticate', 'Bearer')
      return send(reply, code, error.message, {}, status)
    }
    if (isUnavailable(error)) {
      request.log.warn({ err: error }, 'dependency unavailable')
      reply.header('retry-after', '1')
      return send(reply, 'unavailable', 'Postgres or Redis is unreachable; retry the request')
    }
    request.log.error({ err: error }, 'unhandled error')
    return send(reply, 'internal', 'An internal error occurred; it has been logged')
  })

  fastify.setNotFoundHandler(function (request, reply) {
    return send(reply, 'not_found', `Route ${request.method} ${request.url.split('?')[0]} does not exist`)
  })
}, { name: 'problems', dependencies: ['metrics'] })
