/**
 * `subscription { runCompleted(scope) }` over WebSocket (graphql-ws): a run completed on one
 * instance reaches subscribers of another (through Redis pub/sub), with the same keys, roles,
 * scopes and tenants as queries.
 */
import { once } from 'node:events'
import type { Client } from 'graphql-ws'
import WebSocket from 'ws'
import t from 'tap'
import { parseKey } from '../src/auth/keys.js'
import { adminKey, api, build, createKey, listenWs as listen, resource, subscribeRunCompleted as subscribe, testEnv, untilSubscribed, wsClient as client, waitFor, type RunCompletedEvent as Event } from './helper.js'

const SCOPE = 'aws/live'

t.test('a completion on one instance reaches subscribers on another, and only those allowed', async (t) => {
  const env = await testEnv(t)
  const a = await build(t, {}, env)
  const b = await build(t, {}, env)
  const urlB = await listen(b)
  const reader = await createKey(b, { tenant: 'default', role: 'reader' })
  const otherTenant = await createKey(b, { tenant: 'other', role: 'reader' })

  const viaPayload = subscribe(client(t, urlB, reader), SCOPE)
  const viaHeader = subscribe(client(t, urlB, reader, 'header'), SCOPE)
  const elsewhere = subscribe(client(t, urlB, reader), 'aws/elsewhere')
  const stranger = subscribe(client(t, urlB, otherTenant), SCOPE)
  await untilSubscribed(b, [viaPayload, viaHeader, elsewhere, { ...stranger, tenant: 'other' }])

  // Three scans through instance A.
  const tally = api(a)
  const scans = [
    await tally.scan(SCOPE, [resource('r1'), resource('r2')]),
    await tally.scan(SCOPE, [resource('r1'), resource('r3')]),
    await tally.scan(SCOPE, [resource('r1'), resource('r3')])
  ]
  await waitFor(t, 'three completions, to both subscribers', async () => viaPayload.events.length === 3 && viaHeader.events.length === 3)
  for (const sub of [viaPayload, viaHeader]) {
    t.same(sub.events.map((e) => e.data?.runCompleted), scans.map((s) => ({
      id: String(s.id), scope: SCOPE, status: 'completed', stats: { created: s.stats.created, deleted: s.stats.deleted }
    })))
  }
  t.same(scans.map((s) => [s.stats.created, s.stats.deleted]), [[2, 0], [1, 1], [0, 0]])
  // Another scope's subscribers, and another tenant's subscribers of a scope of the same name, heard nothing.
  await api(a).scan('aws/unrelated', [resource('x')])
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(elsewhere.events.length, 0)
  t.equal(stranger.events.length, 0)
  // Its own tenant's scan of that name reaches it.
  const theirs = await createKey(a, { tenant: 'other', role: 'admin' })
  const their = await api(a, theirs).scan(SCOPE, [resource('o1')])
  await waitFor(t, "their own tenant's completion", async () => stranger.events.length === 1)
  t.equal(stranger.events[0]?.data?.runCompleted.id, String(their.id))
  t.equal(viaPayload.events.length, 3, "the other tenant's run did not reach tenant default")
  t.same([viaPayload, viaHeader, elsewhere, stranger].flatMap((s) => s.errors), [])
})

t.test('subscriptions are refused without a key, to a scanner key, out of a key\'s scopes, and over the limits', async (t) => {
  const app = await build(t)
  const url = await listen(app)
  const scanner = await createKey(app, { tenant: 'default', role: 'scanner' })
  const narrow = await createKey(app, { tenant: 'default', role: 'reader', scopes: ['gcp/*'] })
  const reader = await createKey(app, { tenant: 'default', role: 'reader' })

  const refusal = async (c: Client, query: string) => {
    const events: Event[] = []
    const err = await new Promise<unknown>((resolve) => {
      c.subscribe({ query }, { next: (e) => { events.push(e as Event) }, error: resolve, complete: () => resolve(undefined) })
    })
    return { err, events }
  }
  const query = `subscription { runCompleted(scope: "${SCOPE}") { id } }`

  const anonymous = await refusal(client(t, url, undefined), query)
  t.match(JSON.stringify(anonymous.err), /UNAUTHORIZED/, 'no key: refused')

  const scanning = await refusal(client(t, url, scanner), query)
  t.match(JSON.stringify(scanning.err), /FORBIDDEN/, 'scanner key: refused')

  const outside = await refusal(client(t, url, narrow), query)
  t.match(JSON.stringify(outside.err), /FORBIDDEN/, 'scope outside the key\'s globs: refused')

  const wrongKey = await refusal(client(t, url, `${reader.slice(0, -4)}xxxx`), query)
  t.match(JSON.stringify(wrongKey.err), /UNAUTHORIZED/, 'wrong secret: refused')

  // The query limits apply to a subscription's selection as to a query's.
  const deep = await refusal(client(t, url, reader), `subscription { runCompleted(scope: "${SCOPE}") {
    baselineRun { baselineRun { baselineRun { baselineRun { baselineRun { baselineRun { baselineRun { baselineRun { baselineRun { baselineRun { id } } } } } } } } } } } }`)
  t.match(JSON.stringify(deep.err), /QUERY_TOO_DEEP/)
  const unknown = await refusal(client(t, url, reader), `subscription { runCompleted(scope: "${SCOPE}") { nope } }`)
  t.match(JSON.stringify(unknown.err), /Cannot query field/)
})

t.test('an HTTP request that claims a WebSocket upgrade still needs a key', async (t) => {
  const app = await build(t)
  const res = await app.inject({ method: 'POST', url: '/graphql', headers: { upgrade: 'websocket' }, payload: { query: '{ scopes { edges { cursor } } }' } })
  t.equal(res.statusCode, 401)
  for (const query of ['{ scopes { edges { cursor } } }', '{ __schema { types { name } } }']) {
    for (const headers of [{ upgrade: 'websocket' }, { upgrade: 'websocket', connection: 'upgrade' }]) {
      const get = await app.inject({ method: 'GET', url: `/graphql?query=${encodeURIComponent(query)}`, headers })
      t.equal(get.statusCode, 401, `${query} with ${JSON.stringify(headers)}`)
    }
  }
})

t.test('an event that fails to resolve is an error for that event only; a revoked key stops hearing', async (t) => {
  const app = await build(t, { AUTH_CACHE_TTL: '0' })
  const url = await listen(app)
  const reader = await createKey(app, { tenant: 'default', role: 'reader' })
  const revoked = await createKey(app, { tenant: 'default', role: 'reader' })
  // A bad cursor in the selection: each event's resolution fails, the subscription goes on.
  const failing = subscribe(client(t, url, reader), SCOPE, `subscription { runCompleted(scope: "${SCOPE}") { id changes(after: "nope") { totalCount } } }`)
  const plain = subscribe(client(t, url, revoked), SCOPE)
  await untilSubscribed(app, [failing, plain])
  const tally = api(app)
  await tally.scan(SCOPE, [resource('a')])
  await waitFor(t, 'the first completion, to both', async () => failing.events.length === 1 && plain.events.length === 1)
  t.equal(failing.events[0]?.errors?.[0]?.extensions?.code, 'BAD_CURSOR')
  t.equal(plain.events[0]?.data?.runCompleted.status, 'completed')

  await app.db.keys.revoke(parseKey(revoked)!.id)
  await tally.scan(SCOPE, [resource('b')])
  await waitFor(t, 'the second completion, to both', async () => failing.events.length === 2 && plain.events.length === 2)
  t.equal(failing.events[1]?.errors?.[0]?.extensions?.code, 'BAD_CURSOR', 'the failing subscription is still there')
  t.equal(plain.events[1]?.data, null)
  t.equal(plain.events[1]?.errors?.[0]?.extensions?.code, 'UNAUTHORIZED', 'the revoked key hears no run')
  t.same([...failing.errors, ...plain.errors], [])
})

t.test('a subscription is priced with its variables', async (t) => {
  const app = await build(t)
  const url = await listen(app)
  // 30 pages of $n changes: priced as 500 a page, over GRAPHQL_MAX_COST (50,000); as 50 (the default), under.
  const pages = Array.from({ length: 30 }, (_, i) => `p${i}: changes(first: $n) { edges { node { resourceId kind } } }`).join(' ')
  const nested = `subscription ($n: Int!) { runCompleted(scope: "${SCOPE}") { ${pages} } }`
  const err = await new Promise<unknown>((resolve) => {
    client(t, url, adminKey(app)).subscribe({ query: nested, variables: { n: 500 } }, { next: () => {}, error: resolve, complete: () => resolve(undefined) })
  })
  t.match(JSON.stringify(err), /QUERY_TOO_COSTLY/)
})

t.test('a second connection_init closes the socket (4429)', async (t) => {
  const app = await build(t)
  const socket = new WebSocket(await listen(app), 'graphql-transport-ws')
  t.teardown(() => socket.terminate())
  await once(socket, 'open')
  socket.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${adminKey(app)}` } }))
  socket.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${adminKey(app)}` } }))
  const [code] = await once(socket, 'close') as [number]
  t.equal(code, 4429)
})
