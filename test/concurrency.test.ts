/** Many batches of one run at once, and two stateless instances serving the same run. */
import t from 'tap'
import { api, build, liveIds, resource, rowVersions, sqlClient, testEnv } from './helper.js'

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
  t.equal(twins.reduce((n, r) => n + r.body.updated, 0), 20, 'each changed resource is written by exactly one twin')
  const finished = await tally.complete(second.body.id)
  t.match(finished.body.stats, { seen: 2000, deleted: 0 })
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
