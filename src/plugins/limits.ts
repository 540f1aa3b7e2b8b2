/**
 * Abuse limits that sit in front of every route: security headers (@fastify/helmet), and a
 * rate limit per API key (@fastify/rate-limit) counted in Redis, so that it holds across any
 * number of instances. Public routes (health, the API description) are not limited: they
 * must keep answering while a key is being throttled.
 */
import fastifyHelmet from '@fastify/helmet'
import fastifyRateLimit from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import { TallyError } from '../errors.js'

export default fp(async function limits (fastify) {
  const { config } = fastify
  await fastify.register(fastifyHelmet, {
    // The HTML pages (GraphiQL, Swagger UI) load scripts only from this server; both use inline styles.
    contentSecurityPolicy: {
      directives: {
        defaultSrc: ["'self'"],
        scriptSrc: ["'self'"],
        styleSrc: ["'self'", "'unsafe-inline'"],
        imgSrc: ["'self'", 'data:'],
        fontSrc: ["'self'", 'data:'],
        connectSrc: ["'self'"],
        frameAncestors: ["'none'"],
        formAction: ["'self'"],
        objectSrc: ["'none'"],
        baseUri: ["'self'"]
      }
    }
  })
  if (config.RATE_LIMIT_MAX === 0) return
  await fastify.register(fastifyRateLimit, {
    global: true,
    max: config.RATE_LIMIT_MAX,
    timeWindow: config.RATE_LIMIT_WINDOW * 1000,
    redis: fastify.redis,
    // A Redis that cannot count (down, full, read-only) lets requests through uncounted: reads
    // of Postgres keep working, and whatever needs Redis answers 503 by itself.
    skipOnError: true,
    nameSpace: `${config.REDIS_KEY_PREFIX}ratelimit:`,
    // Auth ran first (a global onRequest hook); public routes have no key and no limit.
    allowList: (request) => request.auth === null,
    keyGenerator: (request) => request.auth?.keyId ?? request.ip,
    errorResponseBuilder: (_request, context) => new TallyError('rate_limited',
      `This key made more than ${context.max} requests in ${config.RATE_LIMIT_WINDOW} s; retry in ${context.after}`)
  })
}, { name: 'limits', dependencies: ['auth', 'redis', 'problems'] })
