/** Every error code of the contract, as problem+json, and bad input changes nothing. */
import t from 'tap'
import { api, bearer, build, liveIds, redisClient, resource, rowVersions, sqlClient, testEnv } from './helper.js'
import { startRedis } from './redis-server.js'
import getPort from 'get-port'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { setTimeout as sleep } from 'node:timers/promises'

const PROBLEM = 'application/problem+json; charset=utf-8'

/** A batch whose one resource's attributes nest `levels` + 1 deep (the object, then `levels` arrays). */
const deep = (levels: number) =>
  `{"resources": [{"id": "a", "type": "t", "attributes": {"k": ${'['.repeat(levels)}${']'.repeat(levels)}}}]}`

t.test('bad input is a 400/413/415 problem and changes nothing', async (t) => {
  const app = await build(t, { MAX_BATCH: '10', BODY_LIMIT: '20000' })
  const db = await sqlClient(t, app)
  const tally = api(app)
  const opened = await tally.open('aws/bad-input')
  const runId = opened.body.id
  const url = `/runs/${runId}/resources`
  const raw = (payload: string, contentType = 'application/json') =>
    app.inject({ method: 'POST', url, payload, headers: { ...bearer(app), 'content-type': contentType } })

  const cases: Array<[string, () => Promise<{ statusCode: number, headers: Record<string, unknown>, json (): any }>, number, string]> = [
    ['malformed JSON', () => raw('{"resources": ['), 400, 'validation_failed'],
    ['empty body', () => raw(''), 400, 'validation_failed'],
    ['no resources', () => raw('{"resources": []}'), 400, 'validation_failed'],
    ['missing type', () => raw('{"resources": [{"id": "a"}]}'), 400, 'validation_failed'],
    ['unknown field', () => raw('{"resources": [{"id": "a", "type": "t", "colour": "red"}]}'), 400, 'validation_failed'],
    ['unknown top-level field', () => raw('{"resources": [{"id": "a", "type": "t"}], "extra": 1}'), 400, 'validation_failed'],
    ['empty id', () => raw('{"resources": [{"id": "", "type": "t"}]}'), 400, 'validation_failed'],
    ['oversize id', () => raw(JSON.stringify({ resources: [{ id: 'x'.repeat(1025), type: 't' }] })), 400, 'validation_failed'],
    ['id over 1,024 bytes (1,000 CJK characters)', () => raw(JSON.stringify({ resources: [{ id: '\u7d22'.repeat(1000), type: 't' }] })), 400, 'validation_failed'],
    ['id over 1,024 bytes beside a good one', () => raw(JSON.stringify({ resources: [{ id: 'good', type: 't' }, { id: '\u7d22'.repeat(400), type: 't' }] })), 400, 'validation_failed'],
    ['type over 256 bytes', () => raw(JSON.stringify({ resources: [{ id: 'a', type: '\u00e9'.repeat(200) }] })), 400, 'validation_failed'],
    ['control character in id', () => raw(JSON.stringify({ resources: [{ id: 'a\u0001b', type: 't' }] })), 400, 'validation_failed'],
    ['non-string tag value', () => raw('{"resources": [{"id": "a", "type": "t", "tags": {"k": 1}}]}'), 400, 'validation_failed'],
    ['more than MAX_BATCH resources', () => raw(JSON.stringify({ resources: Array.from({ length: 11 }, (_, i) => resource(`r${i}`)) })), 413, 'batch_too_large'],
    // Counted before anything walks the resources (5M of them once held the event loop 100 s).
    ['more than MAX_BATCH resources, a bad one among them', () => raw(JSON.stringify({ resources: [resource('r', { attributes: { k: 'x\u0000' } }), ...Array.from({ length: 10 }, (_, i) => ({ id: `r${i}` }))] })), 413, 'batch_too_large'],
    // An escaped key: not split into spans (spans.ts) but parsed whole, and still refused before its values are walked.
    ['more than MAX_BATCH resources in a body parsed whole, a bad one among them', () => raw(JSON.stringify({ resources: [resource('r', { attributes: { k: 'x\u0000' } }), ...Array.from({ length: 10 }, (_, i) => ({ id: `r${i}` }))] }).replace('"resources"', '"\\u0072esources"')), 413, 'batch_too_large'],
    ['body over BODY_LIMIT', () => raw(JSON.stringify({ resources: [resource('a', { attributes: { blob: 'x'.repeat(30000) } })] })), 413, 'batch_too_large'],
    ['wrong content type', () => raw('id,type\na,t', 'text/csv'), 415, 'unsupported_media_type'],
    ['U+0000 in an attribute', () => raw('{"resources": [{"id": "a", "type": "t", "attributes": {"k": "x\\u0000"}}]}'), 400, 'validation_failed'],
    ['U+0000 in an attribute key', () => raw('{"resources": [{"id": "a", "type": "t", "attributes": {"k\\u0000": 1}}]}'), 400, 'validation_failed'],
    ['U+0000 in a tag', () => raw('{"resources": [{"id": "a", "type": "t", "tags": {"k": "\\u0000"}}]}'), 400, 'validation_failed'],
    ['U+0000 in a name', () => raw('{"resources": [{"id": "a", "type": "t", "name": "\\u0000"}]}'), 400, 'validation_failed'],
    ['lone surrogate in an id', () => raw('{"resources": [{"id": "\\ud800", "type": "t"}]}'), 400, 'validation_failed'],
    ['attributes 33 levels deep', () => raw(deep(32)), 400, 'validation_failed'],
    ['attributes 9,000 levels deep (past the stack of a recursive walk)', () => raw(deep(9000)), 400, 'validation_failed'],
    ['__proto__ key', () => raw('{"resources": [{"id": "a", "type": "t", "attributes": {"__proto__": {"x": 1}}}]}'), 400, 'validation_failed'],
    ['U+0000 in a scanner name', () => app.inject({ method: 'POST', url: '/runs', headers: bearer(app), payload: { scope: 'aws/other', scanner: { name: 'a\u0000' } } }), 400, 'validation_failed'],
    ['U+0000 in a skip partition', () => app.inject({ method: 'POST', url: `/runs/${runId}/complete`, headers: bearer(app), payload: { skip: [{ type: '\u0000' }] } }), 400, 'validation_failed']
  ]
  for (const [name, send, status, code] of cases) {
    const res = await send()
    t.equal(res.statusCode, status, `${name}: status`)
    t.equal(res.headers['content-type'], PROBLEM, `${name}: problem+json`)
    t.match(res.json(), { type: `urn:tally:problem:${code}`, title: String, status, detail: String, code }, `${name}: body`)
  }
  const { rows } = await db.query('select count(*)::int as n from resources')
  t.equal(rows[0].n, 0, 'no resource was written')
  t.match((await tally.get(runId)).body, { status: 'open', stats: { seen: 0, batches: 0 } }, 'the run counted nothing and is still open')
  t.equal((await db.query('select count(*)::int as n from runs')).rows[0].n, 1, 'no run was opened')
  const keys = await app.redis.keys(`${app.config.REDIS_KEY_PREFIX}*:ids:*`)
  t.same(keys, [], 'no id reached a seen set')
  t.match((await tally.ingest(runId, [resource('fine', { attributes: { nested: { ok: [1, { deeper: 'yes' }] } } })])).body, { created: 1 },
    'the server still serves well-formed batches')
  t.equal((await raw(deep(31))).statusCode, 200, 'attributes 32 levels deep are fine')
})

t.test('numbers JSON.parse would alter are refused with their place; bytes that are not UTF-8 are refused; nothing is written', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const runId = (await tally.open('aws/numbers')).body.id as number
  const send = (payload: string | Buffer, contentType = 'application/json') =>
    app.inject({ method: 'POST', url: `/runs/${runId}/resources`, payload, headers: { ...bearer(app), 'content-type': contentType } })
  const batch = (attributes: string) => `{"resources": [{"id": "ok", "type": "t"}, {"id": "n", "type": "t", "attributes": ${attributes}}]}`
  const altered: Array<[string, string, string]> = [
    ['{"big": 12345678901234567890}', '/resources/1/attributes/big', '12345678901234567890 would be stored as 12345678901234567000'],
    ['{"ids": [1, 9007199254740993]}', '/resources/1/attributes/ids/1', '9007199254740993 would be stored as 9007199254740992'],
    ['{"a": {"b/c": 0.10000000000000000001}}', '/resources/1/attributes/a/b~1c', '0.10000000000000000001 would be stored as 0.1'],
    ['{"tiny": 1e-400}', '/resources/1/attributes/tiny', '1e-400 would be stored as 0'],
    ['{"huge": 1e309}', '/resources/1/attributes/huge', '1e309 would be stored as null']
  ]
  for (const [attributes, path, what] of altered) {
    const res = await send(batch(attributes))
    t.equal(res.statusCode, 400, `${attributes}: 400`)
    t.match(res.json(), { code: 'validation_failed', detail: `body${path} must be a number JSON can keep: ${what} (send it as a string)`, errors: [{ path }] }, `${attributes}: the place and the number`)
  }
  const lines = await send('{"id":"m","type":"t"}\n{"id":"n","type":"t","attributes":{"big":12345678901234567890}}', 'application/x-ndjson')
  t.match(lines.json(), { status: 400, detail: 'line 2: /attributes/big must be a number JSON can keep: 12345678901234567890 would be stored as 12345678901234567000 (send it as a string)' }, 'NDJSON too')

  // Latin-1 bytes where UTF-8 belongs: "café" and "cafè" would both be read as caf\uFFFD.
  const latin1 = (ids: string[]) => Buffer.concat([Buffer.from('{"resources": ['), ...ids.flatMap((id, i) => [
    Buffer.from(`${i === 0 ? '' : ','}{"id": "`), Buffer.from(id, 'latin1'), Buffer.from('", "type": "t"}')]), Buffer.from(']}')])
  const notUtf8 = await send(latin1(['caf\u00e9', 'caf\u00e8']))
  t.match(notUtf8, { statusCode: 400 })
  t.match(notUtf8.json(), { code: 'validation_failed', detail: 'The body is not valid UTF-8: send JSON as UTF-8 text' }, 'a JSON body that is not UTF-8')
  const lineBytes = Buffer.concat([Buffer.from('{"id":"a","type":"t"}\n{"id":"caf'), Buffer.from([0xe9]), Buffer.from('","type":"t"}\n{"id":"caf'), Buffer.from([0xe8]), Buffer.from('","type":"t"}')])
  t.match((await send(lineBytes, 'application/x-ndjson')).json(), { status: 400, detail: 'line 2 is not valid UTF-8: send NDJSON as UTF-8 text' }, 'an NDJSON line that is not UTF-8')
  const graphql = await app.inject({
    method: 'POST',
    url: '/graphql',
    headers: { ...bearer(app), 'content-type': 'application/json' },
    payload: Buffer.concat([Buffer.from('{"query": "{ scopes { edges { cursor } } } #'), Buffer.from([0xff]), Buffer.from('"}')])
  })
  t.equal(graphql.statusCode, 400, 'any JSON body: GraphQL too')
  t.equal((await db.query('select count(*)::int as n from resources')).rows[0].n, 0, 'nothing was written')

  // Numbers JSON keeps, however written, are fine and stored as the same numbers.
  const kept = '{"int": 9007199254740991, "neg": -12345678901234567000, "long": 1.0000000000000000000, "point": 0.1000000000000000000, "exp": 1e2, "small": 5e-324, "zero": -0.0e-999, "text": "12345678901234567890.5"}'
  t.match((await send(batch(kept))).json(), { received: 2, created: 2 }, 'numbers JSON keeps are taken')
  const { rows } = await db.query("select attributes from resources where id = 'n'")
  t.same(rows[0].attributes, { int: 9007199254740991, neg: -12345678901234567000, long: 1, point: 0.1, exp: 100, small: 5e-324, zero: 0, text: '12345678901234567890.5' })
})

t.test('validation errors a person can act on: the field named, patterns in words, every error listed (bounded)', async (t) => {
  const app = await build(t)
  const tally = api(app)
  const runId = (await tally.open('aws/messages')).body.id
  const post = (url: string, payload: unknown) => app.inject({ method: 'POST', url, payload: payload as object, headers: bearer(app) })

  const unknown = (await post(`/runs/${runId}/resources`, { resources: [{ id: 'a', type: 't', colour: 'red' }] })).json()
  t.equal(unknown.detail, 'body /resources/0: unknown field "colour"')
  t.same(unknown.errors, [{ path: '/resources/0', message: 'unknown field "colour"' }])
  t.equal(unknown.errorCount, 1)

  const missing = (await post(`/runs/${runId}/resources`, { resources: [{ id: 'a' }] })).json()
  t.equal(missing.detail, 'body /resources/0: missing field "type"')

  const scope = (await post('/runs', { scope: 'has space' })).json()
  t.equal(scope.detail, 'body /scope: must be a scope name without whitespace, braces ({ }) or control characters, e.g. aws/123456789012')
  t.notMatch(scope.detail, /\^|\\u/, 'no regular expression')

  // 30 resources each with two faults: all 60 counted, the first 20 listed.
  const many = (await post(`/runs/${runId}/resources`, { resources: Array.from({ length: 30 }, (_, i) => ({ id: `r${i}`, colour: 'red' })) })).json()
  t.equal(many.errorCount, 60)
  t.equal(many.errors.length, 20)
  t.match(many.detail, /^body \/resources\/0: .* \(and 59 more: see errors\)$/)
  t.same(new Set(many.errors.map((e: { message: string }) => e.message)), new Set(['missing field "type"', 'unknown field "colour"']))

  // A large batch (past 500 JSON values) is explained a resource at a time: the first error of
  // each of the first 20 bad ones, all of them counted; an error object per fault would be
  // millions for a 16 MB body.
  const big = (await post(`/runs/${runId}/resources`, { resources: Array.from({ length: 3000 }, (_, i) => i % 3 === 0 ? { id: `r${i}`, colour: 'red' } : { id: `r${i}`, type: 't' }) })).json()
  t.equal(big.errorCount, 1000)
  t.equal(big.errors.length, 20)
  t.same(big.errors.slice(0, 2).map((e: { path: string }) => e.path), ['/resources/0', '/resources/3'])
  t.match(big.detail, /^body \/resources\/0: .* \(and 999 more: see errors\)$/)

  // `content-type: application/json` and no body: no options, as for a POST with no body at all.
  const complete = await app.inject({ method: 'POST', url: `/runs/${runId}/complete`, headers: { ...bearer(app), 'content-type': 'application/json' } })
  t.equal(complete.statusCode, 200, complete.body)
  t.equal(complete.json().status, 'completed')
})

t.test('run and scope errors', async (t) => {
  const app = await build(t, { GUARD_MIN_BASELINE: '2' })
  const tally = api(app)

  const badScopes = ['', 'has space', 'a{b}', 'tab\there', 'x'.repeat(257)]
  for (const scope of badScopes) {
    t.match((await tally.open(scope)).body, { status: 400, code: 'validation_failed' }, `scope ${JSON.stringify(scope.slice(0, 12))}`)
  }
  t.match((await tally.open('aws/ok', { shardCount: 0 })).body, { code: 'validation_failed' })
  t.match((await tally.call('GET', '/runs/abc')).body, { status: 400, code: 'validation_failed' })
  t.match((await tally.call('GET', '/runs?limit=0')).body, { status: 400, code: 'validation_failed' })
  t.match((await tally.call('GET', '/runs?cursor=not*valid')).body, { status: 400, code: 'validation_failed' })
  // Of the cursor's form, but not one this server issued (a string key where runs page by id).
  t.match((await tally.call('GET', `/runs?cursor=${Buffer.from('["x"]').toString('base64url')}`)).body, { status: 400, code: 'validation_failed', detail: /cursor/ })
  t.match((await tally.get(999999)).body, { status: 404, code: 'run_not_found' })
  t.match((await tally.ingest(999999, [resource('a')])).body, { status: 404, code: 'run_not_found' })
  t.match((await tally.complete(999999)).body, { status: 404, code: 'run_not_found' })
  t.match((await tally.abort(999999)).body, { status: 404, code: 'run_not_found' })
  // Abort takes no options, but a body sent to it is value-checked like any route's: refused before anything runs.
  t.match((await tally.call('POST', '/runs/999999/abort', { note: 'a\u0000b' })).body, { status: 400, code: 'validation_failed' })
  t.match((await tally.call('GET', '/nowhere')).body, { status: 404, code: 'not_found' })

  const first = await tally.open('aws/errors')
  const conflict = await tally.open('aws/errors')
  t.equal(conflict.status, 409)
  t.match(conflict.body, { code: 'scope_has_open_run', openRunId: first.body.id, detail: new RegExp(`run ${first.body.id}`) })
  const superseding = await tally.open('aws/errors', { supersede: true })
  t.equal(superseding.status, 201)
  t.equal((await tally.get(first.body.id)).body.status, 'aborted', 'supersede aborted the open run')
  t.match((await tally.ingest(first.body.id, [resource('a')])).body, { status: 409, code: 'run_not_open' })

  const runId = superseding.body.id
  await tally.ingest(runId, [resource('a'), resource('b'), resource('c')])
  const mismatch = await tally.complete(runId, { expectedResources: 4 })
  t.match(mismatch.body, { status: 422, code: 'expected_count_mismatch', seen: 3, expected: 4 })
  t.equal((await tally.get(runId)).body.status, 'open', 'a mismatch leaves the run open')
  t.match((await tally.complete(runId, { expectedResources: 3 })).body, { status: 'completed', stats: { seen: 3 } })
  t.match((await tally.abort(runId)).body, { status: 409, code: 'run_not_open' })
  t.match((await tally.ingest(runId, [resource('d')])).body, { status: 409, code: 'run_not_open' })

  const guarded = await tally.open('aws/errors')
  await tally.ingest(guarded.body.id, [resource('a')])
  t.match((await tally.complete(guarded.body.id)).body, { status: 422, code: 'mass_deletion_guard' })
})

t.test('a run whose Redis state is lost refuses to complete: run_state_lost', async (t) => {
  const app = await build(t)
  const tally = api(app)
  await tally.scan('aws/lost-state', [resource('a'), resource('b')])
  const opened = await tally.open('aws/lost-state', { shardCount: 4 })
  await tally.ingest(opened.body.id, [resource('a')])
  // One shard's marker vanishes, as after a Redis restart or failover.
  const markers = await app.redis.keys(`${app.config.REDIS_KEY_PREFIX}*:mark:${opened.body.id}`)
  t.equal(markers.length, 4)
  await app.redis.unlink(markers[0]!)
  const res = await tally.complete(opened.body.id)
  t.match(res.body, { status: 409, code: 'run_state_lost' })
  const ingest = await tally.ingest(opened.body.id, Array.from({ length: 40 }, (_, i) => resource(`x${i}`)))
  t.match(ingest.body, { status: 409, code: 'run_state_lost' }, 'batches that reach the lost shard are refused too')
  const db = await sqlClient(t, app)
  const { rows } = await db.query('select count(*)::int as n from resources where deleted_at is null')
  t.equal(rows[0].n, 2, 'nothing was deleted')
  t.equal((await tally.abort(opened.body.id)).status, 200, 'the scanner can abort and rescan')
})

t.test('Redis down: 503 unavailable with Retry-After, no internals, and readyz says so', async (t) => {
  const redis = await startRedis(t)
  const env = await testEnv(t)
  const app = await build(t, { REDIS_URL: redis.url }, env)
  const tally = api(app)
  const opened = await tally.open('aws/outage')
  t.equal((await tally.call('GET', '/readyz')).status, 200)
  await redis.stop()
  const res = await app.inject({ method: 'POST', url: `/runs/${opened.body.id}/resources`, headers: bearer(app), payload: { resources: [resource('a')] } })
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '1')
  t.equal(res.headers['content-type'], PROBLEM)
  t.same(res.json(), {
    type: 'urn:tally:problem:unavailable',
    title: 'A dependency is unavailable; retry later',
    status: 503,
    detail: 'Postgres or Redis is unreachable; retry the request',
    code: 'unavailable'
  })
  const ready = await tally.call('GET', '/readyz')
  t.match(ready, { status: 503, body: { code: 'unavailable' } })
  t.match((await tally.call('GET', '/healthz')).body, { status: 'ok' })
  const started = Date.now()
  t.match(await tally.call('POST', '/graphql', { query: '{ scopes { edges { node { scope } } } }' }),
    { status: 200, body: { data: { scopes: { edges: [{ node: { scope: 'aws/outage' } }] } } } }, 'reads of Postgres go on')
  t.comment(`a GraphQL read with Redis down: ${Date.now() - started} ms`)

  // Redis comes back (empty: its state is lost): ready again, and the run says so.
  await redis.start()
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(50)) {
    if ((await tally.call('GET', '/readyz')).status === 200) break
  }
  t.equal((await tally.call('GET', '/readyz')).status, 200, 'ready again')
  t.match((await tally.ingest(opened.body.id, [resource('a')])).body, { status: 409, code: 'run_state_lost' })
})

t.test('a full Redis (noeviction): writes 503 with Retry-After and change nothing, reads go on, readyz says so; freed, everything goes on', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, RATE_LIMIT_MAX: '1000' })
  const tally = api(app)
  const db = await sqlClient(t, app)
  const scope = 'aws/full-redis'
  await tally.scan(scope, [resource('a'), resource('b')])
  const run = (await tally.open(scope)).body.id as number
  // Another client's 2 MB, then maxmemory set 1 MB below what Redis holds: full, whatever its
  // buffers do meanwhile (at the edge, a Redis is full one moment and not the next).
  const filler = redisClient(t, redis.url)
  for (let i = 0; i < 200; i++) await filler.set(`junk:${i}`, 'x'.repeat(10_000))
  const used = Number(/used_memory:(\d+)/.exec(await filler.info('memory'))![1])
  await filler.config('SET', 'maxmemory', String(used - 1_000_000))
  const before = await rowVersions(db, scope)
  const writes = {
    batch: () => tally.ingest(run, [resource('a', { name: 'changed' }), resource('c')], { batchId: 'one' }),
    complete: () => tally.complete(run),
    open: () => tally.open('aws/another-scope')
  }
  for (const [what, call] of Object.entries(writes)) {
    const res = await call()
    t.match(res, { status: 503, headers: { 'retry-after': '1' }, body: { code: 'unavailable' } }, `${what}: 503 unavailable, Retry-After`)
  }
  t.same(await rowVersions(db, scope), before, 'no row written')
  t.same((await db.query('select scope, status from runs order by id')).rows, [{ scope, status: 'completed' }, { scope, status: 'open' }], 'no run opened or finished')
  // Reads: the rate limit cannot count them (its INCR is a write) and lets them through.
  t.match(await tally.call('GET', '/runs'), { status: 200, body: { items: [{ id: run, status: 'open' }, { status: 'completed' }] } }, 'GET /runs')
  t.match(await tally.get(run), { status: 200, body: { id: run, stats: { seen: 0 } } }, 'GET /runs/:id, its live counts read from Redis')
  t.match(await tally.call('POST', '/graphql', { query: '{ scopes { edges { node { scope resourceCount } } } }' }),
    { status: 200, body: { data: { scopes: { edges: [{ node: { scope, resourceCount: 2 } }] } } } }, 'GraphQL')
  t.match(await tally.call('GET', '/readyz'), { status: 503, body: { code: 'unavailable', detail: /^Redis refuses writes: OOM/ } }, 'unready while full')

  // Memory freed (the other client's keys deleted): the same requests, retried, go through.
  await filler.unlink(...await filler.keys('junk:*'))
  t.equal((await tally.call('GET', '/readyz')).status, 200, 'ready again once freed')
  t.match((await writes.batch()).body, { received: 2, created: 1, updated: 1 }, 'the batch, retried')
  t.match((await writes.complete()).body, { status: 'completed', stats: { seen: 2, deleted: 1 } }, 'the completion, retried')
  t.equal((await writes.open()).status, 201, 'the open, retried')
  t.same(await liveIds(db, scope), ['a', 'c'])
})

t.test('Postgres unreachable: 503 unavailable, and readyz says so', async (t) => {
  const port = await getPort({ host: '127.0.0.1' })
  const app = await build(t, { DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/none`, MIGRATE_ON_START: 'false' })
  const tally = api(app)
  const res = await app.inject({ method: 'POST', url: '/runs', headers: bearer(app), payload: { scope: 'aws/no-pg' } })
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '1')
  t.match(res.json(), { code: 'unavailable', detail: 'Postgres or Redis is unreachable; retry the request' })
  t.notMatch(res.body, /ECONNREFUSED|127\.0\.0\.1/, 'no internals')
  t.match(await tally.call('GET', '/readyz'), { status: 503, body: { code: 'unavailable' } })
  const graphql = await tally.call('POST', '/graphql', { query: '{ scopes { edges { node { scope } } } }' })
  t.match(graphql, { status: 503, body: { errors: [{ message: 'Postgres is unreachable; retry the request', extensions: { code: 'UNAVAILABLE' } }] } },
    'GraphQL says so too')
})

t.test('a 4xx keeps its status and gets the code that names it', async (t) => {
  // The real app, and one route of the test's own that fails as a plugin would (a rate limiter,
  // an authentication hook): every 4xx must go out with its own status.
  const app = await buildApp(loadConfig(await testEnv(t)))
  t.teardown(() => app.close())
  app.get('/test-failure/:status', { config: { auth: 'public' } }, async (request) => {
    const status = Number((request.params as { status: string }).status)
    throw Object.assign(new Error(`failed with ${status}`), { statusCode: status })
  })
  await app.ready()
  const expected: Array<[number, string]> = [
    [400, 'validation_failed'], [401, 'unauthorized'], [403, 'forbidden'], [405, 'method_not_allowed'],
    [406, 'not_acceptable'], [409, 'client_error'], [418, 'client_error'], [429, 'rate_limited']
  ]
  for (const [status, code] of expected) {
    const res = await app.inject({ method: 'GET', url: `/test-failure/${status}` })
    t.equal(res.statusCode, status, `${status} stays ${status}`)
    t.equal(res.headers['content-type'], PROBLEM)
    t.match(res.json(), { status, code, detail: `failed with ${status}` }, `${status}: ${code}`)
  }
  const unauthorized = await app.inject({ method: 'GET', url: '/test-failure/401' })
  t.equal(unauthorized.headers['www-authenticate'], 'Bearer', 'a 401 says how to authenticate')
  const server = await app.inject({ method: 'GET', url: '/test-failure/500' })
  t.match(server.json(), { status: 500, code: 'internal', detail: 'An internal error occurred; it has been logged' }, 'no internals in a 5xx')
})

t.test('a Redis that may evict keys is refused at start, and makes /readyz unready', async (t) => {
  const evicting = await startRedis(t, ['--maxmemory-policy', 'allkeys-lru'])
  await t.rejects(buildApp(loadConfig({ ...await testEnv(t), REDIS_URL: evicting.url })),
    /maxmemory-policy allkeys-lru.*needs maxmemory-policy noeviction/, 'the server does not start, and says why')

  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url })
  const tally = api(app)
  t.equal((await tally.call('GET', '/readyz')).status, 200)
  await app.redis.config('SET', 'maxmemory-policy', 'volatile-lru')
  t.match(await tally.call('GET', '/readyz'), { status: 503, body: { code: 'unavailable', detail: /maxmemory-policy volatile-lru/ } },
    'changed at run time: unready')
  await app.redis.config('SET', 'maxmemory-policy', 'noeviction')
  t.equal((await tally.call('GET', '/readyz')).status, 200, 'ready again')
})

t.test('an open that fails while writing its markers leaves no marker behind', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url })
  const admin = redisClient(t, redis.url)
  // The server's Redis user may write the run's hash and shards 0–2 of the scope, not shard 3:
  // the open fails after some of its markers were written.
  await admin.call('ACL', 'SETUSER', 'default', 'resetkeys', '~*{run:*}*', '~*/0}*', '~*/1}*', '~*/2}*')
  const res = await api(app).open('aws/half-open', { shardCount: 4 })
  await admin.call('ACL', 'SETUSER', 'default', 'allkeys')
  t.not(res.status, 201, 'the open failed')
  t.same(await admin.keys(`${app.config.REDIS_KEY_PREFIX}*`), [], 'and left no key: no marker, no run hash')
  t.equal((await api(app).open('aws/half-open', { shardCount: 4 })).status, 201, 'a retry opens the run')
})
