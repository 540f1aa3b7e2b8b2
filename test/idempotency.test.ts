/** A batch with an id applies and counts once, however many copies arrive, whenever. */
import t from 'tap'
import { api, bearer, build, resource, rowVersions, sqlClient, testEnv } from './helper.js'

const batch = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => resource(`${prefix}-${i}`))

t.test('a replayed batch answers its first result with duplicate: true and counts nothing twice', async (t) => {
  const app = await build(t)
  const tally = api(app)
  const db = await sqlClient(t, app)
  const opened = await tally.open('aws/replay')
  const id = opened.body.id as number
  const first = await tally.ingest(id, batch('r', 50), { batchId: 'scan-1/batch-1' })
  t.match(first, { status: 200, body: { received: 50, created: 50, updated: 0, unchanged: 0, duplicate: false } })
  // Row identity, not pg_stat_user_tables: those counters reach the view asynchronously.
  const before = await rowVersions(db, 'aws/replay')

  const replay = await tally.ingest(id, batch('r', 50), { batchId: 'scan-1/batch-1' })
  t.same(replay.body, { ...first.body, duplicate: true }, 'the first result, marked duplicate')
  const byHeader = await tally.call('POST', `/runs/${id}/resources`, undefined)
  t.equal(byHeader.status, 400, 'a body is still required')
  const header = await app.inject({
    method: 'POST', url: `/runs/${id}/resources`, headers: { ...bearer(app), 'idempotency-key': 'scan-1/batch-1' }, payload: { resources: batch('r', 50) }
  })
  t.same(header.json(), { ...first.body, duplicate: true }, 'Idempotency-Key names the same batch')

  const stats = (await tally.get(id)).body.stats
  t.match(stats, { seen: 50, created: 50, unchanged: 0, batches: 1 }, 'counted once')
  t.same(await rowVersions(db, 'aws/replay'), before, 'replays wrote no row')

  const done = await tally.complete(id)
  t.match(done.body.stats, { seen: 50, created: 50, batches: 1 })
})

t.test('a batch id reused for other content is refused and changes nothing', async (t) => {
  const app = await build(t)
  const tally = api(app)
  const db = await sqlClient(t, app)
  const id = (await tally.open('aws/reused')).body.id as number
  await tally.ingest(id, batch('a', 3), { batchId: 'b1' })
  const reused = await tally.ingest(id, batch('b', 3), { batchId: 'b1' })
  t.match(reused, { status: 422, body: { code: 'batch_id_reused' } })
  const { rows } = await db.query("select count(*)::int as n from resources where id like 'b-%'")
  t.equal(rows[0].n, 0, 'nothing of the refused batch was written')
  t.match((await tally.get(id)).body.stats, { seen: 3, batches: 1 })

  const clash = await app.inject({
    method: 'POST', url: `/runs/${id}/resources`, headers: { ...bearer(app), 'idempotency-key': 'x' }, payload: { batchId: 'y', resources: batch('a', 1) }
  })
  t.match(clash.json(), { status: 400, code: 'validation_failed' }, 'header and body must agree')
  const bad = await app.inject({
    method: 'POST', url: `/runs/${id}/resources`, headers: { ...bearer(app), 'idempotency-key': 'has space' }, payload: { resources: batch('a', 1) }
  })
  t.match(bad.json(), { status: 400, code: 'validation_failed' }, 'batch ids are visible ASCII')
})

t.test('copies of one batch arriving at once, on two instances: applied once, the others duplicates', async (t) => {
  const env = await testEnv(t)
  const one = await build(t, {}, env)
  const two = await build(t, {}, env)
  const id = (await api(one).open('aws/racing-copies')).body.id as number
  const resources = batch('c', 400)
  const copies = await Promise.all(Array.from({ length: 8 }, (_, i) =>
    api(i % 2 === 0 ? one : two).ingest(id, resources, { batchId: 'same' })))
  t.same(copies.map((c) => c.status), Array(8).fill(200))
  t.equal(copies.filter((c) => c.body.duplicate === false).length, 1, 'exactly one copy applied the batch')
  for (const c of copies) t.match(c.body, { created: 400, received: 400 }, 'every copy answers with the one result')
  t.match((await api(one).get(id)).body.stats, { seen: 400, created: 400, unchanged: 0, batches: 1 })
})

t.test('a claim whose holder died is taken over; a failed copy releases its claim', async (t) => {
  const app = await build(t)
  const tally = api(app)
  const id = (await tally.open('aws/dead-claim')).body.id as number
  // A copy claimed the batch 31 s ago (Redis time) and its process died before finishing.
  const [sec] = await app.redis.time()
  await app.redis.hset(`${app.config.REDIS_KEY_PREFIX}{run:${id}}:batches`, 'orphaned', `pending:dead:${(Number(sec) - 31) * 1000}`)
  const res = await tally.ingest(id, batch('d', 5), { batchId: 'orphaned' })
  t.match(res.body, { created: 5, duplicate: false }, 'the retry applied it')
  t.match((await tally.ingest(id, batch('d', 5), { batchId: 'orphaned' })).body, { duplicate: true })

  // A copy that fails after claiming (here: its shard's marker is gone) leaves no claim behind.
  const markers = await app.redis.keys(`${app.config.REDIS_KEY_PREFIX}*:mark:${id}`)
  await app.redis.unlink(...markers)
  t.match((await tally.ingest(id, batch('e', 2), { batchId: 'failing' })).body, { code: 'run_state_lost' })
  t.equal(await app.redis.hget(`${app.config.REDIS_KEY_PREFIX}{run:${id}}:batches`, 'failing'), null, 'the claim was released')
  await tally.abort(id)
  t.equal(await app.redis.exists(`${app.config.REDIS_KEY_PREFIX}{run:${id}}:batches`), 0, 'the aborted run left no batch records')
})
