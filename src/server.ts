/**
 * The only file that listens: read the configuration, start an embedded PostgreSQL and Redis
 * for what it does not name (see embedded.ts), build the app, listen, and shut everything
 * down gracefully.
 */
import closeWithGrace from 'close-with-grace'
import { pino } from 'pino'
import { buildApp } from './app.js'
import { bootstrapAdminKey } from './auth/bootstrap.js'
import { logOptions, prettyLogs } from './log.js'
import { loadConfig, loadSettings, type Settings } from './config.js'
import { DataDirInUse, RedisServerMissing, findOnPath, lockDataDir, startEmbeddedPostgres, startEmbeddedRedis, type Service } from './embedded.js'

let settings: Settings
try {
  settings = loadSettings()
} catch (err) {
  console.error((err as Error).message)
  process.exit(1)
}
// Before anything starts: the one thing the zero-config start needs from the machine.
const embedRedis = settings.REDIS_URL === undefined && settings.REDIS_CLUSTER_NODES === undefined
if (embedRedis && findOnPath('redis-server') === undefined) {
  console.error(new RedisServerMissing().message)
  process.exit(1)
}
// The embedded services under DATA_DIR are this server's alone.
if (embedRedis || settings.DATABASE_URL === undefined) {
  try {
    await lockDataDir(settings.DATA_DIR)
  } catch (err) {
    if (!(err instanceof DataDirInUse)) throw err
    console.error(err.message)
    process.exit(1)
  }
}

const log = pino(logOptions(settings.LOG_LEVEL, prettyLogs(settings.LOG_FORMAT)))
const embedded: Service[] = []
const stopEmbedded = async () => {
  for (const service of embedded.reverse()) await service.stop()
  if (embedded.length > 0) log.info({ count: embedded.length }, 'embedded services stopped')
}
// Set once the app is built; shutdown may come before that (a signal during startup).
const running: { app?: Awaited<ReturnType<typeof buildApp>> } = {}
closeWithGrace({ delay: 10_000 }, async ({ err }) => {
  if (err !== undefined) log.error({ err }, 'shutting down after an error')
  await running.app?.close()
  await stopEmbedded()
})

const env = { ...process.env }
if (settings.DATABASE_URL === undefined) {
  const postgres = await startEmbeddedPostgres(settings.DATA_DIR, log)
  embedded.push(postgres)
  env.DATABASE_URL = postgres.url
}
if (embedRedis) {
  const redis = await startEmbeddedRedis(settings.DATA_DIR, log)
  embedded.push(redis)
  env.REDIS_URL = redis.url
}
const config = loadConfig(env)
const app = running.app = await buildApp(config, log)
const first = await bootstrapAdminKey(app.db, config.DATA_DIR)
if (first !== undefined) {
  log.warn({ keyId: first.id, file: first.file },
    `No API key existed: created admin key ${first.id} for tenant default and wrote it to ${first.file} (readable by you only). ` +
    'Create scanner and reader keys with `npm run keys -- create`, and revoke this one when you have your own.')
}
await app.listen({ port: config.PORT, host: config.HOST })

const { port } = app.server.address() as { port: number }
const base = `http://${config.HOST.includes(':') ? `[${config.HOST}]` : config.HOST}:${port}`
// Whether /graphiql is there: asked for, and its packages installed (graphql/index.ts).
const graphiql = app.hasRoute({ method: 'GET', url: '/graphiql' })
log.info({ url: base, docs: `${base}/docs`, graphiql: graphiql ? `${base}/graphiql` : null },
  `Tally is listening on ${base}: API docs at ${base}/docs${graphiql ? `, GraphiQL at ${base}/graphiql` : ''}`)
