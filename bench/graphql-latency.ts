/**
 * Latency of the dashboard's main query, `resources(scope, type, first: 100)`, on a scope of
 * N rows (default 1M, loaded straight into Postgres): the first page and a deep page (past
 * 90% of the type's rows), over HTTP to the real server, one request at a time.
 *
 *   node --import tsx bench/graphql-latency.ts [--rows N] [--requests N]
 */
import { parseArgs } from 'node:util'
import pg from 'pg'
import { Redis } from 'ioredis'
import { buildApp } from '../src/app.js'
import { generateKey } from '../src/auth/keys.js'
import { loadConfig } from '../src/config.js'
import { percentile } from './metrics.js'

const { values: opt } = parseArgs({ options: { rows: { type: 'string', default: '1000000' }, requests: { type: 'string', default: '300' } } })
const ROWS = Number(opt.rows)
const REQUESTS = Number(opt.requests)
const ADMIN_URL = process.env.BENCH_PG_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
const DB = 'tally_bench_graphql'

const admin = new pg.Client({ connectionString: ADMIN_URL })
await admin.connect()
await admin.query(`drop database if exists ${DB} with (force)`)
await admin.query(`create database ${DB}`)
const url = new URL(ADMIN_URL)
url.pathname = `/${DB}`
const app = await buildApp(loadConfig({ DATABASE_URL: url.toString(), REDIS_URL, REDIS_KEY_PREFIX: `${DB}:`, LOG_LEVEL: 'warn' }))
const key = generateKey({ tenant: 'default', role: 'reader', createdBy: 'bench' })
await app.db.keys.insert(key.row)
const base = await app.listen({ port: 0, host: '127.0.0.1' })
const db = new pg.Client({ connectionString: url.toString() })
await db.connect()
try {
  const loadStarted = performance.now()
  await db.query(`insert into resources (scope, id, type, region, tags, attributes, content_hash, first_seen_run_id, changed_run_id)
    select 'aws/123456789012', 'arn:aws:ec2:eu-west-1:123456789012:instance/i-' || lpad(to_hex(g), 12, '0'),
           'aws::type-' || (g % 40), 'region-' || (g % 12), jsonb_build_object('team', 'team-' || (g % 8), 'env', 'prod'),
           jsonb_build_object('size', 't3.large', 'n', g), '\\x0000000000000000', 1, 1
    from generate_series(1, $1::int) g`, [ROWS])
  await db.query('analyze resources')
  console.log(`loaded ${ROWS.toLocaleString('en')} rows in ${Math.round(performance.now() - loadStarted)} ms`)

  const type = 'aws::type-7'
  const { rows: [deep] } = await db.query(
    'select id from resources where scope = \'aws/123456789012\' and type = $1 order by id offset (select count(*) * 9 / 10 from resources where type = $1) limit 1', [type])
  const pages = {
    first: null,
    deep: Buffer.from(JSON.stringify([deep.id])).toString('base64url')
  }
  const query = `query ($after: String) { resources(scope: "aws/123456789012", type: "${type}", first: 100, after: $after) {
    edges { cursor node { id type region tags lastChangedAt } } pageInfo { hasNextPage endCursor } } }`
  for (const [name, after] of Object.entries(pages)) {
    const times: number[] = []
    for (let i = 0; i < REQUESTS + 20; i++) {
      const started = performance.now()
      const res = await fetch(`${base}/graphql`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key.key}` }, body: JSON.stringify({ query, variables: { after } }) })
      const body = await res.json() as { data?: { resources: { edges: unknown[] } }, errors?: unknown }
      if (body.errors !== undefined || body.data?.resources.edges.length !== 100) throw new Error(JSON.stringify(body).slice(0, 300))
      if (i >= 20) times.push(performance.now() - started) // the first 20 warm up
    }
    times.sort((a, b) => a - b)
    console.log(`${name} page: p50 ${percentile(times, 0.5).toFixed(1)} ms, p99 ${percentile(times, 0.99).toFixed(1)} ms (${REQUESTS} requests)`)
  }
} finally {
  await db.end()
  await app.close()
  const redis = new Redis(REDIS_URL)
  const keys = await redis.keys(`${DB}:*`)
  if (keys.length > 0) await redis.unlink(...keys)
  await redis.quit()
  await admin.query(`drop database if exists ${DB} with (force)`)
  await admin.end()
}
