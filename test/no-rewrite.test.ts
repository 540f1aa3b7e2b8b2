/** The point of Tally: what did not change is not written. Row identity (xmin, xmax, ctid) proves it. */
import t from 'tap'
import { api, build, cacheBucketKeys, redisClient, resource, rowVersions, sqlClient, type ResourceBody } from './helper.js'

const estate = (n: number): ResourceBody[] => Array.from({ length: n }, (_, i) => resource(`arn:aws:ec2:eu-west-1:1:instance/i-${i}`, {
  name: `web-${i}`,
  tags: { env: 'prod', team: `t${i % 7}` },
  attributes: { size: 't3.micro', disks: [{ gb: 8 }, { gb: i }], nested: { a: 1, b: { c: [1, 2] } } }
}))

t.test('an identical rescan writes no row and reports everything unchanged', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/identical'
  const resources = estate(300)
  await tally.scan(scope, resources, { batch: 100 })
  const before = await rowVersions(db, scope)

  const again = await tally.scan(scope, resources, { batch: 70 })
  t.match(again.stats, { seen: 300, created: 0, updated: 0, unchanged: 300, deleted: 0, batches: 5 })
  t.same(await rowVersions(db, scope), before, 'no row has a new xmin, xmax or ctid')
})

t.test('one changed resource rewrites exactly its row', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/one-change'
  const resources = estate(200)
  const first = await tally.scan(scope, resources)
  const before = await rowVersions(db, scope)

  const changedId = resources[42]!.id
  const next = resources.map((r) => r.id === changedId ? { ...r, tags: { ...r.tags, owner: 'alice' } } : r)
  const second = await tally.scan(scope, next)
  t.match(second.stats, { seen: 200, created: 0, updated: 1, unchanged: 199, deleted: 0 })
  const after = await rowVersions(db, scope)
  const rewritten = [...after].filter(([id, v]) => before.get(id) !== v).map(([id]) => id)
  t.same(rewritten, [changedId])
  const { rows } = await db.query('select tags, changed_run_id, first_seen_run_id from resources where id = $1', [changedId])
  t.same(rows[0], { tags: { env: 'prod', team: 't0', owner: 'alice' }, changed_run_id: String(second.id), first_seen_run_id: String(first.id) })
})

t.test('key order is not a change, at any depth', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/key-order'
  const original = resource('r1', { tags: { a: '1', b: '2' }, attributes: { x: { p: 1, q: [{ m: 1, n: 2 }] }, y: true } })
  await tally.scan(scope, [original])
  const before = await rowVersions(db, scope)
  // Same content, every object's keys in reverse order.
  const reordered = JSON.parse(JSON.stringify(original, (_k, v) =>
    v !== null && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).reverse()) : v))
  t.not(JSON.stringify(reordered), JSON.stringify(original), 'the payload really is ordered differently')
  const second = await tally.scan(scope, [reordered])
  t.match(second.stats, { unchanged: 1, updated: 0 })
  t.same(await rowVersions(db, scope), before)

  // Array order, by contrast, is content.
  const third = await tally.scan(scope, [{ ...original, attributes: { ...original.attributes, x: { p: 1, q: [{ n: 2 }, { m: 1 }] } } }])
  t.match(third.stats, { updated: 1 })
})

t.test('a cold hash cache (Redis hashes flushed between runs) causes no row rewrite', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const redis = redisClient(t)
  const tally = api(app)
  const scope = 'aws/cold-cache'
  const resources = estate(250)
  await tally.scan(scope, resources)
  const before = await rowVersions(db, scope)

  const hashKeys = await cacheBucketKeys(app, redis)
  t.ok(hashKeys.length > 0, 'the hash cache exists before the flush')
  await redis.unlink(...hashKeys)

  const changedId = resources[7]!.id
  const second = await tally.scan(scope, resources.map((r) => r.id === changedId ? { ...r, name: 'renamed' } : r))
  t.match(second.stats, { seen: 250, created: 0, updated: 1, unchanged: 249, deleted: 0 })
  const after = await rowVersions(db, scope)
  t.same([...after].filter(([id, v]) => before.get(id) !== v).map(([id]) => id), [changedId], 'only the changed row is rewritten')
  t.equal((await cacheBucketKeys(app, redis)).length, hashKeys.length, 'misses were written back to the cache')
})

t.test('duplicates inside a batch: the last one wins, counted once', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const opened = await tally.open('aws/dupes')
  const res = await tally.ingest(opened.body.id, [
    resource('a', { name: 'first' }), resource('b'), resource('a', { name: 'last' }), resource('b')
  ])
  t.equal(res.status, 200)
  t.same(res.body, { runId: opened.body.id, received: 4, created: 2, updated: 0, unchanged: 0, duplicate: false })
  const { rows } = await db.query('select id, name from resources order by id')
  t.same(rows, [{ id: 'a', name: 'last' }, { id: 'b', name: null }])
  const done = await tally.complete(opened.body.id)
  t.equal(done.body.stats.seen, 2)
})
