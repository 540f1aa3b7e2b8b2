/** The drizzle handle over the one pg pool the server owns, and the migration runner. */
import { fileURLToPath } from 'node:url'
import { drizzle, type NodePgDatabase } from 'drizzle-orm/node-postgres'
import { migrate } from 'drizzle-orm/node-postgres/migrator'
import type pg from 'pg'
import * as schema from './schema.js'

export type Db = NodePgDatabase<typeof schema>
/** A transaction handle; repositories accept one wherever a write must join a transaction. */
export type Tx = Parameters<Parameters<Db['transaction']>[0]>[0]
export type Executor = Db | Tx

export function createDb (pool: pg.Pool): Db {
  return drizzle({ client: pool, schema, casing: 'snake_case' })
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
  } finally {
    client.release()
  }
}
