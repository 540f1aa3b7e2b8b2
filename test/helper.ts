/**
 * Test helper: the real app (same `buildApp` as production) on real Postgres and Redis.
 * Each call to `testEnv` makes a database of its own and a Redis key prefix of its own, and
 * removes both at teardown, so test files run in parallel and leave nothing behind.
 */
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { createClient, type Client } from 'graphql-ws'
import pg from 'pg'
import { Redis } from 'ioredis'
import WebSocket from 'ws'
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js'
import addFormats from 'ajv-formats'
import type { Static } from '@sinclair/typebox'
import type { ResourceSchema } from '../src/contract.js'
import { buildApp } from '../src/app.js'
import { generateKey, type Role } from '../src/auth/keys.js'
import { loadConfig } from '../src/config.js'
import { createKeys } from '../src/reconcile/keys.js'
import { idDigest, place } from '../src/reconcile/members.js'
import { cacheSlot, cacheValue, lineValue } from '../src/reconcile/cache.js'
import { layoutOf } from '../src/reconcile/run-keys.js'

type Tap = {
  teardown (fn: () => unknown): void
}

/**
 * Polls `check` every 20 ms until it holds, for up to `timeoutMs`; a pass when it does, and a
 * failure (and a throw, so nothing runs on a false premise) when it never does. For tests that
 * must see a state (a lock waited on, a run closing) before they act. The deadline only stops a
 * broken server from hanging the test: a correct one gets there however loaded the machine is,
 * so it is long.
 */
export async function waitFor (t: { pass (m: string): void, fail (m: string): void }, what: string,
  check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await sleep(20)) {
    if (await check()) {
      t.pass(what)
      return
    }
  }
  t.fail(`${what}: not within ${timeoutMs} ms`)
  throw new Error(`timed out: ${what}`)
}

export const PG_ADMIN_URL = process.env.TEST_PG_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

export type TestEnv = Record<string, string>

/** A fresh database and Redis key prefix, dropped and deleted when the test ends. */
export async function testEnv (t: Tap): Promise<TestEnv> {
  const name = `tally_test_${process.pid}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL })
  await admin.connect()
  await admin.query(`create database ${name}`)
  await admin.end()
  const prefix = `${name}:`
  t.teardown(async () => {
    const redis = new Redis(REDIS_URL)
    const keys = await redis.keys(`${prefix}*`)
    if (keys.length > 0) await redis.unlink(...keys)
    await redis.quit()
    const client = new pg.Client({ connectionString: PG_ADMIN_URL })
    await client.connect()
    await client.query(`drop database if exists ${name} with (force)`)
    await client.end()
  })
  const url = new URL(PG_ADMIN_URL)
  url.pathname = `/${name}`
  return {
    DATABASE_URL: url.toString(),
    REDIS_URL,
    REDIS_KEY_PREFIX: prefix,
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    // Most tests make many requests with one key, and many with bad keys from one address;
    // test/auth.test.ts turns the limits on.
    RATE_LIMIT_MAX: '0',
    AUTH_FAILURE_LIMIT: '0'
  }
}

/**
 * The app, ready, closed at teardown. Pass `env` to share a database between two instances.
 * Every REST response it sends is checked against the OpenAPI document (see checkContract).
 */
export async function build (t: Tap, overrides: Record<string, string> = {}, env?: TestEnv) {
  const config = loadConfig({ ...(env ?? await testEnv(t)), ...overrides })
  const app = await buildApp(config)
  const violations = checkContract(app)
  t.teardown(async () => {
    await app.close()
    if (violations.length > 0) throw new Error(`responses that contradict the OpenAPI document:\n${violations.join('\n')}`)
  })
  await app.ready()
  // An app whose database is unreachable (the outage tests) gets a key no database knows: its
  // requests then fail as they would in production, on the key lookup.
  adminKeys.set(app, await createKey(app, { tenant: 'default', role: 'admin' })
    .catch(() => generateKey({ tenant: 'default', role: 'admin', createdBy: 'test' }).key))
  return app
}

const adminKeys = new WeakMap<object, string>()

/** A new API key of the app's database, as the string a client sends. */
export async function createKey (app: Built, fields: { tenant: string, role: Role, scopes?: string[], name?: string }): Promise<string> {
  const { row, key } = generateKey({ ...fields, createdBy: 'test' })
  await app.db.keys.insert(row)
  return key
}

/** The admin key of tenant `default` that `build` made for the app. */
export function adminKey (app: Built): string {
  const key = adminKeys.get(app)
  if (key === undefined) throw new Error('app was not made by build()')
  return key
}

/** `{ authorization }` headers for a key (default: the app's admin key), for direct `inject` calls. */
export const bearer = (app: Built, key = adminKey(app)) => ({ authorization: `Bearer ${key}` })

type Built = Awaited<ReturnType<typeof buildApp>>

/**
 * Validates every response of a documented route against the document's schema for its
 * status and content type (errors included), so a document that lies fails the suite.
 * Returns the list of violations, filled as responses go out.
 */
function checkContract (app: Built): string[] {
  const violations: string[] = []
  const ajv = new Ajv2020({ strict: false, allErrors: true })
  addFormats.default(ajv)
  const validators = new Map<string, ValidateFunction>()
  app.addHook('onSend', async (request, reply, payload) => {
    const route = request.routeOptions.url
    if (route === undefined) return payload
    const doc = app.swagger() as { paths: Record<string, any>, components: unknown }
    const path = route.replace(/:(\w+)/g, '{$1}')
    const operation = doc.paths[path]?.[request.method.toLowerCase()]
    if (operation === undefined) return payload // not part of the REST contract (GraphQL, docs)
    const status = String(reply.statusCode)
    const type = String(reply.getHeader('content-type') ?? '').split(';')[0]!
    const where = `${request.method} ${path} ${status} ${type}`
    const schema = operation.responses?.[status]?.content?.[type]?.schema
    if (schema === undefined) {
      violations.push(`${where}: not documented`)
      return payload
    }
    let validate = validators.get(where)
    if (validate === undefined) {
      validate = ajv.compile({ ...schema, components: doc.components })
      validators.set(where, validate)
    }
    if (!validate(JSON.parse(String(payload)))) violations.push(`${where}: ${ajv.errorsText(validate.errors)}`)
    return payload
  })
  return violations
}

export type App = Awaited<ReturnType<typeof build>>

/** A pg client on the app's database, for asserting state; closed at teardown. */
export async function sqlClient (t: Tap, app: App): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: app.config.DATABASE_URL })
  await client.connect()
  t.teardown(() => client.end())
  return client
}

/** A Redis client for asserting or disturbing state; closed at teardown. */
export function redisClient (t: Tap, url = REDIS_URL): Redis {
  const redis = new Redis(url)
  redis.on('error', () => {})
  t.teardown(() => redis.quit().catch(() => {}))
  return redis
}

/** A resource as the contract has it (what a scanner sends). */
export type ResourceBody = Static<typeof ResourceSchema>

export function resource (id: string, extra: Partial<ResourceBody> = {}): ResourceBody {
  return { id, type: 'aws::ec2::instance', region: 'eu-west-1', tags: { env: 'prod' }, attributes: { size: 't3.micro' }, ...extra }
}

/** Thin calls of the REST API through `inject` with a key (default: the app's admin key), returning status and parsed body. */
export function api (app: App, key?: string) {
  const headers = bearer(app, key)
  const call = async (method: 'GET' | 'POST', url: string, payload?: unknown) => {
    const res = await app.inject({ method, url, headers, ...(payload === undefined ? {} : { payload: payload as object }) })
    return { status: res.statusCode, body: res.json(), headers: res.headers }
  }
  return {
    call,
    open: (scope: string, extra: object = {}) => call('POST', '/runs', { scope, ...extra }),
    ingest: (runId: number, resources: ResourceBody[], extra: object = {}) =>
      call('POST', `/runs/${runId}/resources`, { resources, ...extra }),
    complete: (runId: number, body: object = {}) => call('POST', `/runs/${runId}/complete`, body),
    abort: (runId: number) => call('POST', `/runs/${runId}/abort`),
    get: (runId: number) => call('GET', `/runs/${runId}`),
    /** Opens a run, posts the resources in batches, completes it; fails loudly on any non-2xx. */
    async scan (scope: string, resources: ResourceBody[], opts: { batch?: number, complete?: object, open?: object } = {}) {
      const opened = await this.open(scope, opts.open)
      if (opened.status !== 201) throw new Error(`open: ${opened.status} ${JSON.stringify(opened.body)}`)
      const runId = opened.body.id as number
      const batch = opts.batch ?? 1000
      for (let i = 0; i < resources.length; i += batch) {
        const r = await this.ingest(runId, resources.slice(i, i + batch))
        if (r.status !== 200) throw new Error(`ingest: ${r.status} ${JSON.stringify(r.body)}`)
      }
      const done = await this.complete(runId, opts.complete)
      if (done.status !== 200) throw new Error(`complete: ${done.status} ${JSON.stringify(done.body)}`)
      return done.body
    }
  }
}

/** A GraphQL request through `inject` with a key (default: the app's admin key). */
export async function gql (app: App, query: string, variables: Record<string, unknown> = {}, key?: string) {
  const res = await app.inject({ method: 'POST', url: '/graphql', headers: bearer(app, key), payload: { query, variables } })
  return res.json() as { data?: any, errors?: Array<{ message: string, extensions?: { code?: string } }> }
}

/** Counts the SQL statements the app sends while `fn` runs (a spy on the pool, in the test only). */
export async function countStatements<T> (app: App, fn: () => Promise<T>): Promise<{ result: T, statements: Array<{ text: string, values: unknown[] }> }> {
  const pool = app.db.readPool as unknown as { query: (...args: any[]) => any }
  const original = pool.query
  const statements: Array<{ text: string, values: unknown[] }> = []
  pool.query = function (this: unknown, ...args: any[]) {
    const q = args[0]
    statements.push(typeof q === 'string' ? { text: q, values: args[1] ?? [] } : { text: q.text, values: args[1] ?? q.values ?? [] })
    return original.apply(this, args)
  }
  try {
    return { result: await fn(), statements }
  } finally {
    pool.query = original
  }
}

/** Listens on a free loopback port; the WebSocket URL of its /graphql. */
export async function listenWs (app: App): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as { port: number }
  return `ws://127.0.0.1:${port}/graphql`
}

/** A graphql-ws client; `key` in connection_init (as a browser sends it) or in the upgrade's header. */
export function wsClient (t: Tap, url: string, key: string | undefined, via: 'payload' | 'header' = 'payload'): Client {
  const c = createClient({
    url,
    webSocketImpl: via === 'header'
      ? class extends WebSocket { constructor (address: string, protocols?: string | string[]) { super(address, protocols, { headers: { authorization: `Bearer ${key}` } }) } }
      : WebSocket,
    connectionParams: via === 'payload' && key !== undefined ? { authorization: `Bearer ${key}` } : {},
    retryAttempts: 0,
    lazy: false
  })
  t.teardown(() => c.dispose())
  return c
}

export interface RunCompletedEvent { data?: { runCompleted: { id: string, scope: string, status: string, stats: { created: number, deleted: number } } } | null, errors?: Array<{ message: string, extensions?: { code?: string } }> }

/** The answer to a probe of untilSubscribed: an event of run 0, which no key may read. */
const isProbe = (e: RunCompletedEvent) => e.errors?.[0]?.message === 'Run 0 is not readable with this key'

/** Subscribes; `events` and `errors` fill as they come (the answers to untilSubscribed's probes apart, in `probes`). */
export function subscribeRunCompleted (c: Client, scope: string, query = `subscription { runCompleted(scope: "${scope}") { id scope status stats { created deleted } } }`) {
  const feed = { scope, events: [] as RunCompletedEvent[], probes: [] as RunCompletedEvent[], errors: [] as unknown[] }
  c.subscribe({ query }, {
    next: (e) => { (isProbe(e as RunCompletedEvent) ? feed.probes : feed.events).push(e as RunCompletedEvent) },
    error: (err) => { feed.errors.push(err) },
    complete: () => {}
  })
  return feed
}

/**
 * Waits until each subscriber hears events of its scope (graphql-ws says nothing when a
 * subscription starts), by publishing probes through `app`'s emitter: events of run 0, which no
 * key may read, so each arrives as an error, kept apart from the feed's events (a probe still in
 * flight may arrive later, however late).
 */
export async function untilSubscribed (app: App, feeds: Array<ReturnType<typeof subscribeRunCompleted> & { tenant?: string }>): Promise<void> {
  for (const deadline = Date.now() + 60_000; feeds.some((f) => f.probes.length === 0); await sleep(50)) {
    if (Date.now() > deadline) throw new Error('subscriptions not started within 60 s')
    for (const f of feeds.filter((f) => f.probes.length === 0)) {
      app.events.emitter.emit({ topic: app.events.runCompletedTopic(f.tenant ?? 'default', f.scope), payload: { runId: 0 } })
    }
  }
}

/** Live resource ids of a scope, sorted. */
export async function liveIds (db: pg.Client, scope: string): Promise<string[]> {
  const { rows } = await db.query('select id from resources where scope = $1 and deleted_at is null order by id', [scope])
  return rows.map((r: { id: string }) => r.id)
}

/** Physical identity of every row of a scope: changes whenever Postgres rewrites the row. */
export async function rowVersions (db: pg.Client, scope: string): Promise<Map<string, string>> {
  const { rows } = await db.query(
    "select id, xmin::text || '/' || xmax::text || '/' || ctid::text as v from resources where scope = $1", [scope])
  return new Map(rows.map((r: { id: string, v: string }) => [r.id, r.v]))
}

/** Where ingestion puts `id` in run `runId`'s seen sets: the set's key, and the id's member. */
export async function seenMember (app: App, runId: number, id: string): Promise<{ key: string, member: string }> {
  const run = (await app.db.runs.getRun(runId))!
  const { member, shard, set } = place(idDigest(id), layoutOf(run)!)
  return { key: createKeys(app.config.REDIS_KEY_PREFIX).seen(run, shard, runId, set), member }
}

/** The app's cache bucket keys (reconcile/cache.ts), of one scope or of all. */
export async function cacheBucketKeys (app: App, redis: Redis, scope = '*'): Promise<string[]> {
  return redis.keys(`${app.config.REDIS_KEY_PREFIX}{default/${scope}/*}:cache:*`)
}

/**
 * What the cache holds for an id of a scope, in the bucket a read looks in first (null for
 * nothing), and what it would hold for the content hash Postgres has for it.
 */
/**
 * What the cache holds for an id, and what it should hold: the value of its content's hash, or
 * for a resource last `sent` in a JSON batch (or an NDJSON line) the value of its bytes as sent.
 */
export async function cacheEntry (app: App, redis: Redis, scope: string, id: string, hash: string, sent?: object): Promise<{ cached: string | null, expected: string }> {
  const scopeRow = (await app.db.runs.getScope('default', scope))!
  const digest = idDigest(id)
  const slot = cacheSlot(id, digest, { shards: scopeRow.cacheShardCount, buckets: 1, bits: app.config.ID_DIGEST_BITS })
  const shard = createKeys(app.config.REDIS_KEY_PREFIX).cache({ tenant: 'default', scope }, slot.shard)
  const buckets = Number(await redis.hget(shard, 'n') ?? '1')
  const field = Number(slot.field)
  const bucket = ((field % buckets) + buckets) % buckets
  const expected = sent === undefined ? cacheValue(digest, hash) : lineValue(digest, Buffer.from(JSON.stringify(sent)))
  return { cached: await redis.hget(`${shard}:${bucket}`, slot.field), expected }
}
