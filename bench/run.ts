/**
 * `npm run bench`: Tally against the naive last-seen design, side by side in one run, both
 * driven over HTTP on loopback by the same scanner simulation. See BENCHMARKS.md.
 *
 *   --resources N (100000) --scans K (4) --batch N (1000) --concurrency N (4)
 *   --churn changed,new,vanished (0.08,0.01,0.01) --only tally|naive --seed N (1)
 *   --json FILE --chart FILE.png --database NAME (tally_bench) --stats-wait MS (11000)
 *   --instances N (1): server processes per design, sharing Postgres and Redis; batches go round-robin
 *   --profile DIR: the servers write V8 CPU profiles there (open in Chrome DevTools)
 *   --cluster: Tally on a private Redis Cluster (3 primaries, 3 replicas) started for the run;
 *     Redis bytes are summed over the primaries
 *   --ndjson: Tally's batches as NDJSON (one resource per line), the naive design's as JSON
 *   --naive-bare: the naive table gets its primary key only; by default it has the indexes a
 *     dashboard needs (type, region, recency, tags), as Tally's table has, so both designs pay
 *     index upkeep for every row they write
 *   --reorder: a scanner whose key order changes on every scan (the resource's keys, its tags' and
 *     its attributes' rotated by the scan number): no resource is sent byte for byte as before,
 *     so Tally parses each one and compares contents (its fallback path)
 */
import getPort from 'get-port'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os, { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { Cluster, Redis } from 'ioredis'
import { startCluster } from '../scripts/redis-cluster.js'
import { clusterNodes } from '../src/config.js'
import pg from 'pg'
import { Pool } from 'undici'
import { renderChart } from './chart.js'
import { makeResource, ScanSimulator, type Scan } from './estate.js'
import { percentile, postgresCpuSec, processUsage, redisCpuSec, redisUsedMemory, tableCounters, walAndXid } from './metrics.js'

const { values: opt } = parseArgs({
  options: {
    resources: { type: 'string', default: '100000' },
    scans: { type: 'string', default: '4' },
    batch: { type: 'string', default: '1000' },
    concurrency: { type: 'string', default: '4' },
    churn: { type: 'string', default: '0.08,0.01,0.01' },
    only: { type: 'string' },
    seed: { type: 'string', default: '1' },
    json: { type: 'string' },
    chart: { type: 'string' },
    database: { type: 'string', default: 'tally_bench' },
    'stats-wait': { type: 'string', default: '11000' },
    profile: { type: 'string' },
    instances: { type: 'string', default: '1' },
    cluster: { type: 'boolean', default: false },
    ndjson: { type: 'boolean', default: false },
    'naive-bare': { type: 'boolean', default: false },
    reorder: { type: 'boolean', default: false }
  }
})
const [changed, added, vanished] = opt.churn.split(',').map(Number)
const config = {
  resources: Number(opt.resources),
  scans: Number(opt.scans),
  batch: Number(opt.batch),
  concurrency: Number(opt.concurrency),
  instances: Number(opt.instances),
  churn: { changed: changed ?? 0.08, added: added ?? 0.01, vanished: vanished ?? 0.01 },
  seed: Number(opt.seed),
  designs: opt.only === undefined ? ['tally', 'naive'] : [opt.only],
  // Postgres backends publish their table counters at most once a second, at the latest after
  // 10 s idle: the wait after each scan lets pg_stat_user_tables catch up.
  statsWaitMs: Number(opt['stats-wait'])
}
if (!config.designs.every((d) => d === 'tally' || d === 'naive')) throw new Error('--only takes tally or naive')
const ACCOUNT = '123456789012'
const SCOPE = `aws/${ACCOUNT}`
const ADMIN_URL = process.env.BENCH_PG_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
// --cluster: Tally on a private Redis Cluster of 3 primaries and 3 replicas started here.
const teardowns: Array<() => unknown> = []
const cluster = opt.cluster ? await startCluster({ teardown: (fn) => teardowns.push(fn) }) : undefined
const redisEnv = cluster === undefined ? { REDIS_URL } : { REDIS_CLUSTER_NODES: cluster.seeds }
const REDIS_PREFIX = `${opt.database}:`
const TABLE = { tally: 'resources', naive: 'naive_resources' } as const
type Design = keyof typeof TABLE

export interface ScanResult {
  scan: number
  resources: number
  changed: number
  added: number
  vanished: number
  wallMs: number
  resourcesPerSec: number
  p50BatchMs: number
  p99BatchMs: number
  completeMs: number
  rowsInserted: number
  rowsUpdated: number
  rowsDeleted: number
  rowsWritten: number
  walBytes: number
  xids: number
  deadTuples: number
  redisBytesPerResource: number | null
  /** Redis bytes per resource once every batch is in, before the completion: both runs' sets and the cache. */
  redisBytesDuringScan: number | null
  serverRssMb: number
  serverCpuSec: number
  /** Server CPU (all of the design's processes) per resource of the scan, µs. */
  serverCpuUsPerResource: number
  /** PostgreSQL's CPU for the scan, all its processes, including the checkpoint that writes its pages; null if not local. */
  postgresCpuSec: number | null
  /** Redis's CPU for the scan (the naive design's is the idle server's). */
  redisCpuSec: number
  /** Server, Postgres and Redis CPU per resource of the scan, µs (what the design costs to run); null if Postgres is not local. */
  totalCpuUsPerResource: number | null
  stats: unknown
}

interface Instance { child: ChildProcess, http: Pool }

// The servers' DATA_DIR: the first Tally instance writes its admin key there (a fresh database has none).
const dataDir = await mkdtemp(join(tmpdir(), 'tally-bench-data-'))
let apiKey = ''
interface Server { design: Design, instances: Instance[] }

async function startInstance (design: Design, databaseUrl: string): Promise<Instance> {
  const port = await getPort({ host: '127.0.0.1' })
  const script = design === 'tally' ? 'src/server.ts' : 'bench/naive/server.ts'
  const profile = opt.profile === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${opt.profile}`]
  const child = spawn(process.execPath, [...profile, '--import', 'tsx', script], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      ...redisEnv,
      REDIS_KEY_PREFIX: REDIS_PREFIX,
      PORT: String(port),
      HOST: '127.0.0.1',
      LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
      DATA_DIR: dataDir,
      NAIVE_INDEXES: opt['naive-bare'] ? '0' : '1',
      // Counted like in production (a Redis call per request), never reached.
      RATE_LIMIT_MAX: '1000000000'
    }
  })
  const base = `http://127.0.0.1:${port}`
  for (const deadline = Date.now() + 30_000; ; await sleep(100)) {
    if (child.exitCode !== null) throw new Error(`${design} server exited with ${child.exitCode}`)
    const ok = await fetch(`${base}/readyz`).then((r) => r.ok, () => false)
    if (ok) break
    if (Date.now() > deadline) throw new Error(`${design} server did not become ready`)
  }
  if (design === 'tally' && apiKey === '') apiKey = (await readFile(join(dataDir, 'admin.key'), 'utf8')).trim()
  return { child, http: new Pool(base, { connections: config.concurrency }) }
}

async function startServer (design: Design, databaseUrl: string): Promise<Server> {
  const instances: Instance[] = []
  // One after the other: the first applies the migrations.
  for (let i = 0; i < config.instances; i++) instances.push(await startInstance(design, databaseUrl))
  return { design, instances }
}

async function stopServer (server: Server): Promise<void> {
  await Promise.all(server.instances.map(async ({ child, http }) => {
    await http.close()
    if (child.exitCode !== null) return
    child.kill('SIGTERM')
    await once(child, 'exit')
  }))
}

async function post (instance: Instance, path: string, body: Buffer | string, type = 'application/json'): Promise<{ status: number, json: any }> {
  const res = await instance.http.request({ method: 'POST', path, headers: { 'content-type': type, authorization: `Bearer ${apiKey}` }, body })
  const text = await res.body.text()
  return { status: res.statusCode, json: text === '' ? null : JSON.parse(text) }
}

/** CPU seconds and RSS summed over a design's server processes. */
async function usage (server: Server) {
  const all = await Promise.all(server.instances.map(({ child }) => processUsage(child.pid!)))
  return { cpuSec: all.reduce((n, u) => n + u.cpuSec, 0), rssMb: all.reduce((n, u) => n + u.rssMb, 0) }
}

/** With --ndjson, Tally's batches are NDJSON. */
const ndjsonFor = (design: Design) => opt.ndjson && design === 'tally'

/** An object with its keys rotated by `n` places (the same content, other bytes). */
function rotated<T extends object> (value: T, n: number): T {
  const entries = Object.entries(value)
  const k = n % Math.max(1, entries.length)
  return Object.fromEntries([...entries.slice(k), ...entries.slice(0, k)]) as T
}

function batchBodies (scan: Scan, scanNo: number, ndjson: boolean): Buffer[] {
  const bodies: Buffer[] = []
  for (let i = 0; i < scan.indices.length; i += config.batch) {
    const resources = []
    for (let k = i; k < Math.min(i + config.batch, scan.indices.length); k++) {
      const r = makeResource(config.seed, ACCOUNT, scan.indices[k]!, scan.versions[k]!)
      resources.push(opt.reorder ? rotated({ ...r, tags: rotated(r.tags, scanNo), attributes: rotated(r.attributes, scanNo) }, scanNo) : r)
    }
    bodies.push(Buffer.from(ndjson ? resources.map((r) => JSON.stringify(r)).join('\n') : JSON.stringify({ resources })))
  }
  return bodies
}

async function runScan (server: Server, db: pg.Client, redis: Redis | Cluster, scanNo: number, scan: Scan, bodies: Buffer[], redisBase: number): Promise<ScanResult> {
  const table = TABLE[server.design]
  // Every scan starts right after a checkpoint, so each pays the same full-page images and
  // none inherits the other design's pending WAL.
  await db.query('checkpoint')
  // One query at a time on the client (pg 8 deprecates overlapping ones).
  const c0 = await tableCounters(db, table)
  const w0 = await walAndXid(db)
  const pg0 = await postgresCpuSec(db)
  const [p0, r0] = await Promise.all([usage(server), redisCpuSec(redis)])
  const first = server.instances[0]!

  const started = performance.now()
  const opened = await post(first, '/runs', JSON.stringify({ scope: SCOPE }))
  if (opened.status !== 201) throw new Error(`open: ${opened.status} ${JSON.stringify(opened.json)}`)
  const runId = opened.json.id
  const latencies: number[] = []
  let next = 0
  await Promise.all(Array.from({ length: config.concurrency }, async () => {
    while (next < bodies.length) {
      const instance = server.instances[next % server.instances.length]!
      const body = bodies[next++]!
      const t0 = performance.now()
      const res = await post(instance, `/runs/${runId}/resources`, body, ndjsonFor(server.design) ? 'application/x-ndjson' : 'application/json')
      latencies.push(performance.now() - t0)
      if (res.status !== 200) throw new Error(`batch: ${res.status} ${JSON.stringify(res.json)}`)
    }
  }))
  const ingested = performance.now()
  // Both runs' sets and the cache, before the completion drops the old baseline's sets.
  const memoryDuring = server.design === 'tally' ? await redisUsedMemory(redis) : 0
  const completing = performance.now()
  const done = await post(first, `/runs/${runId}/complete`, '{}')
  if (done.status !== 200) throw new Error(`complete: ${done.status} ${JSON.stringify(done.json)}`)
  const finished = performance.now()
  const [p1, r1] = await Promise.all([usage(server), redisCpuSec(redis)])
  const w1 = await walAndXid(db)
  // The scan's dirty pages are written by a checkpoint: its cost is the scan's, not the next one's.
  await db.query('checkpoint')
  const pg1 = await postgresCpuSec(db)
  const usedMemory = server.design === 'tally' ? await redisUsedMemory(redis) : 0

  await sleep(config.statsWaitMs)
  const c1 = await tableCounters(db, table)
  latencies.sort((a, b) => a - b)
  const wallMs = (ingested - started) + (finished - completing)
  const rows = { rowsInserted: c1.inserted - c0.inserted, rowsUpdated: c1.updated - c0.updated, rowsDeleted: c1.deleted - c0.deleted }
  return {
    scan: scanNo,
    resources: scan.indices.length,
    changed: scan.changed,
    added: scan.added,
    vanished: scan.vanished,
    wallMs: Math.round(wallMs),
    resourcesPerSec: Math.round(scan.indices.length / (wallMs / 1000)),
    p50BatchMs: Math.round(percentile(latencies, 0.5) * 10) / 10,
    p99BatchMs: Math.round(percentile(latencies, 0.99) * 10) / 10,
    completeMs: Math.round(finished - completing),
    ...rows,
    rowsWritten: rows.rowsInserted + rows.rowsUpdated + rows.rowsDeleted,
    walBytes: w1.wal - w0.wal,
    xids: w1.xid - w0.xid,
    deadTuples: c1.dead,
    redisBytesPerResource: server.design === 'tally' ? Math.round((usedMemory - redisBase) / scan.indices.length) : null,
    redisBytesDuringScan: server.design === 'tally' ? Math.round((memoryDuring - redisBase) / scan.indices.length) : null,
    serverRssMb: p1.rssMb,
    serverCpuSec: Math.round((p1.cpuSec - p0.cpuSec) * 100) / 100,
    serverCpuUsPerResource: Math.round((p1.cpuSec - p0.cpuSec) * 1e6 / scan.indices.length * 10) / 10,
    postgresCpuSec: pg0 === null || pg1 === null ? null : Math.round((pg1 - pg0) * 100) / 100,
    redisCpuSec: Math.round((r1 - r0) * 100) / 100,
    totalCpuUsPerResource: pg0 === null || pg1 === null ? null : Math.round((p1.cpuSec - p0.cpuSec + pg1 - pg0 + r1 - r0) * 1e6 / scan.indices.length * 10) / 10,
    stats: done.json.stats
  }
}

/** Totals over the steady-state scans (all but the first, which loads everything). */
function steady (scans: ScanResult[]) {
  const s = scans.slice(1)
  const sum = (f: (r: ScanResult) => number) => s.reduce((n, r) => n + f(r), 0)
  return {
    resourcesPerSec: sum((r) => r.wallMs) === 0 ? 0 : sum((r) => r.resources) / (sum((r) => r.wallMs) / 1000),
    rowsWritten: sum((r) => r.rowsWritten),
    walBytes: sum((r) => r.walBytes),
    postgresCpuSec: s.some((r) => r.postgresCpuSec === null) ? 0 : sum((r) => r.postgresCpuSec ?? 0),
    serverCpuUsPerResource: sum((r) => r.serverCpuSec) * 1e6 / Math.max(1, sum((r) => r.resources)),
    totalCpuUsPerResource: s.some((r) => r.postgresCpuSec === null) ? 0 : sum((r) => r.serverCpuSec + (r.postgresCpuSec ?? 0) + r.redisCpuSec) * 1e6 / Math.max(1, sum((r) => r.resources))
  }
}

const ratio = (a: number, b: number) => b === 0 ? null : Math.round((a / b) * 100) / 100

function printTable (results: Record<Design, ScanResult[]>) {
  const cols: Array<[string, (r: ScanResult) => string | number]> = [
    ['scan', (r) => r.scan], ['res/s', (r) => r.resourcesPerSec], ['wall ms', (r) => r.wallMs],
    ['p50 ms', (r) => r.p50BatchMs], ['p99 ms', (r) => r.p99BatchMs], ['complete ms', (r) => r.completeMs],
    ['ins', (r) => r.rowsInserted], ['upd', (r) => r.rowsUpdated], ['del', (r) => r.rowsDeleted],
    ['WAL MB', (r) => (r.walBytes / 1e6).toFixed(1)], ['xids', (r) => r.xids], ['dead', (r) => r.deadTuples],
    ['redis B/res', (r) => r.redisBytesPerResource ?? '-'], ['during', (r) => r.redisBytesDuringScan ?? '-'], ['rss MB', (r) => r.serverRssMb], ['cpu s', (r) => r.serverCpuSec],
    ['cpu µs/res', (r) => r.serverCpuUsPerResource], ['pg cpu s', (r) => r.postgresCpuSec ?? '-'], ['redis cpu s', (r) => r.redisCpuSec],
    ['total µs/res', (r) => r.totalCpuUsPerResource ?? '-']
  ]
  for (const design of Object.keys(results) as Design[]) {
    console.log(`\n${design}`)
    const rows = [cols.map(([h]) => h), ...results[design].map((r) => cols.map(([, f]) => String(f(r))))]
    const widths = cols.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)))
    for (const row of rows) console.log(row.map((cell, i) => cell.padStart(widths[i]!)).join('  '))
  }
}

const admin = new pg.Client({ connectionString: ADMIN_URL })
await admin.connect()
await admin.query(`drop database if exists ${opt.database} with (force)`)
await admin.query(`create database ${opt.database}`)
const dbUrl = new URL(ADMIN_URL)
dbUrl.pathname = `/${opt.database}`
const db = new pg.Client({ connectionString: dbUrl.toString() })
await db.connect()
const redis = cluster === undefined ? new Redis(REDIS_URL) : new Cluster(clusterNodes(cluster.seeds))
redis.on('error', (err) => console.error(`bench redis client: ${err.message}`))
// A cluster client knows its primaries once it has read the slots.
if (redis instanceof Cluster) await once(redis, 'ready')
const clearRedis = async () => {
  if (redis instanceof Cluster) return // a cluster of its own, gone with the run
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${REDIS_PREFIX}*`, 'COUNT', 1000)
    if (keys.length > 0) await redis.unlink(...keys)
    cursor = next
  } while (cursor !== '0')
}
await clearRedis()
const redisBase = await redisUsedMemory(redis)

const servers: Server[] = []
const results = {} as Record<Design, ScanResult[]>
try {
  for (const design of config.designs as Design[]) {
    servers.push(await startServer(design, dbUrl.toString()))
    results[design] = []
  }
  const simulator = new ScanSimulator(config.seed, config.resources, config.churn)
  for (let k = 1; k <= config.scans; k++) {
    const scan = simulator.nextScan()
    const bodies = new Map<boolean, Buffer[]>()
    for (const server of servers) {
      const ndjson = ndjsonFor(server.design)
      if (!bodies.has(ndjson)) bodies.set(ndjson, batchBodies(scan, k, ndjson))
      const r = await runScan(server, db, redis, k, scan, bodies.get(ndjson)!, redisBase)
      results[server.design].push(r)
      console.error(`${server.design} scan ${k}: ${r.resourcesPerSec} resources/s, ${r.rowsWritten} rows written, ${(r.walBytes / 1e6).toFixed(1)} MB WAL`)
    }
  }
} finally {
  for (const server of servers) await stopServer(server)
  await db.end()
  await clearRedis()
  await redis.quit()
  for (const teardown of teardowns.reverse()) await teardown()
  await rm(dataDir, { recursive: true, force: true })
  await admin.query(`drop database if exists ${opt.database} with (force)`)
  await admin.end()
}

printTable(results)
const t = results.tally === undefined ? undefined : steady(results.tally)
const n = results.naive === undefined ? undefined : steady(results.naive)
const ratios = t !== undefined && n !== undefined
  ? {
      rowsWritten: ratio(n.rowsWritten, t.rowsWritten),
      walBytes: ratio(n.walBytes, t.walBytes),
      resourcesPerSec: ratio(t.resourcesPerSec, n.resourcesPerSec),
      postgresCpu: ratio(n.postgresCpuSec, t.postgresCpuSec),
      serverCpuPerResource: ratio(n.serverCpuUsPerResource, t.serverCpuUsPerResource),
      totalCpuPerResource: ratio(n.totalCpuUsPerResource, t.totalCpuUsPerResource),
      firstScanResourcesPerSec: ratio(results.tally[0]!.resourcesPerSec, results.naive[0]!.resourcesPerSec)
    }
  : null
if (ratios !== null) {
  console.log(`\nsteady state (scans 2–${config.scans}): naive/tally rows written ${ratios.rowsWritten}×, WAL ${ratios.walBytes}×, ` +
    `Postgres CPU ${ratios.postgresCpu ?? '-'}×, server CPU per resource ${ratios.serverCpuPerResource}×, ` +
    `total CPU per resource (server + Postgres + Redis) ${ratios.totalCpuPerResource ?? '-'}×; tally/naive resources/s ${ratios.resourcesPerSec}×` +
    `\nfirst scan: tally/naive resources/s ${ratios.firstScanResourcesPerSec}×`)
}
const machine = {
  cpus: os.cpus().length,
  cpuModel: os.cpus()[0]?.model ?? 'unknown',
  memoryGb: Math.round(os.totalmem() / 2 ** 30),
  node: process.version,
  postgres: (await (async () => {
    const c = new pg.Client({ connectionString: ADMIN_URL })
    await c.connect()
    const { rows } = await c.query('show server_version')
    await c.end()
    return rows[0].server_version
  })()),
  redis: await (async () => {
    const r = new Redis(REDIS_URL)
    const info = await r.info('server')
    await r.quit()
    return /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown'
  })()
}
const { designs: _designs, ...configOut } = { ...config, cluster: opt.cluster ?? false, ndjson: opt.ndjson ?? false, naiveIndexes: !(opt['naive-bare'] ?? false), reorder: opt.reorder ?? false }
if (opt.json !== undefined) {
  await writeFile(opt.json, JSON.stringify({ config: { ...configOut, only: opt.only ?? null }, machine, tally: results.tally ?? [], naive: results.naive ?? [], ratios }, null, 2))
}
if (opt.chart !== undefined) {
  const points = (f: (r: ScanResult) => number) => (Object.keys(results) as Design[])
    .flatMap((design) => results[design].map((r) => ({ scan: r.scan, design, value: f(r) })))
  await renderChart(opt.chart, `${config.resources.toLocaleString('en')} resources, ${config.scans} scans (scan 1 loads, later ones ~${Math.round(100 * (1 - config.churn.changed - config.churn.added - config.churn.vanished))}% unchanged)`, [
    { title: 'resources / s', points: points((r) => r.resourcesPerSec) },
    { title: 'rows written', points: points((r) => r.rowsWritten) },
    { title: 'WAL (MB)', points: points((r) => r.walBytes / 1e6) }
  ])
}
