/** Run fencing: an older run neither deletes on top of a newer baseline nor overwrites a newer version. */
import t from 'tap'
import pg from 'pg'
import { setTimeout as sleep } from 'node:timers/promises'
import { api, build, liveIds, resource, seenMember, sqlClient } from './helper.js'

t.test('a run that started before the current baseline completes as superseded and deletes nothing', async (t) => {
  const app = await build(t)
  const tally = api(app)
  const db = await sqlClient(t, app)
  const scope = 'aws/fenced'
  await tally.scan(scope, ['a', 'b', 'c'].map((id) => resource(id)))
  const stale = (await tally.open(scope)).body.id as number
  await tally.ingest(stale, [resource('a')])
  // Another run completed meanwhile (as a replica restored from elsewhere, or an operator's
  // import would make it): the scope's baseline is now newer than the one `stale` started from.
  const { rows } = await db.query(
    "insert into runs (tenant, scope, status, shard_count, completed_at) values ('default', $1, 'completed', 64, now()) returning id", [scope])
  await db.query('update scopes set baseline_run_id = $1 where scope = $2', [rows[0].id, scope])

  const done = await tally.complete(stale, { force: true })
  t.match(done.body, { status: 'superseded', stats: { deleted: 0 } })
  t.same(await liveIds(db, scope), ['a', 'b', 'c'], 'nothing deleted')
  t.same(await app.redis.keys(`${app.config.REDIS_KEY_PREFIX}*:mark:${stale}`), [], 'its keys are dropped')
})

t.test('an older run never overwrites the version a newer run wrote', async (t) => {
  const app = await build(t)
  const tally = api(app)
  const db = await sqlClient(t, app)
  const scope = 'aws/versions'
  const older = await tally.scan(scope, [resource('x', { attributes: { v: 1 } })])
  const newer = await tally.scan(scope, [resource('x', { attributes: { v: 2 } })])
  // A batch of the older run, delayed past the newer run's write, lands now.
  const row = { id: 'x', content: '{"attributes":{"v":0},"name":null,"region":null,"tags":{},"type":"t"}', hash: '0707070707070707', digest: '7' }
  const late = await app.db.resources.writeChanged('default', scope, older.id, [row])
  t.same(late, { runOpen: false, inserted: new Set(), updated: new Set(), revived: new Set() }, 'a finished run writes nothing')
  // Second line of defence, should an older run still be in flight: the row's changed_run_id.
  await db.query("update runs set status = 'open' where id = $1", [older.id])
  const guarded = await app.db.resources.writeChanged('default', scope, older.id, [row])
  t.same(guarded, { runOpen: true, inserted: new Set(), updated: new Set(), revived: new Set() }, 'the guard refused the write')
  const { rows } = await db.query("select attributes->>'v' as v, changed_run_id, xmax from resources where scope = $1 and id = 'x'", [scope])
  t.same(rows, [{ v: '2', changed_run_id: String(newer.id), xmax: '0' }], 'the newer version stands, unlocked')
})

t.test('a completion whose attempt ended under it (reopened, fed, completing again) cannot commit its diff', async (t) => {
  const app = await build(t)
  const tally = api(app)
  const db = await sqlClient(t, app)
  const scope = 'aws/attempts'
  await tally.scan(scope, ['a', 'b', 'c'].map((id) => resource(id)))
  const run = (await tally.open(scope)).body.id as number
  await tally.ingest(run, [resource('a'), resource('b')])

  // Hold c's row: the completion diffs (c is stale), then waits in its transaction to delete it.
  const blocker = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await blocker.connect()
  t.teardown(() => blocker.end())
  await blocker.query('begin')
  await blocker.query("select * from resources where scope = $1 and id = 'c' for update", [scope])
  const completing = tally.complete(run)
  for (let i = 0; i < 200; i++) {
    const { rows } = await db.query("select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")
    if (rows[0].n > 0) break
    await sleep(25)
  }
  // Meanwhile, as when a concurrent complete was refused: the run reopened, a batch brought c
  // back, and a new attempt began.
  const c = await seenMember(app, run, 'c')
  await app.redis.sadd(c.key, c.member)
  await blocker.query('update runs set attempt = attempt + 1 where id = $1', [run])
  await blocker.query('commit')

  const done = await completing
  t.match(done.body, { status: 'completed', stats: { seen: 3, deleted: 0 } }, 'the stale diff was dropped and done again')
  t.same(await liveIds(db, scope), ['a', 'b', 'c'], 'c, seen by the run after all, is live')
})
