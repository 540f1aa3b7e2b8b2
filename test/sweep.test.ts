/** The sweeper: abandoned runs are aborted, live runs keep their keys, old deletions are purged. */
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { api, build, liveIds, resource, sqlClient, testEnv, waitFor } from './helper.js'

const estate = (n: number) => Array.from({ length: n }, (_, i) => resource(`s-${i}`))
const NO_TIMER = { RUN_TTL: '60', SWEEP_INTERVAL: '0' }
async function runKeys (app: Awaited<ReturnType<typeof build>>, id: number): Promise<string[]> {
  const p = app.config.REDIS_KEY_PREFIX
  const found = await Promise.all([`${p}*:mark:${id}`, `${p}*:ids:${id}:*`, `${p}{run:${id}}*`].map((k) => app.redis.keys(k)))
  return found.flat()
}

t.test('an open run idle for RUN_TTL is aborted, its keys dropped, nothing deleted', async (t) => {
  const app = await build(t, NO_TIMER)
  const tally = api(app)
  const db = await sqlClient(t, app)
  await tally.scan('aws/idle', estate(10))
  const id = (await tally.open('aws/idle', { shardCount: 4 })).body.id as number
  await tally.ingest(id, estate(3), { batchId: 'one' })
  t.ok((await runKeys(app, id)).length > 0)

  const early = await app.reconcile.sweep()
  t.same(early.abandoned, [], 'an active run is left alone')
  t.equal(early.renewed, 1)

  const later = await app.reconcile.sweep(Date.now() + 61_000)
  t.same(later.abandoned, [id])
  t.equal((await tally.get(id)).body.status, 'aborted')
  t.same(await runKeys(app, id), [], 'markers, sets, counters and batch records are gone')
  t.equal((await liveIds(db, 'aws/idle')).length, 10, 'nothing deleted')
  t.equal((await tally.open('aws/idle')).status, 201, 'the scope takes a new run')
})

t.test('an active run has every key renewed, including shards no batch touched', async (t) => {
  const app = await build(t, NO_TIMER)
  const tally = api(app)
  const id = (await tally.open('aws/long', { shardCount: 8 })).body.id as number
  await tally.ingest(id, [resource('only-one')])
  const markers = await app.redis.keys(`${app.config.REDIS_KEY_PREFIX}*:mark:${id}`)
  t.equal(markers.length, 8)
  for (const m of markers) await app.redis.expire(m, 5)
  await app.reconcile.sweep()
  for (const m of markers) t.ok(await app.redis.ttl(m) > 50, `${m} renewed`)
})

t.test('a completion that crashed and was never retried is given up; the baseline survives', async (t) => {
  const app = await build(t, NO_TIMER)
  const tally = api(app)
  const db = await sqlClient(t, app)
  const first = await tally.scan('aws/stuck', estate(20))
  const id = (await tally.open('aws/stuck')).body.id as number
  await tally.ingest(id, estate(5))
  // What a process killed during completion leaves: the run `completing`, nothing committed.
  await db.query("update runs set status = 'completing' where id = $1", [id])
  t.same((await app.reconcile.sweep(Date.now() + 61_000)).abandoned, [id])
  t.match((await tally.complete(id)).body, { status: 409, code: 'run_not_open' })
  t.equal((await liveIds(db, 'aws/stuck')).length, 20, 'nothing deleted')
  const baselineSets = await app.redis.keys(`${app.config.REDIS_KEY_PREFIX}*:ids:${first.id}:*`)
  t.ok(baselineSets.length > 0, "the baseline's sets are kept")
  const next = await tally.scan('aws/stuck', estate(19))
  t.match(next.stats, { deleted: 1 })
})

t.test('two instances sweeping at once abort each abandoned run once', async (t) => {
  const env = await testEnv(t)
  const one = await build(t, NO_TIMER, env)
  const two = await build(t, NO_TIMER, env)
  const ids: number[] = []
  for (let i = 0; i < 6; i++) ids.push((await api(one).open(`aws/many-${i}`)).body.id)
  const later = Date.now() + 61_000
  const [a, b] = await Promise.all([one.reconcile.sweep(later), two.reconcile.sweep(later)])
  t.same([...a.abandoned, ...b.abandoned].sort((x, y) => x - y), ids, 'each run exactly once')
})

t.test('soft-deleted rows older than DELETED_RETENTION are purged by the timer', async (t) => {
  const app = await build(t, { SWEEP_INTERVAL: '1', DELETED_RETENTION: '3600' })
  const tally = api(app)
  const db = await sqlClient(t, app)
  await tally.scan('aws/purge', estate(5))
  await tally.scan('aws/purge', estate(3))
  t.same((await db.query('select id from resources where deleted_at is not null order by id')).rows, [{ id: 's-3' }, { id: 's-4' }])
  await db.query("update resources set deleted_at = now() - interval '2 hours' where id = 's-3'")
  await waitFor(t, 'a timed sweep purged the old deletion', async () =>
    (await db.query("select count(*)::int as n from resources where id = 's-3'")).rows[0].n === 0)
  t.same((await db.query('select id from resources order by id')).rows.map((r) => r.id), ['s-0', 's-1', 's-2', 's-4'],
    'the old deletion is purged, the recent one kept')
})

t.test("one instance's sweeps never overlap, however long one takes", async (t) => {
  const app = await build(t, { SWEEP_INTERVAL: '1' })
  const db = await sqlClient(t, app)
  const holder = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await holder.connect()
  t.teardown(() => holder.end())
  // A sweep that cannot read the runs for 3.5 s: three intervals pass while it waits.
  await holder.query('begin')
  await holder.query('lock table runs in access exclusive mode')
  const waiting = async () => (await db.query(`select count(*)::int as n from pg_stat_activity
    where datname = current_database() and wait_event_type = 'Lock' and query like 'select%from "runs"%'`)).rows[0].n as number
  await waitFor(t, 'a sweep waits for the lock', async () => await waiting() > 0)
  await sleep(2500)
  t.equal(await waiting(), 1, 'only that sweep: none started behind it')
  await holder.query('commit')
})

t.test('the purge skips rows another instance holds instead of waiting for them', async (t) => {
  const app = await build(t, { ...NO_TIMER, DELETED_RETENTION: '3600' })
  const tally = api(app)
  const db = await sqlClient(t, app)
  await tally.scan('aws/purge-held', estate(6))
  await tally.scan('aws/purge-held', estate(2))
  await db.query("update resources set deleted_at = now() - interval '2 hours' where deleted_at is not null")
  const holder = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await holder.connect()
  t.teardown(() => holder.end())
  await holder.query('begin')
  await holder.query("select 1 from resources where id = 's-5' for update")
  const swept = await Promise.race([app.reconcile.sweep(), sleep(60_000, undefined, { ref: false }).then(() => 'still waiting' as const)])
  t.not(swept, 'still waiting', 'the sweep did not wait for the held row')
  t.match(swept, { purged: 3 })
  await holder.query('commit')
  t.same((await db.query('select id from resources order by id')).rows.map((r) => r.id), ['s-0', 's-1', 's-5'])
  t.match(await app.reconcile.sweep(), { purged: 1 }, 'the next sweep takes it')
})
