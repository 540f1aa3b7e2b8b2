/**
 * The change log: what each run created, updated, deleted and revived, logged by the statements
 * that write, read through GraphQL (Run.changes, Resource.history, changes), purged after
 * CHANGES_RETENTION.
 */
import t from 'tap'
import { api, build, countStatements, createKey, gql, resource, sqlClient, type App } from './helper.js'

const SCOPE = 'aws/changes'

interface Change { kind: string, resourceId: string, type: string, at: string, changedFields: string[], run: { id: string } }

async function runChanges (app: App, runId: number) {
  const res = await gql(app, `query ($id: ID!) { run(id: $id) {
    stats { created updated unchanged deleted }
    changes(first: 500) { totalCount edges { node { kind resourceId type at changedFields run { id } } } } } }`, { id: String(runId) })
  if (res.errors) throw new Error(JSON.stringify(res.errors))
  const run = res.data.run
  const changes = run.changes.edges.map((e: { node: Change }) => e.node) as Change[]
  const ids = (kind: string) => changes.filter((c) => c.kind === kind).map((c) => c.resourceId).sort()
  return { stats: run.stats, changes, totalCount: run.changes.totalCount as number, ids, fields: new Map(changes.map((c) => [c.resourceId, c.changedFields])) }
}

t.test('three scans: each run lists exactly what it created, updated, deleted and revived', async (t) => {
  // Small scans: the deletion guard would stop the second one.
  const app = await build(t, { GUARD_MIN_BASELINE: '1000' })
  const db = await sqlClient(t, app)
  const tally = api(app)
  const first = Array.from({ length: 10 }, (_, i) => resource(`r${i}`))
  const one = await tally.scan(SCOPE, first)

  const second = first.slice(0, 8).map((r) => ({ ...r }))
  second[1] = { ...second[1]!, name: 'renamed' }
  second[2] = { ...second[2]!, tags: { env: 'dev', owner: 'data' } }
  second[3] = { ...second[3]!, attributes: { size: 't3.large' } }
  second.push(resource('r10', { type: 'aws::s3::bucket' }))
  const two = await tally.scan(SCOPE, second)

  const third = second.filter((r) => r.id !== 'r5').map((r) => r.id === 'r4' ? { ...r, region: 'us-east-1' } : r)
  third.push(first[8]!)
  const three = await tally.scan(SCOPE, third)

  const c1 = await runChanges(app, one.id)
  t.same(c1.ids('CREATED'), first.map((r) => r.id).sort())
  t.same([c1.ids('UPDATED'), c1.ids('DELETED'), c1.ids('REVIVED')], [[], [], []])
  t.equal(c1.totalCount, 10)
  t.ok(c1.changes.every((c) => c.run.id === String(one.id) && c.type === 'aws::ec2::instance' && c.changedFields.length === 0))

  const c2 = await runChanges(app, two.id)
  t.same(c2.ids('CREATED'), ['r10'])
  t.same(c2.ids('UPDATED'), ['r1', 'r2', 'r3'])
  t.same(c2.ids('DELETED'), ['r8', 'r9'])
  t.same(c2.ids('REVIVED'), [])
  t.same(c2.fields.get('r1'), ['name'])
  t.same(c2.fields.get('r2'), ['tags', 'tags.env', 'tags.owner'])
  t.same(c2.fields.get('r3'), ['attributes', 'attributes.size'])
  t.equal(c2.changes.find((c) => c.resourceId === 'r10')!.type, 'aws::s3::bucket')

  const c3 = await runChanges(app, three.id)
  t.same(c3.ids('CREATED'), [])
  t.same(c3.ids('UPDATED'), ['r4'])
  t.same(c3.ids('DELETED'), ['r5'])
  t.same(c3.ids('REVIVED'), ['r8'])
  t.same(c3.fields.get('r4'), ['region'])
  t.same(c3.fields.get('r8'), [], 'revived with the content it was deleted with')

  // The run's own counters say the same: a revival counts as created, nothing for unchanged.
  for (const c of [c1, c2, c3]) {
    t.same({ created: c.ids('CREATED').length + c.ids('REVIVED').length, updated: c.ids('UPDATED').length, deleted: c.ids('DELETED').length },
      { created: c.stats.created, updated: c.stats.updated, deleted: c.stats.deleted })
    t.equal(c.totalCount, c.changes.length)
  }
  // Newest first: a deletion is logged by the completion, after the run's writes.
  t.ok(c2.changes.findIndex((c) => c.kind === 'DELETED') < c2.changes.findIndex((c) => c.kind === 'CREATED'))

  t.test('an unchanged rescan logs nothing', async (t) => {
    const four = await tally.scan(SCOPE, third)
    const c4 = await runChanges(app, four.id)
    t.equal(c4.totalCount, 0)
    t.equal(c4.stats.unchanged, third.length)
  })

  t.test('a resource\'s history across deletion and revival, newest first', async (t) => {
    const res = await gql(app, `{ resource(scope: "${SCOPE}", id: "r8") { history { totalCount edges { node { kind run { id } } } } } }`)
    t.same(res.data.resource.history.edges.map((e: { node: Change }) => [e.node.kind, Number(e.node.run.id)]),
      [['REVIVED', three.id], ['DELETED', two.id], ['CREATED', one.id]])
    t.equal(res.data.resource.history.totalCount, 3)
    // The same id in another scope is another resource, with a history of its own.
    await tally.scan('aws/elsewhere', [resource('r8')])
    const again = await gql(app, `{ resource(scope: "${SCOPE}", id: "r8") { history { totalCount } } }`)
    t.equal(again.data.resource.history.totalCount, 3)
  })

  t.test('a scope\'s changes, filtered and paged', async (t) => {
    const deleted = await gql(app, `{ changes(scope: "${SCOPE}", kind: DELETED) { totalCount edges { node { resourceId } } } }`)
    t.same(deleted.data.changes.edges.map((e: { node: Change }) => e.node.resourceId), ['r5', 'r9', 'r8'])
    t.equal(deleted.data.changes.totalCount, 3)
    const buckets = await gql(app, `{ changes(scope: "${SCOPE}", type: "aws::s3::bucket") { edges { node { kind resourceId } } } }`)
    t.same(buckets.data.changes.edges.map((e: { node: Change }) => e.node), [{ kind: 'CREATED', resourceId: 'r10' }])
    // since: only the third scan's changes (its writes came after this time).
    const cut = (await db.query('select min(at) as at from changes where run_id = $1', [three.id])).rows[0].at as Date
    const since = await gql(app, `query ($since: String) { changes(scope: "${SCOPE}", since: $since) { totalCount edges { node { run { id } } } } }`, { since: cut.toISOString() })
    t.equal(since.data.changes.totalCount, 3)
    t.ok(since.data.changes.edges.every((e: { node: Change }) => e.node.run.id === String(three.id)))

    // Pages of 4 walk all 10 + 5 + 3 changes once each, newest first.
    const all = await db.query('select c.id from changes c join runs r on r.id = c.run_id where r.scope = $1 order by c.id desc', [SCOPE])
    const seen: string[] = []
    let after: string | null = null
    for (let page = 0; page < 10; page++) {
      const res = await gql(app, `query ($after: String) { changes(scope: "${SCOPE}", first: 4, after: $after) {
        edges { cursor node { resourceId run { id } } } pageInfo { hasNextPage endCursor } } }`, { after })
      const conn = res.data.changes
      seen.push(...conn.edges.map((e: { node: { resourceId: string, run: { id: string } } }) => `${e.node.run.id}/${e.node.resourceId}`))
      if (!conn.pageInfo.hasNextPage) break
      after = conn.pageInfo.endCursor
    }
    t.equal(seen.length, all.rowCount)
    t.equal(new Set(seen).size, seen.length)

    const bad = await gql(app, `{ changes(scope: "${SCOPE}", since: "yesterday") { totalCount } }`)
    t.equal(bad.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT')
  })

  t.test('nested lists are loaded in one statement per level, not one per run', async (t) => {
    const query = `{ runs(scope: "${SCOPE}") { edges { node { id changes(first: 2) { totalCount edges { node { resourceId run { id } } } } } } } }`
    const { result, statements } = await countStatements(app, () => gql(app, query))
    t.notOk(result.errors)
    t.equal(result.data.runs.edges.length, 4)
    t.same(result.data.runs.edges.map((e: { node: { changes: { totalCount: number } } }) => e.node.changes.totalCount), [0, 3, 6, 10])
    // runs, their changes, the counts, the changes' runs.
    t.ok(statements.length <= 4, `${statements.length} statements`)
  })

  t.test('another tenant sees none of it', async (t) => {
    const other = await createKey(app, { tenant: 'other', role: 'reader' })
    const res = await gql(app, `{ run(id: "${two.id}") { id } changes(scope: "${SCOPE}") { totalCount } resource(scope: "${SCOPE}", id: "r8") { id } }`, {}, other)
    t.equal(res.data.run, null)
    t.equal(res.data.changes.totalCount, 0)
    t.equal(res.data.resource, null)
    const narrow = await createKey(app, { tenant: 'default', role: 'reader', scopes: ['gcp/*'] })
    const refused = await gql(app, `{ changes(scope: "${SCOPE}") { totalCount } }`, {}, narrow)
    t.equal(refused.errors?.[0]?.extensions?.code, 'FORBIDDEN')
  })
})

t.test('the sweeper purges changes older than CHANGES_RETENTION, in bounded batches', async (t) => {
  const app = await build(t, { CHANGES_RETENTION: '86400', SWEEP_INTERVAL: '0' })
  const db = await sqlClient(t, app)
  const tally = api(app)
  const old = await tally.scan(SCOPE, Array.from({ length: 2500 }, (_, i) => resource(`o${i}`)), { batch: 500 })
  const recent = await tally.scan('aws/recent', [resource('n1'), resource('n2')])
  // The first run two days old, and its changes but one (a run may last past the horizon).
  await db.query('update changes set at = at - interval \'2 days\' where run_id = $1 and resource_id <> \'o7\'', [old.id])
  await db.query('update runs set started_at = started_at - interval \'2 days\' where id = $1', [old.id])
  const swept = await app.reconcile.sweep()
  t.equal(swept.purgedChanges, 2499)
  const left = await db.query('select run_id, min(resource_id) as id, count(*)::int as n from changes group by run_id order by run_id')
  t.same(left.rows, [{ run_id: String(old.id), id: 'o7', n: 1 }, { run_id: String(recent.id), id: 'n1', n: 2 }])
  t.equal((await app.reconcile.sweep()).purgedChanges, 0)
})

t.test('CHANGES_RETENTION=0 keeps every change', async (t) => {
  const app = await build(t, { CHANGES_RETENTION: '0', SWEEP_INTERVAL: '0' })
  const db = await sqlClient(t, app)
  const run = await api(app).scan(SCOPE, [resource('k1')])
  await db.query('update changes set at = at - interval \'1000 days\' where run_id = $1', [run.id])
  t.equal((await app.reconcile.sweep()).purgedChanges, 0)
  t.equal((await db.query('select count(*)::int as n from changes')).rows[0].n, 1)
})

t.test('a load of a scope with no live rows (no lookup before the write) revives what it meets, and an id sent twice is written once', async (t) => {
  const app = await build(t, { GUARD_MIN_BASELINE: '1000' })
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/reload'
  const first = await tally.scan(scope, ['a', 'b', 'c'].map((id) => resource(id)))
  // Everything vanishes (an empty scan, forced): the scope has rows, none of them live.
  const empty = (await tally.open(scope)).body.id as number
  t.equal((await tally.complete(empty, { force: true })).status, 200)
  t.same((await db.query('select count(*)::int as n from resources where scope = $1 and deleted_at is null', [scope])).rows[0].n, 0)

  // a comes back as it was, b renamed, n is new; a is sent again in a second batch of the run.
  const run = (await tally.open(scope)).body.id as number
  const one = await tally.ingest(run, [resource('a'), resource('b', { name: 'renamed' }), resource('n')])
  const two = await tally.ingest(run, [resource('a')])
  t.same([one.status, two.status], [200, 200])
  t.match(one.body, { received: 3, created: 3, updated: 0, unchanged: 0 })
  t.match(two.body, { received: 1, created: 0, updated: 0, unchanged: 1 })
  t.equal((await db.query('select count(*)::int as n from run_writes where run_id = $1', [run])).rows[0].n, 1, 'one batch wrote')
  const done = await tally.complete(run)
  t.equal(done.status, 200)
  t.match(done.body.stats, { created: 3, updated: 0, deleted: 0 })

  const c = await runChanges(app, run)
  t.same([c.ids('CREATED'), c.ids('REVIVED'), c.ids('UPDATED')], [['n'], ['a', 'b'], []])
  t.same(c.fields.get('a'), [], 'revived with the content it was deleted with')
  t.same(c.fields.get('b'), ['name'], 'revived with a new name')
  const { rows } = await db.query('select id, name, first_seen_run_id, changed_run_id from resources where scope = $1 and deleted_at is null order by id', [scope])
  t.same(rows, [
    { id: 'a', name: null, first_seen_run_id: String(first.id), changed_run_id: String(run) },
    { id: 'b', name: 'renamed', first_seen_run_id: String(first.id), changed_run_id: String(run) },
    { id: 'n', name: null, first_seen_run_id: String(run), changed_run_id: String(run) }
  ])
})
