/**
 * The Tally application as a plain plugin. The server, the tests and the benchmarks all build
 * it through `buildApp`, with the same Fastify options from `serverOptions`.
 */
import fastifyPostgres from '@fastify/postgres'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyServerOptions } from 'fastify'
import type { Config } from './config.js'
import configPlugin from './plugins/config.js'
import authPlugin from './plugins/auth.js'
import dbPlugin from './plugins/db.js'
import eventsPlugin from './plugins/events.js'
import limitsPlugin from './plugins/limits.js'
import metricsPlugin, { metricsRoutes } from './plugins/metrics.js'
import { logOptions } from './log.js'
import openapiPlugin from './plugins/openapi.js'
import problemsPlugin from './plugins/problems.js'
import jsonBodyPlugin from './plugins/json-body.js'
import validationPlugin from './plugins/validation.js'
import reconcilePlugin from './plugins/reconcile.js'
import redisPlugin from './plugins/redis.js'
import graphql from './graphql/index.js'
import dashboardRoutes from './routes/dashboard.js'
import healthRoutes from './routes/health.js'
import runsRoutes from './routes/runs.js'
import { sharedSchemas } from './contract.js'

export function serverOptions (config: Config): FastifyServerOptions {
  return {
    logger: logOptions(config.LOG_LEVEL),
    // One line a request, when it is answered (below), instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.BODY_LIMIT,
    // A body that trickles in is cut off: one request cannot hold a connection and its buffer open for good.
    requestTimeout: config.REQUEST_TIMEOUT * 1000
  }
}

/** `logger`: a pino logger to log through instead of one made from LOG_LEVEL (the server shares its own). */
export async function buildApp (config: Config, logger?: FastifyBaseLogger) {
  const options = serverOptions(config)
  const app = Fastify(logger === undefined ? options : { ...options, logger: undefined, loggerInstance: logger })
    .withTypeProvider<TypeBoxTypeProvider>()
  // A request's one log line: what was asked, the answer's status and time. Probes at debug.
  app.addHook('onResponse', async (request, reply) => {
    const url = request.url.split('?')[0]!
    const line = { method: request.method, url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }
    if (url === '/healthz' || url === '/readyz') request.log.debug(line, 'probe')
    else request.log.info(line, `${request.method} ${url} ${reply.statusCode} ${line.ms} ms`)
  })
  // A plugin that fails (no database, a Redis that evicts) must not leave the others' pools open.
  try {
    await app.register(configPlugin, { config })
    await app.register(fastifyPostgres, { connectionString: config.DATABASE_URL, max: config.PG_POOL_MAX })
    await app.register(dbPlugin)
    await app.register(authPlugin)
    await app.register(redisPlugin)
    await app.register(metricsPlugin)
    await app.register(eventsPlugin)
    await app.register(reconcilePlugin)
    await app.register(problemsPlugin)
    await app.register(jsonBodyPlugin)
    await app.register(limitsPlugin)
    await app.register(validationPlugin)
    for (const schema of sharedSchemas) app.addSchema(schema)
    await app.register(openapiPlugin)
    await app.register(healthRoutes)
    await app.register(metricsRoutes)
    await app.register(runsRoutes)
    await app.register(graphql)
    await app.register(dashboardRoutes)
  } catch (err) {
    await app.close().catch(() => {})
    throw err
  }
  return app
}
