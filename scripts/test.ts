/**
 * `npm test`: tap against a real PostgreSQL and Redis. It uses TEST_PG_ADMIN_URL (or
 * DATABASE_URL) and TEST_REDIS_URL (or REDIS_URL) when given; otherwise it starts the same
 * embedded defaults as `npm start`, under .data/test, and stops them when tap ends. Arguments
 * go to tap (`npm test -- test/complete.test.ts`).
 */
import { spawn } from 'node:child_process'
import { lockDataDir, startEmbeddedPostgres, startEmbeddedRedis, type Service } from '../src/embedded.js'

const DATA_DIR = '.data/test'
const log = {
  info: (obj: object, msg: string) => console.log(`[npm test] ${msg}`, JSON.stringify(obj)),
  debug: () => {}
}

const services: Service[] = []
const env = { ...process.env }
try {
  const embedsPostgres = env.TEST_PG_ADMIN_URL === undefined && env.DATABASE_URL === undefined
  const embedsRedis = env.TEST_REDIS_URL === undefined && env.REDIS_URL === undefined
  // Another `npm test` on this checkout uses the same embedded services: one at a time.
  if (embedsPostgres || embedsRedis) await lockDataDir(DATA_DIR)
  if (env.TEST_PG_ADMIN_URL === undefined) {
    if (env.DATABASE_URL !== undefined) env.TEST_PG_ADMIN_URL = env.DATABASE_URL
    else {
      const postgres = await startEmbeddedPostgres(DATA_DIR, log)
      services.push(postgres)
      const admin = new URL(postgres.url)
      admin.pathname = '/postgres'
      env.TEST_PG_ADMIN_URL = admin.toString()
    }
  }
  if (env.TEST_REDIS_URL === undefined) {
    if (env.REDIS_URL !== undefined) env.TEST_REDIS_URL = env.REDIS_URL
    else {
      const redis = await startEmbeddedRedis(DATA_DIR, log)
      services.push(redis)
      env.TEST_REDIS_URL = redis.url
    }
  }
} catch (err) {
  console.error(`[npm test] ${(err as Error).message}`)
  for (const s of services) await s.stop()
  process.exit(1)
}
// The tests build their own configuration; these must not leak into it.
delete env.DATABASE_URL
delete env.REDIS_URL

const tap = spawn('npx', ['tap', ...process.argv.slice(2)], { stdio: 'inherit', env })
const code = await new Promise<number>((resolve) => tap.on('exit', (c, signal) => resolve(c ?? (signal === null ? 1 : 128))))
for (const s of services.reverse()) await s.stop()
process.exit(code)
