/**
 * What a first load costs Postgres per row, statement against statement, one batch at a time on
 * one connection (no HTTP, no Redis, no other load): Tally's write statement
 * (resources-repository writeChanged) and the naive design's upsert into a table with a
 * dashboard's indexes (`naive`, as `npm run bench` has it) and into one with its primary key only
 * (`naive-bare`, as `--naive-bare` has it). Each variant loads a scope of its own, twice.
 *
 *   node --import tsx bench/first-load.ts [tally|naive|naive-bare]   (FIRST_LOAD_BATCHES=30 batches of 1,000)
 */
import pg from 'pg'
import { createDb, runMigrations } from '../src/db/client.js'
import { createResourcesRepository } from '../src/db/resources-repository.js'
import { contentOf } from '../src/reconcile/content-hash.js'
import { makeResource } from './estate.js'
import { postgresCpuSec, walAndXid } from './metrics.js'
import { NAIVE_DDL, NAIVE_DASHBOARD_INDEXES, upsertNaive } from './naive/app.js'

const admin = new pg.Client({ connectionString: process.env.BENCH_PG_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres' })
await admin.connect()
await admin.query('drop database if exists tally_first_load with (force)')
await admin.query('create database tally_first_load')
const url = new URL(process.env.BENCH_PG_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres')
url.pathname = '/tally_first_load'
const pool = new pg.Pool({ connectionString: url.toString(), max: 2 })
await runMigrations(pool)
await pool.query(NAIVE_DDL + NAIVE_DASHBOARD_INDEXES)
// The naive table as `npm run bench -- --naive-bare` has it: its primary key only.
await pool.query('create table naive_bare (like naive_resources including defaults); alter table naive_bare add primary key (tenant, scope, id)')
const db = createDb(pool)
const repo = createResourcesRepository(db)
const mon = new pg.Client({ connectionString: url.toString() }); await mon.connect()
const B = Number(process.env.FIRST_LOAD_BATCHES ?? 30)
const batches = (k: number) => Array.from({ length: B }, (_, b) => Array.from({ length: 1000 }, (_, i) => makeResource(1, '1234567890' + k, b * 1000 + i, 1)))

async function measure (name: string, fn: () => Promise<void>) {
  await mon.query('checkpoint')
  const c0 = await postgresCpuSec(mon); const w0 = await walAndXid(mon); const t0 = performance.now()
  await fn()
  const t1 = performance.now(); const w1 = await walAndXid(mon)
  await mon.query('checkpoint')
  const c1 = await postgresCpuSec(mon)
  const rows = B * 1000
  console.log(`${name}: wall ${(t1 - t0).toFixed(0)} ms, pg cpu ${((c1! - c0!)).toFixed(2)} s (${((c1! - c0!) * 1e6 / rows).toFixed(1)} µs a row), ` +
    `WAL ${((w1.wal - w0.wal) / 1e6).toFixed(1)} MB (${((w1.wal - w0.wal) / rows).toFixed(0)} B a row)`)
}
const variant = process.argv[2] ?? 'all'
let k = 0
for (const round of [1, 2]) {
  for (const v of ['tally', 'naive', 'naive-bare']) {
    if (variant !== 'all' && variant !== v) continue
    const scope = `s${++k}`
    const data = batches(k)
    const { rows: [run] } = await pool.query('insert into runs (scope, status, shard_count) values ($1, \'open\', 64) returning id', [scope])
    await measure(`${v} round ${round}`, async () => {
      let t = 0 // batch tokens
      for (const [b, rs] of data.entries()) {
        if (v === 'tally') {
          const rows = rs.map((r, i) => {
            const { canonical, hash } = contentOf(r)
            return { id: r.id, content: canonical, hash, digest: String(b * 1000 + i) }
          })
          await repo.writeChanged('default', scope, Number(run.id), `t${t++}`, rows)
        } else {
          await upsertNaive(pool, v === 'naive' ? 'naive_resources' : 'naive_bare', scope, run.id, rs)
        }
      }
    })
  }
}
await mon.end(); await pool.end()
await admin.query('drop database if exists tally_first_load with (force)'); await admin.end()
