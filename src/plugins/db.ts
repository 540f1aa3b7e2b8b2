/**
 * The database plugin: drizzle over the pool @fastify/postgres owns, migrations applied at
 * start (unless MIGRATE_ON_START=false), and the repositories.
 */
import type {} from '@fastify/postgres'
import fp from 'fastify-plugin'
import pg from 'pg'
import { createDb, runMigrations, withTransaction, type Db, type Tx } from '../db/client.js'
import { createKeysRepository, type KeysRepository } from '../db/keys-repository.js'
import { createResourcesRepository, type ResourcesRepository } from '../db/resources-repository.js'
import { createRunsRepository, type RunsRepository } from '../db/runs-repository.js'

export interface DbDecorator {
  drizzle: Db
  runs: RunsRepository
  resources: ResourcesRepository
  keys: KeysRepository
  transaction: <T>(fn: (tx: Tx) => Promise<T>) => Promise<T>
  /**
   * The pool GraphQL reads through: GRAPHQL_POOL_MAX connections whose statements stop after
   * GRAPHQL_TIMEOUT ms, apart from the pool ingestion and completion use.
   */
  readPool: pg.Pool
}

declare module 'fastify' {
  interface FastifyInstance {
    db: DbDecorator
  }
}

export default fp(async function db (fastify) {
  // An idle pooled connection that Postgres drops (restart, failover, pg_terminate_backend)
  // emits 'error' on the pool; unheard, that would crash the process. The pool replaces it.
  fastify.pg.pool.on('error', (err) => fastify.log.warn({ err }, 'idle postgres connection lost'))
  // A checked-out connection dropped between two statements (inside a transaction) emits
  // 'error' on its client with no query to fail: unheard, that too would crash the process.
  // The next statement fails as unavailable (503) and the pool discards the client on release.
  fastify.pg.pool.on('connect', (client) => {
    client.on('error', (err) => fastify.log.warn({ err }, 'postgres connection lost'))
  })
  if (fastify.config.MIGRATE_ON_START) await runMigrations(fastify.pg.pool)
  const drizzle = createDb(fastify.pg.pool)
  const { config } = fastify
  const readPool = new pg.Pool({
    connectionString: config.DATABASE_URL,
    max: config.GRAPHQL_POOL_MAX,
    statement_timeout: config.GRAPHQL_TIMEOUT,
    connectionTimeoutMillis: 5000
  })
  readPool.on('error', (err) => fastify.log.warn({ err }, 'idle read-pool postgres connection lost'))
  readPool.on('connect', (client) => {
    client.on('error', (err) => fastify.log.warn({ err }, 'read-pool postgres connection lost'))
  })
  fastify.addHook('onClose', async () => { await readPool.end() })
  fastify.decorate('db', {
    drizzle,
    runs: createRunsRepository(drizzle),
    resources: createResourcesRepository(drizzle),
    keys: createKeysRepository(drizzle),
    transaction: (fn) => withTransaction(fastify.pg.pool, fn),
    readPool
  })
}, { name: 'db', dependencies: ['config', '@fastify/postgres'] })
