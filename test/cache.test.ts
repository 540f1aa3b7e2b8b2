/**
 * The hash cache is strictly a cache of Postgres: right under every shard count a scope has
 * used, repaired when wrong, and never the reason a row is written, locked or left deleted.
 * Row identity (xmin, xmax, ctid) proves that unchanged rows were not touched.
 */
import t from 'tap'
import type { Redis } from 'ioredis'
import pg from 'pg'
import { api, build, cacheBucketKeys, cacheEntry, liveIds, testEnv, redisClient, resource, rowVersions, sqlClient, waitFor, type App, type ResourceBody } from './helper.js'

const estate = (n: number): ResourceBody[] => Array.from({ length: n }, (_, i) =>
  resource(`arn:aws:ec2:eu-west-1:1:instance/i-${String(i).padStart(4, '0')}`, { attributes: { n: i } }))

/** Overwrites every cached value with one no content has: the cache is wrong for every id. */
async function corruptCache (app: App, redis: Redis): Promise<number> {
  let n = 0
  for (const key of await cacheBucketKeys(app, redis)) {
    const fields = await redis.hkeys(key)
    if (fields.length === 0) continue
    await redis.hset(key, ...fields.flatMap((f) => [f, '12345']))
    n += fields.length
  }
  return n
}

t.test('a wrong cache entry is repaired and costs no write, no lock, no WAL', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const redis = redisClient(t)
  const tally = api(app)
  const scope = 'aws/wrong-cache'
  const resources = estate(200)
  await tally.scan(scope, resources, { batch: 50 })
  const before = await rowVersions(db, scope)

  t.equal(await corruptCache(app, redis), 200, 'every cached hash is now wrong')
  const again = await tally.scan(scope, resources, { batch: 50 })
  t.match(again.stats, { seen: 200, created: 0, updated: 0, unchanged: 200, deleted: 0 })
  t.same(await rowVersions(db, scope), before, 'no row has a new xmin, xmax or ctid: none was written or locked')

  // Repaired: every entry holds the row's hash again.
  const { rows } = await db.query("select id, encode(content_hash, 'hex') as h from resources where scope = $1", [scope])
  const sent = new Map(resources.map((r) => [r.id, r]))
  const entries = await Promise.all(rows.map((r: { id: string, h: string }) => cacheEntry(app, redis, scope, r.id, r.h, sent.get(r.id))))
  t.equal(entries.length, 200)
  t.same(entries.filter((e) => e.cached !== e.expected), [], 'the cache equals Postgres again')
  t.match((await tally.scan(scope, resources, { batch: 50 })).stats, { unchanged: 200 })
  t.same(await rowVersions(db, scope), before)
})

t.test('a resource the run saw is live after shard-count changes (aborted run at another count)', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/reshard-cache'
  const a = resource('A')
  const x = resource('X')
  await tally.scan(scope, [a], { open: { shardCount: 4 } })

  // A run at 16 shards posts A and X, and is aborted.
  const at16 = (await tally.open(scope, { shardCount: 16 })).body.id as number
  t.equal((await tally.ingest(at16, [a, x])).status, 200)
  t.equal((await tally.abort(at16)).status, 200)

  // A run at 4 posts A only: X, written by the aborted run, is an orphan and goes.
  const at4 = await tally.scan(scope, [a], { open: { shardCount: 4 } })
  t.match(at4.stats, { deleted: 1 })
  t.same(await liveIds(db, scope), ['A'])

  // A run at 16 posts A and X again: X must come back.
  const again = await tally.scan(scope, [a, x], { open: { shardCount: 16 } })
  t.match(again.stats, { seen: 2, created: 1, unchanged: 1, deleted: 0 })
  t.same(await liveIds(db, scope), ['A', 'X'], 'X, reported by the run, is live')
})

t.test('identical rescans under another shard count, a cold cache and a wrong cache leave every row untouched', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const redis = redisClient(t)
  const tally = api(app)
  const scope = 'aws/rescans'
  const resources = estate(300)
  await tally.scan(scope, resources, { open: { shardCount: 8 } })
  const before = await rowVersions(db, scope)

  for (const shardCount of [8, 32, 1, 8]) {
    const run = await tally.scan(scope, resources, { open: { shardCount } })
    t.match(run.stats, { seen: 300, unchanged: 300, created: 0, updated: 0, deleted: 0 }, `at ${shardCount} shards`)
    t.same(await rowVersions(db, scope), before, `at ${shardCount} shards: no row touched`)
  }
  const keys = await cacheBucketKeys(app, redis)
  await redis.unlink(...keys)
  t.match((await tally.scan(scope, resources, { open: { shardCount: 16 } })).stats, { unchanged: 300 }, 'cold cache')
  t.same(await rowVersions(db, scope), before, 'cold cache: no row touched')
  await corruptCache(app, redis)
  t.match((await tally.scan(scope, resources, { open: { shardCount: 2 } })).stats, { unchanged: 300 }, 'wrong cache')
  t.same(await rowVersions(db, scope), before, 'wrong cache: no row touched')

  // And a change is still a change, whichever count runs it.
  const changed = resources.map((r, i) => i % 10 === 0 ? { ...r, name: 'renamed' } : r)
  t.match((await tally.scan(scope, changed, { open: { shardCount: 5 } })).stats, { updated: 30, unchanged: 270 })
  const after = await rowVersions(db, scope)
  t.equal([...after].filter(([id, v]) => before.get(id) !== v).length, 30, 'exactly the 30 changed rows were written')
})

t.test('a first load keeps its cache buckets small: a bucket that fills up doubles its shard\'s count', async (t) => {
  const app = await build(t, { DEFAULT_SHARD_COUNT: '4', CACHE_BUCKET_SIZE: '4' })
  const redis = redisClient(t)
  const tally = api(app)
  const scope = 'aws/first-load-cache'
  const resources = estate(600)
  t.match((await tally.scan(scope, resources, { batch: 100 })).stats, { created: 600 })
  const buckets = await cacheBucketKeys(app, redis, scope)
  const sizes = await Promise.all(buckets.map((k) => redis.hlen(k)))
  t.equal(sizes.reduce((a, b) => a + b, 0), 600, 'every resource is cached')
  t.ok(Math.max(...sizes) <= 8, `no bucket holds more than twice CACHE_BUCKET_SIZE (largest: ${Math.max(...sizes)})`)
  t.ok(buckets.length >= 600 / 8, `${buckets.length} buckets`)
  t.match((await tally.scan(scope, resources)).stats, { unchanged: 600 }, 'and every entry is found')
})

t.test('a grown scope moves its cache into more buckets, and deleted ones are forgotten wherever they sit', async (t) => {
  const env = await testEnv(t)
  // First loaded by an instance whose buckets take 64 (128 at most): 75 a cache shard fit in one.
  const first = await build(t, { DEFAULT_SHARD_COUNT: '4' }, env)
  const app = await build(t, { DEFAULT_SHARD_COUNT: '4', CACHE_BUCKET_SIZE: '4' }, env)
  const db = await sqlClient(t, app)
  const redis = redisClient(t)
  const tally = api(app)
  const scope = 'aws/growing-cache'
  const resources = estate(300)
  await api(first).scan(scope, resources)
  t.equal((await cacheBucketKeys(app, redis, scope)).length, 4, 'one bucket per cache shard')
  const before = await rowVersions(db, scope)

  // This instance sizes buckets by the scope (300 / (4 shards × 4) → 32 a shard) and moves
  // what it reads; the ten it does not report stay in the first buckets.
  const gone = new Set(resources.slice(0, 10).map((r) => r.id))
  const second = await tally.scan(scope, resources.filter((r) => !gone.has(r.id)))
  t.match(second.stats, { seen: 290, unchanged: 290, deleted: 10 })
  const shardKeys = await redis.keys(`${app.config.REDIS_KEY_PREFIX}{default/${scope}/*}:cache`)
  t.same(await Promise.all(shardKeys.map((k) => redis.hget(k, 'n'))), ['32', '32', '32', '32'], 'every cache shard grew to 32 buckets')
  t.ok((await cacheBucketKeys(app, redis, scope)).length > 100, 'entries moved to their buckets')
  const { rows } = await db.query("select id, encode(content_hash, 'hex') as h from resources where scope = $1 and deleted_at is null", [scope])
  const sent = new Map(resources.map((r) => [r.id, r]))
  const entries = await Promise.all(rows.map((r: { id: string, h: string }) => cacheEntry(app, redis, scope, r.id, r.h, sent.get(r.id))))
  t.same(entries.filter((e) => e.cached !== e.expected), [], 'every live row is cached where a read looks first')

  // The ten come back: their deletion reached them in the first buckets, so they are created
  // again (an entry forgotten there would have answered "unchanged" and left them deleted).
  const third = await tally.scan(scope, resources)
  t.match(third.stats, { seen: 300, created: 10, unchanged: 290, deleted: 0 })
  t.equal((await liveIds(db, scope)).length, 300, 'all 300 live again')
  const after = await rowVersions(db, scope)
  t.same([...after].filter(([id, v]) => before.get(id) !== v).map(([id]) => id).sort(), [...gone].sort(), 'only the ten revived rows were written')
})

t.test('the cache of earlier versions (one hash of id → content hash per shard) is dropped when a shard is first read', async (t) => {
  const app = await build(t, { DEFAULT_SHARD_COUNT: '4' })
  const redis = redisClient(t)
  const tally = api(app)
  const scope = 'aws/old-cache'
  const legacy = [0, 1, 2, 3].map((k) => `${app.config.REDIS_KEY_PREFIX}{default/${scope}/${k}}:hash`)
  for (const key of legacy) await redis.hset(key, '', '7', 'some-id', '0123456789abcdef')
  const resources = estate(100)
  t.match((await tally.scan(scope, resources)).stats, { created: 100 })
  t.equal(await redis.exists(...legacy), 0, 'the old cache is gone')
  t.match((await tally.scan(scope, resources)).stats, { unchanged: 100 })
})

t.test('two batches of one run with one id: the one that read Postgres before the other wrote cannot fill the cache, even when the writer dies', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/twin-batches'
  const x = (state: string) => resource('X', { attributes: { state } })
  await tally.scan(scope, [x('running')])
  const run = (await tally.open(scope)).body.id as number
  const waiting = async (query: string) => (await db.query(`select pid from pg_stat_activity
    where datname = current_database() and wait_event_type = 'Lock' and query like $1`, [query])).rows.map((r: { pid: number }) => r.pid)

  // A reports X stopped: it claims X in the cache and waits for X's row to write it.
  const rowLock = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await rowLock.connect()
  t.teardown(() => rowLock.end())
  await rowLock.query('begin')
  await rowLock.query("select 1 from resources where scope = $1 and id = 'X' for update", [scope])
  const a = tally.ingest(run, [x('stopped')])
  await waitFor(t, "A's write waits for X's row", async () => (await waiting('%with fence as%')).length === 1)
  // B reports X running, as Postgres still has it: unchanged, and acknowledged; its fill must not
  // land, as A may be writing (it holds the field's claim).
  t.match((await tally.ingest(run, [x('running')])).body, { unchanged: 1 })
  // A writes, then dies before its fill: its witness waits, and its connection is cut.
  const acks = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await acks.connect()
  t.teardown(() => acks.end())
  await acks.query('begin')
  await acks.query('lock table run_acks in share mode')
  await rowLock.query('commit')
  await waitFor(t, 'A wrote, and waits for its witness', async () => (await waiting('insert into "run_acks"%')).length === 1)
  await db.query('select pg_terminate_backend(pid) from unnest($1::int[]) as pid', [await waiting('insert into "run_acks"%')])
  t.equal((await a).status, 503, 'A died after its write')
  await acks.query('rollback')
  t.equal((await db.query("select attributes->>'state' as s from resources where id = 'X'")).rows[0].s, 'stopped', 'Postgres holds what A wrote')
  t.equal((await tally.abort(run)).status, 200)

  // The next scan reports X running: Postgres says stopped, so that is a change.
  const next = await tally.scan(scope, [x('running')])
  t.match(next.stats, { updated: 1, unchanged: 0 }, 'the next scan writes X back')
  t.equal((await db.query("select attributes->>'state' as s from resources where id = 'X'")).rows[0].s, 'running')
})
