/** Many batches of one run at once, and two stateless instances serving the same run. */
import t from 'tap'
import pg from 'pg'
import { setTimeout as sleep } from 'node:timers/promises'
import { api, build, liveIds, resource, rowVersions, sqlClient, testEnv, waitFor } from './helper.js'

const ids = (n: number) => Array.from({ length: n }, (_, i) => `arn:aws:s3:::bucket-${i}`)

t.test('many batches of one run posted concurrently', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/concurrent'
  const all = ids(2000)
  const opened = await tally.open(scope)
  const batches = Array.from({ length: 20 }, (_, b) => all.slice(b * 100, b * 100 + 100).map((id) => resource(id)))
  const results = await Promise.all(batches.map((batch) => tally.ingest(opened.body.id, batch)))
  t.same(results.map((r) => r.status), batches.map(() => 200))
  t.equal(results.reduce((n, r) => n + r.body.created, 0), 2000)
  const done = await tally.complete(opened.body.id, { expectedResources: 2000 })
  t.match(done.body, { status: 'completed', stats: { seen: 2000, created: 2000, batches: 20 } })
  t.equal((await liveIds(db, scope)).length, 2000)

  // Again, with every batch posted twice at once: the twins race on the same rows.
  const before = await rowVersions(db, scope)
  const second = await tally.open(scope)
  const changed = batches.map((batch) => batch.map((r, i) => i === 0 ? { ...r, name: 'changed' } : r))
  const twins = await Promise.all([...changed, ...changed].map((batch) => tally.ingest(second.body.id, batch)))
  t.ok(twins.every((r) => r.status === 200))
  const finished = await tally.complete(second.body.id)
  t.match(finished.body.stats, { seen: 2000, updated: 20, unchanged: 1980, created: 0, deleted: 0, batches: 40 },
    'each resource counted once, as what the run did to it, whichever twin wrote it')
  const after = await rowVersions(db, scope)
  t.equal([...after].filter(([id, v]) => before.get(id) !== v).length, 20)
})

t.test('two app instances sharing Postgres and Redis serve one run', async (t) => {
  const env = await testEnv(t)
  const one = await build(t, {}, env)
  const two = await build(t, {}, env)
  const db = await sqlClient(t, one)
  const a = api(one)
  const b = api(two)
  const scope = 'aws/two-instances'
  const all = ids(600)

  const opened = await a.open(scope)
  t.match((await b.open(scope)).body, { code: 'scope_has_open_run' }, 'the other instance sees the open run')
  const posts = Array.from({ length: 6 }, (_, i) =>
    (i % 2 === 0 ? a : b).ingest(opened.body.id, all.slice(i * 100, i * 100 + 100).map((id) => resource(id))))
  t.ok((await Promise.all(posts)).every((r) => r.status === 200))
  t.match((await b.get(opened.body.id)).body.stats, { seen: 600, created: 600, batches: 6 })
  t.match((await b.complete(opened.body.id)).body, { status: 'completed', stats: { seen: 600 } })

  const next = await b.open(scope)
  await a.ingest(next.body.id, all.slice(0, 300).map((id) => resource(id)))
  await b.ingest(next.body.id, all.slice(300, 550).map((id) => resource(id)))
  const done = await a.complete(next.body.id)
  t.match(done.body.stats, { seen: 550, unchanged: 550, deleted: 50 })
  t.same(await liveIds(db, scope), all.slice(0, 550).sort())
  t.match((await b.ingest(next.body.id, [resource('late')])).body, { code: 'run_not_open' }, 'a late batch on the other instance is refused')
})

t.test('concurrent completes of one run on two instances: one result, deletions applied once', async (t) => {
  const env = await testEnv(t)
  const one = await build(t, {}, env)
  const two = await build(t, {}, env)
  const db = await sqlClient(t, one)
  const scope = 'aws/racing-completes'
  const all = ids(3000)
  await api(one).scan(scope, all.map((id) => resource(id)))
  const run = (await api(one).open(scope)).body.id as number
  await api(two).ingest(run, all.slice(0, 2500).map((id) => resource(id)))
  const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => api(i % 2 === 0 ? one : two).complete(run)))
  for (const a of answers) {
    t.ok(a.status === 200 || (a.status === 409 && a.body.code === 'run_not_open'), `200 or run_not_open, got ${a.status} ${a.body.code ?? ''}`)
  }
  const completed = answers.filter((a) => a.status === 200)
  t.ok(completed.length >= 1, 'at least one answer is the completed run')
  for (const a of completed) t.match(a.body, { status: 'completed', stats: { seen: 2500, deleted: 500 } }, 'every 200 is the same final result')
  t.same(await liveIds(db, scope), all.slice(0, 2500).sort())
  const { rows } = await db.query('select count(*)::int as n from resources where scope = $1 and deleted_run_id = $2', [scope, run])
  t.equal(rows[0].n, 500, 'each stale resource deleted once, by this run')
})

t.test('GET /runs filters by scope and status and pages with a cursor', async (t) => {
  const app = await build(t)
  const tally = api(app)
  for (let i = 0; i < 3; i++) await tally.scan('aws/list-a', [resource('a')])
  await tally.scan('aws/list-b', [resource('a')])
  const open = await tally.open('aws/list-a')

  const seen: number[] = []
  let cursor: string | null = null
  do {
    const page: { body: { items: Array<{ id: number, scope: string }>, nextCursor: string | null } } =
      await tally.call('GET', `/runs?scope=aws/list-a&limit=2${cursor === null ? '' : `&cursor=${cursor}`}`)
    t.ok(page.body.items.every((r) => r.scope === 'aws/list-a'))
    seen.push(...page.body.items.map((r) => r.id))
    cursor = page.body.nextCursor
  } while (cursor !== null)
  t.equal(seen.length, 4)
  t.same(seen, [...seen].sort((x, y) => y - x), 'newest first')
  const opens = await tally.call('GET', '/runs?status=open')
  t.same(opens.body.items.map((r: { id: number }) => r.id), [open.body.id])
})

t.test('a batch racing a completion is either refused or in the completed run\'s stats', async (t) => {
  const app = await build(t)
  const tally = api(app)
  const scope = 'aws/straddle'
  const first = ids(200).map((id) => resource(id))
  const second = Array.from({ length: 200 }, (_, i) => resource(`late-${i}`))
  await tally.scan(scope, first)
  const outcomes = { counted: 0, refused: 0 }
  for (let round = 0; round < 25; round++) {
    const run = (await tally.open(scope)).body.id as number
    t.equal((await tally.ingest(run, first)).status, 200)
    // The batch leaves 0–4 ms after the completion: some begin before it closes the run, some after.
    const [done, batch] = await Promise.all([tally.complete(run, { force: true }), sleep(round % 5).then(() => tally.ingest(run, second))])
    t.equal(done.status, 200, `round ${round}: completed`)
    const { stats } = done.body
    t.equal(stats.created + stats.updated + stats.unchanged, stats.seen, `round ${round}: seen = created + updated + unchanged`)
    if (batch.status === 200) {
      outcomes.counted++
      t.match(stats, { seen: 400, batches: 2 }, `round ${round}: the acknowledged batch is in the stats`)
    } else {
      outcomes.refused++
      t.match(batch.body, { status: 409, code: 'run_not_open' }, `round ${round}: refused`)
      t.match(stats, { seen: 200, batches: 1 }, `round ${round}: the refused batch left no trace`)
    }
  }
  t.comment(`racing batches: ${JSON.stringify(outcomes)}`)
})

t.test('concurrent completes of one run never answer a false run_state_lost', async (t) => {
  const env = await testEnv(t)
  const one = await build(t, {}, env)
  const two = await build(t, {}, env)
  const scope = 'aws/converge'
  await api(one).scan(scope, ids(300).map((id) => resource(id)))
  const answers: string[] = []
  for (let round = 0; round < 30; round++) {
    const run = (await api(one).open(scope)).body.id as number
    await api(two).ingest(run, ids(300 - (round % 3)).map((id) => resource(id)))
    const replies = await Promise.all(Array.from({ length: 4 }, (_, i) => api(i % 2 === 0 ? one : two).complete(run)))
    for (const r of replies) {
      answers.push(String(r.status))
      t.ok(r.status === 200 && r.body.status === 'completed', `round ${round}: every caller gets the completed run (got ${r.status} ${r.body.code ?? ''})`)
    }
    t.equal(new Set(replies.map((r) => JSON.stringify(r.body))).size, 1, `round ${round}: one result`)
  }
  t.equal(answers.length, 120)
})

t.test('a completion waits for a batch stuck in its write, and a batch that comes after is refused', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/drain'
  const all = ids(100)
  await tally.scan(scope, all.map((id) => resource(id)))
  const run = (await tally.open(scope)).body.id as number
  t.equal((await tally.ingest(run, all.slice(0, 50).map((id) => resource(id)))).status, 200)

  // Hold one row the next batch must rewrite: the batch stops inside its write.
  const blocker = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await blocker.connect()
  t.teardown(() => blocker.end())
  await blocker.query('begin')
  await blocker.query('select 1 from resources where scope = $1 and id = $2 for update', [scope, all[50]])
  const stuck = tally.ingest(run, all.slice(50).map((id, i) => resource(id, i === 0 ? { name: 'changed' } : {})))
  await waitFor(t, 'the batch waits for the row lock', async () =>
    (await db.query("select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")).rows[0].n > 0)

  const completing = tally.complete(run)
  const counters = `${app.config.REDIS_KEY_PREFIX}{run:${run}}`
  await waitFor(t, 'the completion closed the run and waits', async () => await app.redis.hget(counters, 'state') === 'closing')
  t.equal(await app.redis.hlen(`${counters}:inflight`), 1, 'one batch in flight')
  const late = await tally.ingest(run, [resource('late')])
  t.match(late.body, { status: 409, code: 'run_not_open' }, 'a batch that begins after the close is refused')

  await blocker.query('commit')
  const [batch, done] = await Promise.all([stuck, completing])
  t.match(batch, { status: 200, body: { updated: 1, unchanged: 49 } })
  t.match(done.body, { status: 'completed', stats: { seen: 100, created: 0, updated: 1, unchanged: 99, deleted: 0, batches: 2 } },
    'the batch that was in flight is in the stats, and nothing it reported was deleted')
  t.same(await liveIds(db, scope), [...all].sort())
  t.equal((await db.query("select count(*)::int as n from resources where id = 'late'")).rows[0].n, 0, 'the refused batch wrote nothing')
})
