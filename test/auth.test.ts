/**
 * Authentication, tenant isolation and abuse limits, tried as an outsider would (issue 13):
 * every route without a key and with a bad, revoked, wrong-role or other tenant's key; the
 * two-request wipe; GraphQL bombs answered within a second while /healthz keeps answering;
 * rate limits shared by two instances; the caps on open runs, shard counts and bodies.
 */
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { pino } from 'pino'
import t from 'tap'
import { buildApp } from '../src/app.js'
import { generateKey } from '../src/auth/keys.js'
import { loadConfig } from '../src/config.js'
import { logOptions } from '../src/log.js'
import { adminKey, api, bearer, build, createKey, gql, liveIds, resource, sqlClient, testEnv, type App } from './helper.js'

const PROBLEM = 'application/problem+json; charset=utf-8'
const ids = (n: number, prefix = 'r') => Array.from({ length: n }, (_, i) => resource(`${prefix}-${String(i).padStart(5, '0')}`))

/** Every route of the API but the public ones, with a body that would be valid. */
const routes = (runId: number): Array<[string, 'GET' | 'POST', string, object | undefined]> => [
  ['open a run', 'POST', '/runs', { scope: 'aws/victim' }],
  ['list runs', 'GET', '/runs', undefined],
  ['read a run', 'GET', `/runs/${runId}`, undefined],
  ['post a batch', 'POST', `/runs/${runId}/resources`, { resources: [resource('planted')] }],
  ['complete', 'POST', `/runs/${runId}/complete`, { force: true }],
  ['abort', 'POST', `/runs/${runId}/abort`, undefined],
  ['GraphQL over POST', 'POST', '/graphql', { query: '{ scopes { edges { node { scope } } } }' }],
  ['GraphQL over GET', 'GET', `/graphql?query=${encodeURIComponent('{ scopes { edges { node { scope } } } }')}`, undefined]
]

t.test('every route wants a key; a bad, unknown or revoked one is a 401 that says Bearer', async (t) => {
  const app = await build(t, { AUTH_CACHE_TTL: '0' })
  const db = await sqlClient(t, app)
  const admin = api(app)
  await admin.scan('aws/victim', ids(20))
  const runId = (await admin.open('aws/victim')).body.id as number
  const revoked = await createKey(app, { tenant: 'default', role: 'admin' })
  await app.db.keys.revoke(revoked.split('_')[1]!)
  const unknown = `tally_0123456789abcdef_${'A'.repeat(43)}`
  const tamperedSecret = adminKey(app).slice(0, -1) + (adminKey(app).endsWith('A') ? 'B' : 'A')

  const attempts: Array<[string, Record<string, string>]> = [
    ['no Authorization header', {}],
    ['Basic instead of Bearer', { authorization: 'Basic YWRtaW46YWRtaW4=' }],
    ['not a Tally key', { authorization: 'Bearer hunter2' }],
    ['an unknown key', { authorization: `Bearer ${unknown}` }],
    ["a known key's id with a wrong secret", { authorization: `Bearer ${tamperedSecret}` }],
    ['a revoked key', { authorization: `Bearer ${revoked}` }]
  ]
  for (const [route, method, url, payload] of routes(runId)) {
    for (const [what, headers] of attempts) {
      const res = await app.inject({ method, url, headers, ...(payload === undefined ? {} : { payload }) })
      t.equal(res.statusCode, 401, `${route}, ${what}: 401`)
      t.match(res.headers['www-authenticate'], /^Bearer realm="tally"/, `${route}, ${what}: says Bearer`)
      if (url.startsWith('/graphql')) t.match(res.json(), { errors: [{ extensions: { code: 'UNAUTHORIZED' } }] })
      else t.match(res.json(), { status: 401, code: 'unauthorized' })
    }
  }
  t.same(await liveIds(db, 'aws/victim'), ids(20).map((r) => r.id), 'nothing changed')
  t.match((await admin.get(runId)).body, { status: 'open', stats: { seen: 0 } }, 'the run is as it was')

  // The public routes need no key.
  for (const url of ['/healthz', '/readyz', '/openapi.json', '/openapi.yaml', '/docs/', '/graphiql']) {
    t.equal((await app.inject({ url })).statusCode, 200, `${url} is public`)
  }
  const doc = (await app.inject({ url: '/openapi.json' })).json()
  t.match(doc.components.securitySchemes, { apiKey: { type: 'http', scheme: 'bearer' } }, 'the document says how to authenticate')
  t.same(doc.paths['/runs'].post.security, [{ apiKey: [] }])
})

t.test('roles: a reader reads, a scanner scans, only an admin destroys; scope globs hold', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const admin = api(app)
  await admin.scan('aws/victim', ids(1000))
  const reader = await createKey(app, { tenant: 'default', role: 'reader' })
  const scanner = await createKey(app, { tenant: 'default', role: 'scanner' })
  const asReader = api(app, reader)
  const asScanner = api(app, scanner)

  // A reader: GET routes and GraphQL; nothing that writes.
  t.equal((await asReader.call('GET', '/runs')).status, 200)
  t.match(await asReader.call('POST', '/graphql', { query: '{ summary(scope: "aws/victim") { total } }' }), { status: 200, body: { data: { summary: { total: 1000 } } } })
  t.match(await asReader.open('aws/victim'), { status: 403, body: { code: 'forbidden', detail: /reader key may not call POST \/runs/ } })

  // A scanner: runs, not GraphQL, and none of the destructive options.
  const gql = await asScanner.call('POST', '/graphql', { query: '{ scopes { edges { node { scope } } } }' })
  t.match(gql, { status: 403, body: { errors: [{ extensions: { code: 'FORBIDDEN' } }] } }, 'a scanner does not read the inventory')
  t.match(await asScanner.open('aws/victim', { supersede: true }), { status: 403, body: { code: 'forbidden', detail: /supersede needs an admin key/ } })
  const run = await asScanner.open('aws/victim')
  t.equal(run.status, 201)
  t.match(await asScanner.complete(run.body.id, { force: true }), { status: 403, body: { detail: /force needs an admin key/ } })
  t.match(await asScanner.complete(run.body.id, { maxDeleteRatio: 1 }), { status: 403, body: { detail: /maxDeleteRatio above 0.5/ } })
  t.match(await asScanner.complete(run.body.id, { maxDeleteRatio: 0.5 }), { status: 422, body: { code: 'mass_deletion_guard' } },
    'the configured ratio is the most a scanner may ask for, and the guard holds')
  t.same((await liveIds(db, 'aws/victim')).length, 1000, 'the two-request wipe by a scanner key deletes nothing')

  // Scope globs: a scanner for aws/1* only.
  const narrow = api(app, await createKey(app, { tenant: 'default', role: 'scanner', scopes: ['aws/1*'] }))
  t.equal((await narrow.open('aws/123')).status, 201, 'a scope its glob matches')
  t.match(await narrow.open('gcp/123'), { status: 403, body: { code: 'forbidden', detail: /restricted to scopes aws\/1\*/ } })
  t.match(await narrow.get(run.body.id), { status: 403, body: { code: 'forbidden' } }, 'a run outside its scopes')
  t.match(await narrow.call('GET', '/runs?scope=aws/victim'), { status: 403 })
  const listed = (await narrow.call('GET', '/runs')).body.items.map((r: { scope: string }) => r.scope)
  t.same([...new Set(listed)], ['aws/123'], 'listing shows only its scopes')
  const narrowReader = api(app, await createKey(app, { tenant: 'default', role: 'reader', scopes: ['aws/1*'] }))
  t.match((await narrowReader.call('POST', '/graphql', { query: '{ resources(scope: "aws/victim") { edges { cursor } } }' })).body,
    { errors: [{ extensions: { code: 'FORBIDDEN' } }] })
  const scopes = await narrowReader.call('POST', '/graphql', { query: '{ scopes { edges { node { scope } } } runs { edges { node { scope } } } }' })
  t.same(scopes.body.data.scopes.edges.map((e: any) => e.node.scope), ['aws/123'])
  t.same([...new Set(scopes.body.data.runs.edges.map((e: any) => e.node.scope))], ['aws/123'])
  t.same(await narrowReader.call('POST', '/graphql', { query: `{ run(id: ${run.body.id}) { id } }` }).then((r) => r.body.data), { run: null })
})

t.test("tenants: another tenant's runs do not exist, and same-named scopes are independent", async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const victim = api(app)
  await victim.scan('aws/shared', ids(1000))
  const open = (await victim.open('aws/shared')).body.id as number
  await victim.ingest(open, ids(10))
  const strangerKey = await createKey(app, { tenant: 'acme', role: 'admin' })
  const stranger = api(app, strangerKey)

  // The victim's run: every route answers as for a run that does not exist.
  const missing = await stranger.get(999_999)
  for (const [route, method, url, payload] of routes(open).filter(([, , url]) => url.startsWith(`/runs/${open}`))) {
    const res = await stranger.call(method, url, payload)
    t.equal(res.status, 404, `${route}: 404`)
    t.same({ ...res.body, detail: undefined }, { ...missing.body, detail: undefined }, `${route}: the same answer as a run that never existed`)
    t.equal(res.body.detail, `Run ${open} does not exist`)
  }
  t.match((await victim.get(open)).body, { status: 'open', stats: { seen: 10 } }, 'the run is untouched')
  t.same((await stranger.call('GET', '/runs')).body.items, [], 'nothing listed')

  // The two-request wipe by another tenant's admin: it wipes its own, empty, scope of that name.
  const theirs = await stranger.open('aws/shared', { supersede: true })
  t.equal(theirs.status, 201, "a scope of the same name, the stranger's own")
  t.equal(theirs.body.baselineRunId, null, "with no baseline: not the victim's")
  await stranger.ingest(theirs.body.id, [resource('acme-1'), resource('r-00000', { attributes: { size: 'other' } })])
  t.match((await stranger.complete(theirs.body.id, { force: true })).body, { status: 'completed', stats: { seen: 2, created: 2, deleted: 0 } })
  t.same((await liveIds(db, 'aws/shared')).length, 1000 + 2, 'both inventories are there')
  const { rows } = await db.query("select tenant, count(*)::int as n from resources where scope = 'aws/shared' and deleted_at is null group by tenant order by tenant")
  t.same(rows, [{ tenant: 'acme', n: 2 }, { tenant: 'default', n: 1000 }])
  t.match((await victim.complete(open, { force: true })).body.stats, { seen: 10, deleted: 990 }, "the victim's own completion sees only its inventory")

  const q = '{ summary(scope: "aws/shared") { total } scopes { edges { node { scope resourceCount } } } resource(scope: "aws/shared", id: "r-00000") { attributes } }'
  t.same((await stranger.call('POST', '/graphql', { query: q })).body.data, {
    summary: { total: 2 }, scopes: { edges: [{ node: { scope: 'aws/shared', resourceCount: 2 } }] }, resource: { attributes: { size: 'other' } }
  }, 'GraphQL shows each tenant its own')
  t.same((await stranger.call('POST', '/graphql', { query: `{ run(id: ${open}) { id } }` })).body.data, { run: null })
  const keys = await app.redis.keys(`${app.config.REDIS_KEY_PREFIX}{acme/*`)
  t.ok(keys.length > 0 && keys.every((k) => k.includes('{acme/aws/shared/')), "the stranger's Redis keys carry its tenant")
})

t.test('destructive actions are logged with the key id; error log lines stay short', async (t) => {
  const lines: string[] = []
  const sink = new Writable({ write (chunk, _enc, done) { lines.push(...String(chunk).split('\n').filter(Boolean)); done() } })
  const env = await testEnv(t)
  const app = await buildApp(loadConfig({ ...env, LOG_LEVEL: 'info' }), pino(logOptions('info'), sink))
  t.teardown(() => app.close())
  await app.ready()
  const key = await createKey(app as App, { tenant: 'default', role: 'admin' })
  const keyId = key.split('_')[1]
  const admin = { inject: (method: 'POST', url: string, payload?: object) => app.inject({ method, url, headers: { authorization: `Bearer ${key}` }, ...(payload === undefined ? {} : { payload }) }) }
  const opened = (await admin.inject('POST', '/runs', { scope: 'aws/logged' })).json()
  await admin.inject('POST', `/runs/${opened.id}/complete`, { force: true })
  await admin.inject('POST', '/runs', { scope: 'aws/logged', supersede: true })
  const logged = lines.map((l) => JSON.parse(l)).filter((l) => typeof l.msg === 'string' && l.msg.startsWith('destructive action'))
  t.match(logged, [{ keyId, action: 'complete', force: true, runId: opened.id }, { keyId, action: 'supersede', scope: 'aws/logged' }])

  // A batch whose write fails in Postgres: the error carries the statement's parameters.
  const db = await sqlClient(t, app as App)
  await db.query(`create function refuse() returns trigger language plpgsql as $$ begin raise exception 'refused'; end $$;
    create trigger refuse before insert on resources for each row execute function refuse()`)
  const run = (await admin.inject('POST', '/runs', { scope: 'aws/huge-failure' })).json()
  const big = Array.from({ length: 2000 }, (_, i) => resource(`big-${i}`, { attributes: { blob: 'x'.repeat(2000) } }))
  const res = await admin.inject('POST', `/runs/${run.id}/resources`, { resources: big })
  t.equal(res.statusCode, 500)
  t.notMatch(res.body, /refused|insert/, 'no internals in the answer')
  const longest = Math.max(...lines.map((l) => l.length))
  t.ok(lines.some((l) => l.includes('unhandled error')), 'the failure is logged')
  t.ok(longest < 64 * 1024, `the longest log line is ${longest} bytes (the batch was ${JSON.stringify(big).length})`)
})

/**
 * Max /healthz latency over HTTP while `fn` runs, `fn`'s own time, and the CPU time this process
 * (the server, the test, its client) spent meanwhile. Wall times are reported; the CPU time is
 * what is asserted: it is what a bomb costs the server, and it does not grow when other
 * processes load the machine (the event loop cannot have been held longer than it).
 */
async function underLoad<T> (base: string, fn: () => Promise<T>): Promise<{ result: T, ms: number, cpuMs: number, healthzMaxMs: number }> {
  const state = { stop: false }
  let healthzMaxMs = 0
  const pinger = (async () => {
    while (!state.stop) {
      const started = performance.now()
      const res = await fetch(`${base}/healthz`)
      await res.arrayBuffer()
      healthzMaxMs = Math.max(healthzMaxMs, performance.now() - started)
      await sleep(5)
    }
  })()
  const started = performance.now()
  const cpu = process.cpuUsage()
  const result = await fn()
  const ms = performance.now() - started
  const used = process.cpuUsage(cpu)
  state.stop = true
  await pinger
  return { result, ms, cpuMs: (used.user + used.system) / 1000, healthzMaxMs }
}

t.test('GraphQL bombs are refused for little CPU while /healthz keeps answering', async (t) => {
  const app = await build(t, { GRAPHQL_TIMEOUT: '300' })
  await api(app).scan('aws/bombed', ids(3000))
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const key = await createKey(app, { tenant: 'default', role: 'reader' })
  const post = async (query: string, variables?: object) => {
    const res = await fetch(`${base}/graphql`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify({ query, variables }) })
    return { status: res.status, body: await res.json() as any }
  }
  const get = async (query: string) => {
    const res = await fetch(`${base}/graphql?query=${encodeURIComponent(query)}`, { headers: { authorization: `Bearer ${key}` } })
    return { status: res.status, body: await res.json() as any }
  }

  // 24 fragments, each spreading the one before twice: 2^24 paths from a 945-byte query.
  const fragments = ['fragment F0 on Scope { scope shardCount }',
    ...Array.from({ length: 24 }, (_, i) => `fragment F${i + 1} on Scope { ...F${i} ...F${i} }`)]
  const chain = `{ scopes { edges { node { ...F24 } } } } ${fragments.join(' ')}`
  const aliases = (n: number, field: string) => `{ ${Array.from({ length: n }, (_, i) => `a${i}: ${field}`).join(' ')} }`
  const bombs: Array<[string, () => Promise<{ status: number, body: any }>, string]> = [
    ['fragment chain (POST)', () => post(chain), 'QUERY_TOO_LARGE'],
    ['fragment chain (GET, a link)', () => get(chain), 'QUERY_TOO_LARGE'],
    ['12,000 fields', () => post(`{ ${'__typename '.repeat(12_000)} }`), 'QUERY_TOO_LARGE'],
    ['300 summaries of the scope', () => post(aliases(300, 'summary(scope: "aws/bombed") { total }')), 'QUERY_TOO_COSTLY'],
    ['300 totalCounts', () => post(aliases(300, 'resources(scope: "aws/bombed", first: 0) { totalCount }')), 'QUERY_TOO_COSTLY'],
    ['400 pages of 500 rows', () => post(aliases(400, 'resources(scope: "aws/bombed", first: 500) { edges { node { id } } }')), 'QUERY_TOO_COSTLY'],
    ['400 pages of 500 rows, 6 fields each', () => post(aliases(400, 'resources(scope: "aws/bombed", first: 500) { edges { node { id attributes tags } } }')), 'QUERY_TOO_LARGE'],
    ['deep nesting', () => post(`{ runs { edges { node { ${'baselineRun { '.repeat(12)}id${' }'.repeat(12)} } } } }`), 'QUERY_TOO_DEEP'],
    ['U+0000 in a filter', () => post('query ($t: String) { resources(scope: "aws/bombed", type: $t) { edges { cursor } } }', { t: 'a\u0000' }), 'BAD_USER_INPUT'],
    ['malformed cursor', () => post('{ resources(scope: "aws/bombed", after: "%%%") { edges { cursor } } }'), 'BAD_CURSOR'],
    ['cursor holding U+0000', () => post(`{ resources(scope: "aws/bombed", after: "${Buffer.from(JSON.stringify(['\u0000'])).toString('base64url')}") { edges { cursor } } }`), 'BAD_CURSOR'],
    ['cursor holding 1e400', () => post(`{ runs(after: "${Buffer.from('[1e400]').toString('base64url')}") { edges { cursor } } }`), 'BAD_CURSOR']
  ]
  t.ok(Buffer.byteLength(chain) < 1100, `the chain is ${Buffer.byteLength(chain)} bytes`)
  for (const [what, send, code] of bombs) {
    const { result, ms, cpuMs, healthzMaxMs } = await underLoad(base, send)
    t.equal(result.body.errors?.[0]?.extensions?.code, code, `${what}: ${code}`)
    t.notOk(result.body.data?.a0, `${what}: no data`)
    // Unbounded, the fragment chain alone held the event loop for 8 s.
    t.ok(cpuMs < 500, `${what}: ${Math.round(cpuMs)} ms of CPU (answered in ${Math.round(ms)} ms, /healthz within ${Math.round(healthzMaxMs)} ms meanwhile)`)
  }

  // A statement that runs too long stops at GRAPHQL_TIMEOUT (here: one waiting on a lock).
  const db = await sqlClient(t, app)
  await db.query('begin; lock table resources in access exclusive mode')
  const { result, ms } = await underLoad(base, () => post('{ summary(scope: "aws/bombed") { total } }'))
  await db.query('rollback')
  // The lock is held until the answer came: only the timeout could end the statement.
  t.equal(result.body.errors?.[0]?.extensions?.code, 'QUERY_TIMEOUT', `stopped by the statement timeout (in ${Math.round(ms)} ms)`)
  t.match(await post('{ summary(scope: "aws/bombed") { total } }'), { status: 200, body: { data: { summary: { total: 3000 } } } }, 'and the next query runs')
})

t.test('rate limits per key hold across two instances; public routes are not limited', async (t) => {
  const env = await testEnv(t)
  const limits = { RATE_LIMIT_MAX: '6', RATE_LIMIT_WINDOW: '60' }
  const one = await build(t, limits, env)
  const two = await build(t, limits, env)
  const key = await createKey(one, { tenant: 'default', role: 'reader' })
  const statuses: number[] = []
  for (let i = 0; i < 8; i++) {
    const app = i % 2 === 0 ? one : two
    const res = await app.inject({ url: '/runs', headers: bearer(app, key) })
    statuses.push(res.statusCode)
    if (res.statusCode === 429) {
      t.equal(res.headers['content-type'], PROBLEM)
      t.match(res.json(), { status: 429, code: 'rate_limited', detail: /more than 6 requests in 60 s/ })
      t.ok(Number(res.headers['retry-after']) > 0, 'Retry-After says when')
    }
  }
  t.same(statuses, [200, 200, 200, 200, 200, 200, 429, 429], 'six requests between the two instances, then 429')
  t.equal((await two.inject({ url: '/runs', headers: bearer(two) })).statusCode, 200, 'another key is not limited')
  t.equal((await one.inject({ url: '/healthz' })).statusCode, 200, 'nor /healthz')
  const gql = await two.inject({ method: 'POST', url: '/graphql', headers: bearer(two, key), payload: { query: '{ scopes { edges { cursor } } }' } })
  t.match(gql, { statusCode: 429 })
  t.match(gql.json(), { errors: [{ extensions: { code: 'RATE_LIMITED' } }] }, 'GraphQL says so in its own shape')
})

t.test('made-up key ids: an address refused AUTH_FAILURE_LIMIT times gets 429 without a lookup; misses never push real keys out; 2 lookups at a time', async (t) => {
  const app = await build(t, { AUTH_FAILURE_LIMIT: '20', AUTH_CACHE_TTL: '300' })
  const reader = await createKey(app, { tenant: 'default', role: 'reader' })
  const keys = app.db.keys
  const byId = keys.byId
  const lookups = { done: 0, running: 0, most: 0 }
  keys.byId = async (id: string) => {
    lookups.done++
    lookups.running++
    lookups.most = Math.max(lookups.most, lookups.running)
    try {
      return await byId.call(keys, id)
    } finally {
      lookups.running--
    }
  }
  const madeUp = () => generateKey({ tenant: 'default', role: 'admin', createdBy: 'test' }).key
  const get = (key: string, remoteAddress = '10.0.0.1') => app.inject({ url: '/runs', headers: bearer(app, key), remoteAddress })

  t.equal((await get(reader)).statusCode, 200)
  t.equal(lookups.done, 1, 'one lookup for the real key, cached since')
  const flood = []
  for (let i = 0; i < 25; i++) flood.push(await get(madeUp()))
  t.same(flood.map((r) => r.statusCode), [...Array(20).fill(401), ...Array(5).fill(429)], '20 refusals from the address, then 429')
  t.match(flood[24]!.json(), { code: 'rate_limited', detail: /20 refused API keys from this address in 60 s/ })
  t.ok(Number(flood[24]!.headers['retry-after']) > 0, 'with Retry-After')
  t.equal(lookups.done, 21, 'and no lookup for the last 5')
  t.equal((await get(reader)).statusCode, 200, 'a cached key still works from that address')
  t.equal((await get(madeUp(), '10.0.0.2')).statusCode, 401, 'another address is refused as usual')

  // 10,050 made-up ids (more than the cache holds) from as many addresses, 200 at a time.
  for (let i = 0; i < 10_050; i += 200) {
    await Promise.all(Array.from({ length: 200 }, (_, j) => get(madeUp(), `10.1.${Math.floor((i + j) / 250)}.${(i + j) % 250}`)))
  }
  t.ok(lookups.most <= 2, `at most 2 lookups at a time (${lookups.most}), whatever the flood: ingestion keeps the rest of the pool`)
  const before = lookups.done
  t.equal((await get(reader, '10.0.0.3')).statusCode, 200)
  t.equal(lookups.done, before, 'the real key is still cached: the misses did not push it out')
})

t.test('a revoked key stops working on every instance within AUTH_CACHE_TTL', async (t) => {
  const env = await testEnv(t)
  const one = await build(t, { AUTH_CACHE_TTL: '1' }, env)
  const two = await build(t, { AUTH_CACHE_TTL: '1' }, env)
  const key = await createKey(one, { tenant: 'default', role: 'reader' })
  for (const app of [one, two]) t.equal((await app.inject({ url: '/runs', headers: bearer(app, key) })).statusCode, 200, 'cached on both')
  await one.db.keys.revoke(key.split('_')[1]!)
  const revokedAt = performance.now()
  // Both cached the key before the revocation: their entries end within AUTH_CACHE_TTL (1 s) of
  // it. A request after that, however late the machine lets it run, is refused.
  await sleep(1000 - (performance.now() - revokedAt) + 20)
  for (const [name, app] of [['one', one], ['two', two]] as const) {
    t.equal((await app.inject({ url: '/runs', headers: bearer(app, key) })).statusCode, 401,
      `instance ${name}: refused ${Math.round(performance.now() - revokedAt)} ms after the revocation`)
  }
})

t.test('caps: open runs per tenant, shard count, body size, keys per resource, numbers, run ids, HTML headers', async (t) => {
  const app = await build(t, { MAX_OPEN_RUNS: '2', MAX_SHARD_COUNT: '16', BODY_LIMIT: '100000', MAX_RESOURCE_KEYS: '50' })
  const admin = api(app)
  t.equal((await admin.open('aws/a')).status, 201)
  const second = await admin.open('aws/b')
  t.equal(second.status, 201)
  t.match(await admin.open('aws/c'), { status: 429, body: { code: 'too_many_open_runs', detail: /has 2 runs in flight/ } })
  for (let i = 0; i < 50; i++) t.equal((await admin.open(`aws/refused-${i}`)).status, 429)
  const db = await sqlClient(t, app)
  t.same((await db.query("select scope from scopes where tenant = 'default' order by scope")).rows.map((r: { scope: string }) => r.scope), ['aws/a', 'aws/b'],
    'a refused open leaves no scope behind')
  t.same((await gql(app, '{ scopes { edges { node { scope } } } }')).data.scopes.edges.map((e: { node: { scope: string } }) => e.node.scope).sort(), ['aws/a', 'aws/b'],
    'nor does GraphQL list one')
  const other = api(app, await createKey(app, { tenant: 'acme', role: 'scanner' }))
  t.equal((await other.open('aws/c')).status, 201, "another tenant's runs are counted apart")
  await admin.abort(second.body.id)
  t.equal((await admin.open('aws/c', { shardCount: 16 })).status, 201, 'a place freed by an abort')
  t.match(await admin.open('aws/d', { shardCount: 17 }), { status: 400, body: { code: 'validation_failed', detail: /at most 16 \(MAX_SHARD_COUNT\)/ } })

  const runId = (await admin.call('GET', '/runs?scope=aws/a')).body.items[0].id
  const tooBig = await admin.ingest(runId, ids(300).map((r) => ({ ...r, attributes: { blob: 'x'.repeat(400) } })))
  t.match(tooBig, { status: 413, body: { code: 'batch_too_large' } }, 'a body over BODY_LIMIT')
  const manyKeys = await admin.ingest(runId, [resource('k', { attributes: Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`k${i}`, i])) })])
  t.match(manyKeys, { status: 400, body: { code: 'validation_failed', detail: /resources\/0 holds more than 50 keys/ } })
  const infinite = await app.inject({
    method: 'POST',
    url: `/runs/${runId}/resources`,
    headers: { ...bearer(app), 'content-type': 'application/json' },
    payload: '{"resources": [{"id": "n", "type": "t", "attributes": {"big": 1e309}}]}'
  })
  t.match(infinite.json(), { status: 400, code: 'validation_failed', detail: /attributes\/big must be a number JSON can keep/ })
  t.match((await admin.get(runId)).body.stats, { seen: 0, batches: 0 }, 'none of them changed anything')

  for (const id of ['0x10', '1e1', '1.0', '+1', '01', ' 1', '99999999999999999']) {
    const res = await admin.call('GET', `/runs/${encodeURIComponent(id)}`)
    t.match(res, { status: 400, body: { code: 'validation_failed' } }, `/runs/${id} is not a run id`)
  }
  t.equal((await admin.call('GET', `/runs/${runId}`)).status, 200)

  t.equal((await app.inject({ url: '/graphiql/assets/__proto__' })).statusCode, 404, '__proto__ is not an asset')
  for (const url of ['/graphiql', '/docs/']) {
    const res = await app.inject({ url })
    t.match(res.headers['content-security-policy'], /script-src 'self'/, `${url}: Content-Security-Policy`)
    t.equal(res.headers['x-content-type-options'], 'nosniff', `${url}: nosniff`)
    t.match(res.headers['x-frame-options'], /SAMEORIGIN|DENY/, `${url}: not framed`)
  }
  t.notMatch((await app.inject({ url: '/graphiql' })).body, /<script>/, 'no inline script for the policy to allow')
})
