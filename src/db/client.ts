/** The drizzle handle over the one pg pool the server owns, and the migration runner. */
import { fileURLToPath } from 'node:url'
import { drizzle, type NodePgDatabase } from 'drizzle-orm/node-postgres'
import { migrate } from 'drizzle-orm/node-postgres/migrator'
import type pg from 'pg'
import * as schema from './schema.js'

export type Db = NodePgDatabase<typeof schema>
declare const inTransaction: unique symbol
/** A handle inside a transaction (see withTransaction); repositories take one where a write must join it. */
export type Tx = Db & { readonly [inTransaction]: true }
export type Executor = Db | Tx

export function createDb (client: pg.Pool | pg.PoolClient): Db {
  return drizzle({ client, schema, casing: 'snake_case' })
}

/**
 * Runs `fn` in one transaction on one pooled connection, and always gives the connection back:
 * destroyed if it broke, pooled otherwise. Not drizzle's `db.transaction`: drizzle-orm 0.45
 * sends BEGIN outside its try, so a connection dropped at that moment is never released. Found
 * by terminating backends under load (test/faults.test.ts): the pool leaked, and closing hung.
 */
export async function withTransaction<T> (pool: pg.Pool, fn: (tx: Tx) => Promise<T>): Promise<T> {
  const client = await pool.connect()
  let broken: Error | undefined
  try {
    await client.query('begin')
    const result = await fn(createDb(client) as Tx)
    await client.query('commit')
    return result
  } catch (err) {
    await client.query('rollback').catch((rollbackErr: Error) => { broken = rollbackErr })
    throw err
  } finally {
    client.release(broken)
  }
}

export const migrationsFolder = fileURLToPath(new URL('../../migrations', import.meta.url))

// Any constant works; it only has to be the same for every Tally process sharing a database.
const MIGRATION_LOCK = 7_261_001

/**
 * Applies pending migrations under an advisory lock, so instances starting together
 * against one database do not race each other through the same DDL.
 */
export async function runMigrations (pool: pg.Pool): Promise<void> {
  const client = await pool.connect()
  try {
    await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK])
    try {
      await migrate(drizzle({ client, casing: 'snake_case' }), { migrationsFolder })
    } finally {
      await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK])
    }
  } catch (err) {
    client.release(err as Error)
    throw err
  }
  client.release()
}
