/**
 * NDJSON batches (`content-type: application/x-ndjson` on POST /runs/:id/resources): one
 * resource per line, read as a stream a lot at a time; a line byte for byte what the scope was
 * last sent for its id is recognised without being parsed or checked; everything else is
 * parsed, checked and counted as a JSON batch's resources are.
 */
import t from 'tap'
import { api, bearer, build, liveIds, resource, rowVersions, sqlClient, type App, type ResourceBody } from './helper.js'

const NDJSON = 'application/x-ndjson'
const estate = (n: number, extra: Partial<ResourceBody> = {}): ResourceBody[] => Array.from({ length: n }, (_, i) =>
  resource(`arn:aws:s3:::bucket-${String(i).padStart(3, '0')}`, { attributes: { n: i }, ...extra }))
const ndjson = (resources: object[]) => resources.map((r) => JSON.stringify(r)).join('\n') + '\n'

/** Posts a body of this media type (NDJSON unless told) to a run's resources. */
function lines (app: App, type = NDJSON) {
  return async (runId: number, payload: string, headers: Record<string, string> = {}) => {
    const res = await app.inject({ method: 'POST', url: `/runs/${runId}/resources`, headers: { ...bearer(app), 'content-type': type, ...headers }, payload })
    return { status: res.statusCode, body: res.json(), type: res.headers['content-type'] }
  }
}

/** Counts the resources the app parses and checks (its Ajv resource check is called once for each). */
function countChecks (app: App): { n: number } {
  const counter = { n: 0 }
  const check = app.validateResource
  const counted = Object.assign((value: unknown) => { counter.n++; return check(value) }, check)
  Object.defineProperty(counted, 'errors', { get: () => check.errors })
  app.validateResource = counted as typeof check
  return counter
}

/** A scan of one request: open, post the body (NDJSON unless told), complete. */
async function scanLines (app: App, scope: string, payload: string, type = NDJSON) {
  const tally = api(app)
  const run = (await tally.open(scope)).body.id as number
  const sent = await lines(app, type)(run, payload)
  const done = await tally.complete(run)
  return { sent, done: done.body }
}

/** Resources as a JSON body that is not split into spans (a key written with an escape): read whole, as objects. */
const wholeJson = (resources: object[]) => JSON.stringify({ resources }).replace('"resources"', '"\\u0072esources"')

t.test('identical lines are recognised without parsing; changed, reordered and whole-JSON-sent ones are compared by content', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const checks = countChecks(app)
  const scope = 'aws/ndjson'
  const resources = estate(300)

  // First sent as a JSON body read whole: the cache holds the contents' values.
  const first = await scanLines(app, scope, wholeJson(resources), 'application/json')
  t.match(first.sent, { status: 200, body: { created: 300 } })
  const before = await rowVersions(db, scope)

  // The same resources as lines: parsed once (the cache knows no line yet), all unchanged.
  checks.n = 0
  const second = await scanLines(app, scope, ndjson(resources))
  t.match(second.sent, { status: 200, body: { received: 300, created: 0, updated: 0, unchanged: 300, duplicate: false } })
  t.match(second.done, { status: 'completed', stats: { seen: 300, unchanged: 300, deleted: 0 } })
  t.equal(checks.n, 300, 'every line parsed and checked once')
  t.same(await rowVersions(db, scope), before, 'no row written or locked')

  // The same bytes again: recognised, none parsed.
  checks.n = 0
  const third = await scanLines(app, scope, ndjson(resources))
  t.match(third.sent.body, { received: 300, unchanged: 300 })
  t.equal(checks.n, 0, 'no line parsed or checked')
  t.same(await rowVersions(db, scope), before)

  // Ten renamed, ten with their keys in reverse order (same content; the id last), one new, one gone.
  checks.n = 0
  const next = resources.slice(1).map((r, i) => i < 10
    ? { ...r, name: 'renamed' }
    : i < 20 ? Object.fromEntries(Object.entries(r).reverse()) : r)
  next.push(resource('arn:aws:s3:::bucket-new'))
  const fourth = await scanLines(app, scope, ndjson(next))
  t.match(fourth.sent.body, { received: 300, created: 1, updated: 10, unchanged: 289 })
  t.match(fourth.done, { stats: { seen: 300, deleted: 1 } })
  t.equal(checks.n, 21, 'only the 21 lines with other bytes were parsed')
  const after = await rowVersions(db, scope)
  t.equal([...after].filter(([id, v]) => before.get(id) !== v).length, 12, 'written: the 10 renamed, the new one, the deleted one')
  t.equal((await liveIds(db, scope)).length, 300)
})

t.test('a JSON batch is split into its resources: identical bytes recognised unparsed, as lines are', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const checks = countChecks(app)
  const scope = 'aws/json-spans'
  const resources = estate(300)
  const tally = api(app)

  t.match(await tally.scan(scope, resources), { stats: { created: 300 } })
  t.equal(checks.n, 300, 'a first load: every resource parsed and checked')
  const before = await rowVersions(db, scope)

  // The same body again: none parsed, nothing written.
  checks.n = 0
  t.match(await tally.scan(scope, resources), { stats: { seen: 300, unchanged: 300 } })
  t.equal(checks.n, 0, 'no resource parsed or checked')
  t.same(await rowVersions(db, scope), before)

  // The same bytes as NDJSON lines: recognised too.
  t.match((await scanLines(app, scope, ndjson(resources))).sent.body, { unchanged: 300 })
  t.equal(checks.n, 0, 'no line parsed or checked')

  // Pretty-printed: other bytes, so parsed once and compared by content; then recognised.
  for (const parsed of [300, 0]) {
    checks.n = 0
    const { sent, done } = await scanLines(app, scope, JSON.stringify({ batchId: 'pretty', resources }, null, 2), 'application/json')
    t.match(sent.body, { received: 300, created: 0, updated: 0, unchanged: 300 })
    t.match(done, { stats: { seen: 300, deleted: 0 } })
    t.equal(checks.n, parsed, `${parsed} parsed`)
  }
  t.same(await rowVersions(db, scope), before, 'no row written or locked by any of these scans')

  // Ten renamed, ten with the id last (parsed, compared by content), a bad one refused as a whole body is.
  checks.n = 0
  const next = resources.map((r, i) => i < 10 ? { ...r, name: 'renamed' } : i < 20 ? Object.fromEntries(Object.entries(r).reverse()) as ResourceBody : r)
  const run = (await tally.open(scope)).body.id as number
  const bad = await tally.ingest(run, [...next.slice(0, 150), { ...next[150]!, colour: 'red' } as unknown as ResourceBody, ...next.slice(151)])
  t.match(bad, { status: 400, body: { code: 'validation_failed', detail: 'body /resources/150: unknown field "colour"' } })
  // A batch id its schema refuses refuses a split body as it does a whole one, before anything is read.
  for (const batchId of ['has space', '', 'x'.repeat(129)]) {
    t.match(await tally.ingest(run, next, { batchId }), { status: 400, body: { code: 'validation_failed', detail: /^body \/batchId/ } }, JSON.stringify(batchId))
  }
  t.match((await tally.ingest(run, next)).body, { received: 300, updated: 10, unchanged: 290 })
  t.match((await tally.complete(run)).body, { stats: { seen: 300, updated: 10, deleted: 0 } })
  const after = await rowVersions(db, scope)
  t.equal([...after].filter(([id, v]) => before.get(id) !== v).length, 10, 'written: the 10 renamed')
})

t.test('a body far larger than BODY_LIMIT streams through, a lot of MAX_BATCH lines at a time', async (t) => {
  const app = await build(t, { BODY_LIMIT: '4096', MAX_BATCH: '50' })
  const db = await sqlClient(t, app)
  const payload = ndjson(estate(500))
  t.ok(Buffer.byteLength(payload) > 10 * 4096, `${Buffer.byteLength(payload)} bytes`)
  const { sent, done } = await scanLines(app, 'aws/stream', payload)
  t.match(sent.body, { received: 500, created: 500 })
  t.match(done, { stats: { seen: 500, created: 500, batches: 10 } }, 'ten lots of 50, each a batch')
  t.equal((await liveIds(db, 'aws/stream')).length, 500)
})

t.test('lines parsed as JSON bodies are: blank lines skipped, the id anywhere, CRLF endings', async (t) => {
  const app = await build(t)
  const send = lines(app)
  const run = (await api(app).open('aws/forms')).body.id as number
  const payload = '{"type":"t","id":"later"}\r\n\n  \n{"id":"first","type":"t"}\r\n{"id":"esc\\"aped","type":"t"}'
  t.match(await send(run, payload), { status: 200, body: { received: 3, created: 3 } })
})

t.test('a bad line: a 400 that names it; the lots before it stay applied and are counted', async (t) => {
  const app = await build(t, { MAX_BATCH: '10' })
  const db = await sqlClient(t, app)
  const tally = api(app)
  const send = lines(app)
  const run = (await tally.open('aws/bad-lines')).body.id as number
  const good = ndjson(estate(25)).split('\n')
  const cases: Array<[string, RegExp]> = [
    ['{"id":"x","type":', /line 17 is not JSON/],
    ['["an", "array"]', /line 17 must be a JSON object/],
    ['{"id":"x"}', /line 17: missing field "type"/],
    ['{"id":"x","type":"t","extra":1}', /line 17: unknown field "extra"/],
    ['{"id":"x","type":"t","attributes":{"a":"\\u0000"}}', /line 17: \/attributes\/a/],
    ['{"id":"x","type":"t","id":"y"}', /line 17: its id "y" is not the one it begins with/]
  ]
  for (const [line, detail] of cases) {
    const payload = [...good.slice(0, 16), line, ...good.slice(17)].join('\n')
    const res = await send(run, payload)
    t.equal(res.status, 400, line)
    t.match(res.type, /^application\/problem\+json/)
    t.match(res.body, { code: 'validation_failed', detail, appliedLines: 10 })
  }
  t.match((await tally.complete(run)).body, { stats: { seen: 10, created: 10 } }, 'the first lot of ten, once, and nothing of the others')
  t.equal((await liveIds(db, 'aws/bad-lines')).length, 10)

  const empty = await send((await tally.open('aws/no-lines')).body.id as number, '\n\n')
  t.match(empty, { status: 400, body: { code: 'validation_failed', detail: /no resource/ } })
})

t.test('with an Idempotency-Key, a replayed NDJSON request applies and counts once', async (t) => {
  const app = await build(t, { MAX_BATCH: '40' })
  const tally = api(app)
  const send = lines(app)
  const run = (await tally.open('aws/replay-lines')).body.id as number
  const payload = ndjson(estate(100))
  const first = await send(run, payload, { 'idempotency-key': 'scan-7' })
  const again = await send(run, payload, { 'idempotency-key': 'scan-7' })
  t.match(first.body, { received: 100, created: 100, duplicate: false })
  t.match(again.body, { received: 100, created: 100, duplicate: true }, 'every lot answered from its first result')
  t.match((await tally.complete(run)).body, { stats: { seen: 100, created: 100, batches: 3 } })
})

t.test('the OpenAPI document offers both media types', async (t) => {
  const app = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
  const body = doc.paths['/runs/{id}/resources'].post.requestBody.content
  t.same(Object.keys(body).sort(), ['application/json', NDJSON])
  t.equal(body[NDJSON].schema.type, 'string')
})
