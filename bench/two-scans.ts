/**
 * A 100k-resource scope scanned twice over HTTP, the second scan 90% unchanged (8% changed,
 * 1% new, 1% vanished). Prints resources/s per scan and what the second scan wrote.
 * A quick check of the core, not the full benchmark: `node --import tsx bench/two-scans.ts
 * [--resources N] [--batch N] [--concurrency N]`. Uses its own database and Redis prefix.
 */
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { Redis } from 'ioredis'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'

const { values: args } = parseArgs({
  options: {
    resources: { type: 'string', default: '100000' },
    batch: { type: 'string', default: '1000' },
    concurrency: { type: 'string', default: '4' }
  }
})
const N = Number(args.resources)
const BATCH = Number(args.batch)
const CONCURRENCY = Number(args.concurrency)
const ADMIN_URL = process.env.BENCH_PG_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
const DB = 'tally_bench_two_scans'
const PREFIX = 'tally-bench-two-scans:'

interface Res { id: string, type: string, name: string, region: string, tags: Record<string, string>, attributes: Record<string, unknown> }

function makeResource (i: number, version = 0): Res {
  const region = ['us-east-1', 'eu-west-1', 'ap-southeast-2'][i % 3]!
  return {
    id: `arn:aws:ec2:${region}:123456789012:instance/i-${i.toString(16).padStart(17, '0')}`,
    type: 'aws::ec2::instance',
    name: `web-${i}`,
    region,
    tags: { env: i % 2 ? 'prod' : 'staging', team: `team-${i % 13}`, costCenter: `cc-${i % 101}`, version: String(version) },
    attributes: {
      instanceType: 't3.large',
      state: { code: 16, name: 'running' },
      networkInterfaces: [{ id: `eni-${i}`, privateIp: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, securityGroups: ['sg-1', 'sg-2'] }],
      blockDevices: [{ device: '/dev/xvda', volumeId: `vol-${i}`, sizeGb: 8 + (i % 100) }],
      launchTime: '2026-01-01T00:00:00Z',
      metadata: { description: 'x'.repeat(400) }
    }
  }
}

async function post (base: string, path: string, body: unknown): Promise<any> {
  const res = await fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const json = await res.json()
  if (!res.ok) throw new Error(`${path}: ${res.status} ${JSON.stringify(json)}`)
  return json
}

async function scan (base: string, resources: Res[]) {
  const started = performance.now()
  const run = await post(base, '/runs', { scope: 'aws/123456789012' })
  const batches: string[] = []
  for (let i = 0; i < resources.length; i += BATCH) batches.push(JSON.stringify({ resources: resources.slice(i, i + BATCH) }))
  let next = 0
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < batches.length) {
      const body = batches[next++]!
      const res = await fetch(`${base}/runs/${run.id}/resources`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
      if (!res.ok) throw new Error(`batch: ${res.status} ${await res.text()}`)
      await res.arrayBuffer()
    }
  }))
  const ingested = performance.now()
  const done = await post(base, `/runs/${run.id}/complete`, {})
  const finished = performance.now()
  return { run: done, ingestMs: ingested - started, completeMs: finished - ingested, totalMs: finished - started }
}

async function tableStats (db: pg.Client) {
  // Backends report their counters at most once a second and at the latest when idle 10 s.
  await sleep(11_000)
  const { rows } = await db.query("select n_tup_ins::int as ins, n_tup_upd::int as upd, n_tup_del::int as del from pg_stat_user_tables where relname = 'resources'")
  return rows[0] as { ins: number, upd: number, del: number }
}

const admin = new pg.Client({ connectionString: ADMIN_URL })
await admin.connect()
await admin.query(`drop database if exists ${DB} with (force)`)
await admin.query(`create database ${DB}`)
const dbUrl = new URL(ADMIN_URL)
dbUrl.pathname = `/${DB}`
const redis = new Redis(REDIS_URL)
const clearRedis = async () => { const k = await redis.keys(`${PREFIX}*`); if (k.length) await redis.unlink(...k) }
await clearRedis()

const app = await buildApp(loadConfig({ DATABASE_URL: dbUrl.toString(), REDIS_URL, REDIS_KEY_PREFIX: PREFIX, LOG_LEVEL: 'warn', PORT: '0' }))
const base = await app.listen({ port: 0, host: '127.0.0.1' })
const db = new pg.Client({ connectionString: dbUrl.toString() })
await db.connect()

try {
  const first = Array.from({ length: N }, (_, i) => makeResource(i))
  const s1 = await scan(base, first)
  const before = await tableStats(db)

  // Second scan: drop the first 1%, change the next 8%, add 1% new.
  const vanish = Math.round(N * 0.01)
  const change = Math.round(N * 0.08)
  const second = [
    ...first.slice(vanish, vanish + change).map((r, k) => makeResource(vanish + k, 1)),
    ...first.slice(vanish + change),
    ...Array.from({ length: vanish }, (_, k) => makeResource(N + k))
  ]
  const s2 = await scan(base, second)
  const after = await tableStats(db)

  const rate = (s: typeof s1, n: number) => Math.round(n / (s.totalMs / 1000))
  console.log(`resources: ${N}, batch ${BATCH}, concurrency ${CONCURRENCY}`)
  console.log('scan | resources/s (end to end) | ingest ms | complete ms | created | updated | unchanged | deleted')
  for (const [name, s, n] of [['1', s1, first.length], ['2', s2, second.length]] as const) {
    const st = s.run.stats
    console.log(`${name} | ${rate(s, n)} | ${Math.round(s.ingestMs)} | ${Math.round(s.completeMs)} | ${st.created} | ${st.updated} | ${st.unchanged} | ${st.deleted}`)
  }
  const written = (after.ins - before.ins) + (after.upd - before.upd) + (after.del - before.del)
  console.log(`second scan, pg_stat_user_tables(resources) delta: inserted ${after.ins - before.ins}, updated ${after.upd - before.upd} (includes ${s2.run.stats.deleted} soft deletes), deleted ${after.del - before.del}`)
  console.log(`rows written by the second scan: ${written} of ${second.length} resources seen (${(100 * written / second.length).toFixed(1)}%)`)
} finally {
  await db.end()
  await app.close()
  await clearRedis()
  await redis.quit()
  await admin.query(`drop database if exists ${DB} with (force)`)
  await admin.end()
}
