/** Completion: the guard, revival, abort, and the paths that diff without the baseline's sets. */
import t from 'tap'
import { createKeys } from '../src/reconcile/keys.js'
import { api, build, liveIds, redisClient, resource, seenMember, sqlClient } from './helper.js'

const ids = (n: number, from = 0) => Array.from({ length: n }, (_, i) => `r-${String(i + from).padStart(4, '0')}`)

t.test('the mass-deletion guard refuses, keeps the run open, and force passes', async (t) => {
  const app = await build(t, { GUARD_MIN_BASELINE: '50' })
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/guard'
  await tally.scan(scope, ids(200).map((id) => resource(id)))

  // A half-failed scan: only 60 of 200 seen, 70% would vanish.
  const opened = await tally.open(scope)
  const runId = opened.body.id
  await tally.ingest(runId, ids(60).map((id) => resource(id)))
  const refused = await tally.complete(runId)
  t.equal(refused.status, 422)
  t.equal(refused.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.match(refused.body, {
    code: 'mass_deletion_guard',
    status: 422,
    stale: 140,
    baseline: 200,
    byType: [{ type: 'aws::ec2::instance', count: 140 }],
    described: 140,
    sample: ids(20, 60)
  }, 'the reply says what it holds back: counts by type and a sample of ids')
  t.equal((await liveIds(db, scope)).length, 200, 'nothing deleted')
  t.equal((await tally.get(runId)).body.status, 'open', 'the run stays open')

  // Still open: the scanner can send what it missed, or decide to force.
  const more = await tally.ingest(runId, ids(10, 60).map((id) => resource(id)))
  t.equal(more.status, 200, 'batches are accepted again after a refusal')
  t.equal((await tally.complete(runId, { maxDeleteRatio: 0.9 })).status, 200, 'a per-call ratio can allow it')
  t.equal((await liveIds(db, scope)).length, 70)

  const next = await tally.open(scope)
  await tally.ingest(next.body.id, ids(5).map((id) => resource(id)))
  t.equal((await tally.complete(next.body.id)).status, 422)
  const forced = await tally.complete(next.body.id, { force: true })
  t.equal(forced.status, 200)
  t.equal(forced.body.stats.deleted, 65)
  t.same(await liveIds(db, scope), ids(5))
})

t.test('below GUARD_MIN_BASELINE the guard does not apply', async (t) => {
  const app = await build(t, { GUARD_MIN_BASELINE: '100' })
  const tally = api(app)
  await tally.scan('aws/small', ids(10).map((id) => resource(id)))
  const second = await tally.scan('aws/small', ids(1).map((id) => resource(id)))
  t.equal(second.stats.deleted, 9)
})

t.test('a resource deleted then reappearing comes back to life', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/revive'
  const first = await tally.scan(scope, [resource('a'), resource('b')])
  const second = await tally.scan(scope, [resource('a')])
  t.equal(second.stats.deleted, 1)
  t.same(await liveIds(db, scope), ['a'])

  // Same content as before its deletion: still a write, since the row must come back.
  const third = await tally.scan(scope, [resource('a'), resource('b')])
  t.match(third.stats, { created: 1, unchanged: 1, deleted: 0 })
  t.same(await liveIds(db, scope), ['a', 'b'])
  const { rows } = await db.query("select deleted_at, deleted_run_id, first_seen_run_id, changed_run_id from resources where id = 'b'")
  t.same(rows[0], { deleted_at: null, deleted_run_id: null, first_seen_run_id: String(first.id), changed_run_id: String(third.id) })
})

t.test('abort deletes nothing and cleans the run keys', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const redis = redisClient(t)
  const tally = api(app)
  const scope = 'aws/abort'
  await tally.scan(scope, ids(20).map((id) => resource(id)))
  const keysBefore = (await redis.keys(`${app.config.REDIS_KEY_PREFIX}*`)).sort()

  const opened = await tally.open(scope)
  await tally.ingest(opened.body.id, ids(3).map((id) => resource(id)))
  const aborted = await tally.abort(opened.body.id)
  t.equal(aborted.status, 200)
  t.match(aborted.body, { status: 'aborted', stats: { seen: 3, unchanged: 3, batches: 1 } })
  t.equal((await liveIds(db, scope)).length, 20)
  t.same((await redis.keys(`${app.config.REDIS_KEY_PREFIX}*`)).sort(), keysBefore, 'no key of the aborted run is left')
  t.equal((await tally.abort(opened.body.id)).status, 200, 'aborting again answers the same')
  t.match((await tally.complete(opened.body.id)).body, { code: 'run_not_open' })
  t.match((await tally.ingest(opened.body.id, [resource('x')])).body, { code: 'run_not_open' })
})

t.test('what an aborted run created is removed by the next completion that does not see it', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/orphans'
  await tally.scan(scope, ids(20).map((id) => resource(id)))
  const aborted = await tally.open(scope)
  await tally.ingest(aborted.body.id, [resource('orphan-new'), resource(ids(1)[0]!, { name: 'changed by aborted run' })])
  await tally.abort(aborted.body.id)
  t.ok((await liveIds(db, scope)).includes('orphan-new'), 'the aborted run wrote its row')

  const next = await tally.scan(scope, ids(19).map((id) => resource(id)))
  t.equal(next.stats.deleted, 2, 'the orphan and the one id not seen')
  t.same(await liveIds(db, scope), ids(19))

  // The same on a scope that has no baseline yet.
  const never = await tally.open('aws/orphans-first')
  await tally.ingest(never.body.id, [resource('x'), resource('y')])
  await tally.abort(never.body.id)
  const first = await tally.scan('aws/orphans-first', [resource('y'), resource('z')])
  t.match(first.stats, { created: 1, unchanged: 1, deleted: 1 })
  t.same(await liveIds(db, 'aws/orphans-first'), ['y', 'z'])
})

t.test('without usable baseline sets, completion diffs against Postgres with the same result', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const redis = redisClient(t)
  const tally = api(app)
  const prefix = app.config.REDIS_KEY_PREFIX

  // Lost baseline sets.
  await tally.scan('aws/lost', ids(50).map((id) => resource(id)))
  const seenKeys = await redis.keys(`${prefix}*aws/lost*:ids:*`)
  t.ok(seenKeys.length > 0)
  await redis.unlink(...seenKeys)
  const afterLoss = await tally.scan('aws/lost', ids(45).map((id) => resource(id)))
  t.equal(afterLoss.stats.deleted, 5)
  t.same(await liveIds(db, 'aws/lost'), ids(45))

  // A baseline under another shard count.
  await tally.scan('aws/reshard', ids(50).map((id) => resource(id)), { open: { shardCount: 4 } })
  const resharded = await tally.scan('aws/reshard', ids(48).map((id) => resource(id)), { open: { shardCount: 16 } })
  t.match(resharded, { shardCount: 16, stats: { deleted: 2, unchanged: 48 } })
  t.same(await liveIds(db, 'aws/reshard'), ids(48))
  t.same(await redis.keys(`${prefix}*aws/reshard*:hash:4`), [], 'the hash cache of the old shard count is gone')
  const third = await tally.scan('aws/reshard', ids(47).map((id) => resource(id)))
  t.match(third, { shardCount: 16, stats: { deleted: 1, unchanged: 47 } })
})

t.test('completing twice answers the same run; completion is idempotent', async (t) => {
  const app = await build(t)
  const tally = api(app)
  await tally.scan('aws/twice', ids(10).map((id) => resource(id)))
  const opened = await tally.open('aws/twice')
  await tally.ingest(opened.body.id, ids(8).map((id) => resource(id)))
  const [a, b] = await Promise.all([tally.complete(opened.body.id), tally.complete(opened.body.id)])
  t.equal(a.status, 200)
  t.equal(b.status, 200)
  t.same(a.body, b.body)
  t.equal(a.body.stats.deleted, 2)
  t.same((await tally.complete(opened.body.id)).body, a.body)
})

t.test('skip: nothing in a partition the scanner failed to enumerate is deleted', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/partial'
  const estate = [
    ...ids(10, 0).map((id) => resource(id, { type: 'aws::s3::bucket', region: 'us-east-1' })),
    ...ids(10, 10).map((id) => resource(id, { type: 'aws::ec2::instance', region: 'eu-west-1' })),
    ...ids(10, 20).map((id) => resource(id, { type: 'aws::ec2::instance', region: 'us-east-1' })),
    ...ids(10, 30).map((id) => resource(id, { type: 'aws::lambda::function', region: 'eu-west-1' }))
  ]
  await tally.scan(scope, estate)

  // The next scan saw none of eu-west-1 (its API failed), no S3 bucket, and lost r-0020 for real.
  const opened = await tally.open(scope)
  const runId = opened.body.id as number
  await tally.ingest(runId, estate.slice(21, 30))
  const skip = [{ region: 'eu-west-1' }, { type: 'aws::s3::bucket' }]
  const done = await tally.complete(runId, { skip })
  t.equal(done.status, 200)
  t.same(done.body.skip, skip, 'the run says which partitions it skipped')
  t.match(done.body.stats, { seen: 9, deleted: 1, skipped: 30 })
  t.same(await liveIds(db, scope), ids(40).filter((id) => id !== 'r-0020'), 'only the lost resource outside the skipped partitions went')

  // The kept resources are part of the new baseline: the next whole scan that misses them deletes them.
  const whole = await tally.scan(scope, estate.slice(0, 10))
  t.match(whole.stats, { deleted: 29 }, 'what the skip kept is found stale by the next completion')
  t.same(await liveIds(db, scope), ids(10))

  // A skip entry must name a partition: {} would mean "everything".
  const next = await tally.open(scope)
  t.match((await tally.complete(next.body.id, { skip: [{}] })).body, { status: 400, code: 'validation_failed' })
  t.match((await tally.complete(next.body.id, { skip: [{ zone: 'a' }] })).body, { status: 400, code: 'validation_failed' })
  t.equal((await tally.get(next.body.id)).body.status, 'open', 'a refused body changes nothing')
})

t.test('what the baseline wrote but its sets lack is found stale by the next completion', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/missing-from-sets'
  await tally.scan(scope, ids(10).map((id) => resource(id)), { open: { shardCount: 4 } })

  // The next run writes a new resource whose id then goes missing from its sets (however that happens).
  const run = (await tally.open(scope)).body.id as number
  await tally.ingest(run, [...ids(10).map((id) => resource(id)), resource('NEW')])
  const { key, member } = await seenMember(app, run, 'NEW')
  t.equal(await app.redis.srem(key, member), 1)
  t.equal((await tally.complete(run)).status, 200)
  t.ok((await liveIds(db, scope)).includes('NEW'), 'the run wrote it')

  // A scan that does not report it must delete it.
  const next = await tally.scan(scope, ids(10).map((id) => resource(id)))
  t.match(next.stats, { deleted: 1 })
  t.same(await liveIds(db, scope), ids(10))
})

/** Counts the completions that diff against Postgres (they read the scope's live ids in pages). */
function countScans (app: Awaited<ReturnType<typeof build>>): { scans: number } {
  const counter = { scans: 0 }
  const page = app.db.resources.liveIdsPage
  app.db.resources.liveIdsPage = async (...args) => {
    if (args[2] === null) counter.scans++ // a first page
    return page(...args)
  }
  return counter
}

t.test('runs whose set counts differ (the scope grew or shrank) diff set by set, from Redis', async (t) => {
  const app = await build(t, { SEEN_SET_SIZE: '8', GUARD_MIN_BASELINE: '100000' })
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/growing'
  const counter = countScans(app)
  const scan = (n: number, from = 0) => tally.scan(scope, ids(n, from).map((id) => resource(id)), { open: { shardCount: 4 } })
  await scan(40)
  t.match((await scan(300)).stats, { created: 260, unchanged: 40, deleted: 0 })
  t.match((await scan(250, 30)).stats, { unchanged: 250, deleted: 50 }, 'grown: 50 vanished')
  t.same(await liveIds(db, scope), ids(250, 30))
  t.match((await scan(20, 100)).stats, { unchanged: 20, deleted: 230 }, 'shrunk: 230 vanished')
  t.same(await liveIds(db, scope), ids(20, 100))
  const { rows } = await db.query('select seen_sets from runs where scope = $1 order by id', [scope])
  // Sized at open for the scope's last size (0, 40, 300, 250 resources over 4 shards of 8: 1,
  // 2, 16, 8 sets), and laid out again at completion when it saw more (40: 2; 300: 16).
  t.same(rows.map((r) => r.seen_sets), [2, 16, 16, 8], 'each run sized its sets for the scope')
  t.equal(counter.scans, 0, 'no completion fell back to Postgres')
})

t.test("a first load's sets are laid out again for its size; a layout left halfway is diffed against Postgres", async (t) => {
  const app = await build(t, { SEEN_SET_SIZE: '8', DEFAULT_SHARD_COUNT: '4', GUARD_MIN_BASELINE: '100000' })
  const db = await sqlClient(t, app)
  const redis = redisClient(t)
  const tally = api(app)
  const counter = countScans(app)
  const scan = (scope: string, n: number, from = 0) => tally.scan(scope, ids(n, from).map((id) => resource(id)))
  const setsOf = async (scope: string, runId: number) => {
    const keys = await redis.keys(`${app.config.REDIS_KEY_PREFIX}{default/${scope}/*}:ids:${runId}:*`)
    return Promise.all(keys.map(async (key) => ({ key, members: await redis.smembers(key) })))
  }

  const first = await scan('aws/relaid', 400)
  const { rows: [run] } = await db.query('select seen_sets from runs where id = $1', [first.id])
  t.equal(run.seen_sets, 16, 'opened with one set a shard, laid out as 400 over 4 shards of 8 asks')
  const sets = await setsOf('aws/relaid', first.id)
  t.ok(sets.length > 48 && sets.every((set) => Number(set.key.split(':').at(-1)) < 16), `16 sets in each of 4 shards (${sets.length} not empty)`)
  t.equal(sets.reduce((n, s) => n + s.members.length, 0), 400, 'every member once')
  t.ok(sets.every((s) => s.members.length <= 3 * 8), 'none larger than a few times SEEN_SET_SIZE')
  t.ok(await Promise.all(sets.map((s) => redis.object('ENCODING', s.key))).then((e) => e.every((x) => x === 'intset')), 'all intsets')
  t.match((await scan('aws/relaid', 390, 10)).stats, { unchanged: 390, deleted: 10 })
  t.same(await liveIds(db, 'aws/relaid'), ids(390, 10))
  t.equal(counter.scans, 0, 'diffed against the laid-out sets')
  t.same(await setsOf('aws/relaid', first.id), [], 'and they went with the baseline they were')

  // As a completion that stopped after copying members and switching the count leaves it:
  // some members also still in their old set. The next completion diffs against Postgres.
  const half = await scan('aws/halfway', 400)
  const [moved] = (await setsOf('aws/halfway', half.id)).filter((s) => !s.key.endsWith(':0'))
  await redis.sadd(moved!.key.replace(/:\d+$/, ':0'), ...moved!.members)
  t.match((await scan('aws/halfway', 390, 10)).stats, { unchanged: 390, deleted: 10 })
  t.same(await liveIds(db, 'aws/halfway'), ids(390, 10))
  t.equal(counter.scans, 1, 'one completion diffed against Postgres')
})

t.test('a run or baseline of a version whose sets held ids: refused, and diffed against Postgres', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/upgraded'
  const counter = countScans(app)
  const first = await tally.scan(scope, ids(30).map((id) => resource(id)))
  // As an upgrade leaves it: the baseline and its rows without digests, a run opened by the old version.
  await db.query('update runs set seen_sets = null, digest_bits = null where id = $1', [first.id])
  await db.query('update resources set id_digest = null where scope = $1', [scope])
  const old = (await tally.open(scope)).body.id as number
  await db.query('update runs set seen_sets = null, digest_bits = null where id = $1', [old])
  t.match((await tally.ingest(old, [resource('x')])).body, { status: 409, code: 'run_state_lost' }, 'its batches are refused')
  t.match((await tally.complete(old)).body, { status: 409, code: 'run_state_lost' }, 'its completion is refused')
  const oldSet = createKeys(app.config.REDIS_KEY_PREFIX).legacySeen({ tenant: 'default', scope }, 0, old)
  await app.redis.sadd(oldSet, 'x')
  t.match((await tally.abort(old)).body, { status: 'aborted' }, 'it can be aborted')
  t.equal(await app.redis.exists(oldSet), 0, 'which drops the sets of ids it kept')
  t.same(await liveIds(db, scope), ids(30), 'nothing changed')

  const fallback = await tally.scan(scope, ids(25).map((id) => resource(id)))
  t.match(fallback.stats, { unchanged: 25, deleted: 5 })
  t.equal(counter.scans, 1, 'the old baseline was diffed against Postgres')
  const { rows } = await db.query('select count(*)::int as n from resources where scope = $1 and deleted_at is null and id_digest is null', [scope])
  t.equal(rows[0].n, 0, 'which gave the live rows their digests')
  t.match((await tally.scan(scope, ids(20).map((id) => resource(id)))).stats, { unchanged: 20, deleted: 5 })
  t.equal(counter.scans, 1, 'the next completion diffed from Redis, and found the vanished rows by digest')
  t.same(await liveIds(db, scope), ids(20))
})
