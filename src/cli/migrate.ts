/** `npm run db:migrate`: applies the SQL migrations in `migrations/` to DATABASE_URL. */
import pg from 'pg'
import { loadConfig } from '../config.js'
import { runMigrations } from '../db/client.js'

const config = loadConfig()
const pool = new pg.Pool({ connectionString: config.DATABASE_URL, max: 1 })
try {
  await runMigrations(pool)
  console.log('migrations applied')
} finally {
  await pool.end()
}
