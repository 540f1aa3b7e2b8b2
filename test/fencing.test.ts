/**
 * Run fencing: an older run neither deletes on top of a newer baseline nor overwrites a newer
 * version; a finishing run's writes are over before its completion counts them.
 */
import t from 'tap'
import pg from 'pg'
import { idDigest } from '../src/reconcile/members.js'
import { api, build, liveIds, resource, seenMember, sqlClient, waitFor } from './helper.js'

/** A write of run `runId` as a batch makes it, straight to Postgres (a batch that then fails leaves just that). */
const write = (app: Awaited<ReturnType<typeof build>>, scope: string, runId: number, id: string) => app.db.resources.writeChanged('default', scope, runId, `token-${id}`,
  [{ id, content: '{"attributes":{"v":0},"name":null,"region":null,"tags":{},"type":"t"}', hash: '0707070707070707', digest: idDigest(id).toString() }])
const writesSeen = async (db: pg.Client, runId: number) => (await db.query('select writes_seen from runs where id = $1', [runId])).rows[0].writes_seen
const abc = () => ['a', 'b', 'c'].map((id) => resource(id))

/** A scope scanned once (a, b, c), and a run of it that has seen them again, still open. */
async function rescanning (t: Parameters<typeof build>[0], scope: string) {
  const app = await build(t)
  const tally = api(app)
  const db = await sqlClient(t, app)
  const first = await tally.scan(scope, abc())
  const run = (await tally.open(scope)).body.id as number
  await tally.ingest(run, abc())
  return { app, tally, db, first, run }
}

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
  const late = await app.db.resources.writeChanged('default', scope, older.id, 'late-token', [row])
  t.same(late, { runOpen: false, inserted: new Set(), updated: new Set(), revived: new Set() }, 'a finished run writes nothing')
  // Second line of defence, should an older run still be in flight: the row's changed_run_id.
  await db.query("update runs set status = 'open' where id = $1", [older.id])
  const guarded = await app.db.resources.writeChanged('default', scope, older.id, 'late-token', [row])
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

  // Hold the acknowledged-batch witness: the completion diffs (c is stale), then waits to check
  // the witness, just before its transaction.
  const blocker = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await blocker.connect()
  t.teardown(() => blocker.end())
  await blocker.query('begin')
  await blocker.query('lock table run_acks in access exclusive mode')
  const completing = tally.complete(run)
  await waitFor(t, 'the completion, its diff done, waits for the witness', async () => (await db.query(`select count(*)::int as n from pg_stat_activity
    where datname = current_database() and wait_event_type = 'Lock' and query like '%run_acks%'`)).rows[0].n > 0)
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

t.test('rows a run wrote but never acknowledged: its own completion finds them stale, and says its writes were not all seen', async (t) => {
  const scope = 'aws/unacknowledged'
  const { app, tally, db, first, run } = await rescanning(t, scope)
  t.equal(await writesSeen(db, first.id), true, 'a whole first load: every row it wrote is in its sets')
  // A batch that wrote, then failed before its ids reached the sets.
  t.match(await write(app, scope, run, 'ghost'), { runOpen: true, inserted: new Set(['ghost']) })
  t.match((await tally.complete(run)).body, { status: 'completed', stats: { seen: 3, deleted: 1 } }, 'the run never acknowledged ghost: gone')
  t.same(await liveIds(db, scope), ['a', 'b', 'c'])
  t.equal(await writesSeen(db, run), false, 'its completion found a write never acknowledged')
  t.match((await tally.scan(scope, abc())).stats, { deleted: 0 }, 'the next completion checked its rows again')
})

t.test('an abort waits for a write of the run under way: none of its writes lands after it', async (t) => {
  const scope = 'aws/abort-late-write'
  const { app, tally, db, run } = await rescanning(t, scope)
  // A write of the run (of a batch the drain gave up on) stuck on a row lock, its fence passed.
  const blocker = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await blocker.connect()
  t.teardown(() => blocker.end())
  await blocker.query('begin')
  await blocker.query("select 1 from resources where scope = $1 and id = 'a' for update", [scope])
  const row = { id: 'a', content: '{"attributes":{"v":9},"name":null,"region":null,"tags":{},"type":"t"}', hash: '0909090909090909', digest: idDigest('a').toString() }
  const late = app.db.resources.writeChanged('default', scope, run, 'late-token', [row])
  const waiting = async (query: string) => (await db.query(`select count(*)::int as n from pg_stat_activity
    where datname = current_database() and wait_event_type = 'Lock' and query like $1`, [query])).rows[0].n > 0
  await waitFor(t, 'the write waits for the row', () => waiting('%with fence as%'))
  const aborting = tally.abort(run)
  await waitFor(t, 'the abort waits for the write', () => waiting('select "id" from "runs"%for update'))
  await blocker.query('commit')
  t.match(await late, { runOpen: true, updated: new Set(['a']) }, 'the write went through')
  t.equal((await aborting).body.status, 'aborted')
  t.equal((await db.query("select changed_run_id from resources where scope = $1 and id = 'a'", [scope])).rows[0].changed_run_id, String(run),
    'before the abort, which then found nothing under way')
})

t.test("a write of a finishing run waits for the completion's commit, then writes nothing", async (t) => {
  const scope = 'aws/late-write'
  const { app, tally, db, run } = await rescanning(t, scope)

  // Hold the completion inside its transaction (it has locked the run, counted its rows, and
  // waits for the scope's row), while a batch of the run that a drain gave up on writes late.
  const blocker = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await blocker.connect()
  t.teardown(() => blocker.end())
  await blocker.query('begin')
  await blocker.query('select * from scopes where scope = $1 for update', [scope])
  const completing = tally.complete(run)
  const waiting = async (query: string) => (await db.query(`select count(*)::int as n from pg_stat_activity
    where datname = current_database() and wait_event_type = 'Lock' and query like $1`, [query])).rows[0].n > 0
  await waitFor(t, 'the completion waits for the scope row', () => waiting('update "scopes"%'))
  const late = write(app, scope, run, 'late')
  await waitFor(t, 'the late write waits for the run row', () => waiting('%with fence as%'))
  await blocker.query('commit')

  t.match((await completing).body, { status: 'completed', stats: { seen: 3, deleted: 0 } })
  t.same(await late, { runOpen: false, inserted: new Set(), updated: new Set(), revived: new Set() }, 'the late write found the run finished')
  t.same(await liveIds(db, scope), ['a', 'b', 'c'], 'and wrote nothing')
  t.equal(await writesSeen(db, run), true, 'so every row the run wrote is in its sets')
})
