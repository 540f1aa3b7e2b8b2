/**
 * The hash cache is strictly a cache of Postgres: right under every shard count a scope has
 * used, repaired when wrong, and never the reason a row is written, locked or left deleted.
 * Row identity (xmin, xmax, ctid) proves that unchanged rows were not touched.
 */
import t from 'tap'
import type { Redis } from 'ioredis'
import { api, build, liveIds, redisClient, resource, rowVersions, sqlClient, type App, type ResourceBody } from './helper.js'

const estate = (n: number): ResourceBody[] => Array.from({ length: n }, (_, i) =>
  resource(`arn:aws:ec2:eu-west-1:1:instance/i-${String(i).padStart(4, '0')}`, { attributes: { n: i } }))

/** Every cache hash of the app's prefix (whatever its naming), and the ids it holds. */
async function cacheKeys (app: App, redis: Redis): Promise<string[]> {
  return (await redis.keys(`${app.config.REDIS_KEY_PREFIX}*`)).filter((k) => /:hash(:|$)/.test(k))
}

/** Overwrites every cached hash with a value no content has: the cache is wrong for every id. */
async function corruptCache (app: App, redis: Redis): Promise<number> {
  let n = 0
  for (const key of await cacheKeys(app, redis)) {
    const ids = (await redis.hkeys(key)).filter((f) => f !== '' && f !== '!')
    if (ids.length === 0) continue
    await redis.hset(key, ...ids.flatMap((id) => [id, '00000000deadbeef']))
    n += ids.length
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
  const stored = new Map(rows.map((r: { id: string, h: string }) => [r.id, r.h]))
  const cached = new Map<string, string>()
  for (const key of await cacheKeys(app, redis)) {
    for (const [id, h] of Object.entries(await redis.hgetall(key))) if (id !== '') cached.set(id, h)
  }
  t.same(new Map([...cached].sort()), new Map([...stored].sort()), 'the cache equals Postgres again')
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
  const keys = await cacheKeys(app, redis)
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
