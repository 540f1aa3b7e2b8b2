/**
 * `subscription { runCompleted(scope) }` over WebSocket (graphql-ws): a run completed on one
 * instance reaches subscribers of another (through Redis pub/sub), with the same keys, roles,
 * scopes and tenants as queries.
 */
import { once } from 'node:events'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import type { Client } from 'graphql-ws'
import WebSocket from 'ws'
import t from 'tap'
import { parseKey } from '../src/auth/keys.js'
import { INIT_TIMEOUT_MS } from '../src/graphql/ws-guard.js'
import { adminKey, api, build, createKey, listenWs as listen, resource, subscribeRunCompleted as subscribe, testEnv, untilSubscribed, wsClient as client, waitFor, type RunCompletedEvent as Event } from './helper.js'

const SCOPE = 'aws/live'
setFlagsFromString('--expose_gc')
const gc = runInNewContext('gc') as () => void

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

t.test('sockets are closed without a key (4401) or with a refused one (4403); subscriptions are refused out of a key\'s scopes and over the limits', async (t) => {
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

  // graphql-ws hands the subscriber the socket's close event.
  const closedWith = (err: unknown) => ({ code: (err as { code?: number }).code, reason: String((err as { reason?: string }).reason) })
  const anonymous = await refusal(client(t, url, undefined), query)
  t.match(closedWith(anonymous.err), { code: 4401, reason: /Unauthorized/ }, 'no key: the socket is closed')

  const scanning = await refusal(client(t, url, scanner), query)
  t.match(closedWith(scanning.err), { code: 4403, reason: /scanner key may not/ }, 'scanner key: the socket is closed')

  const outside = await refusal(client(t, url, narrow), query)
  t.match(JSON.stringify(outside.err), /FORBIDDEN/, 'scope outside the key\'s globs: refused')

  const wrongKey = await refusal(client(t, url, `${reader.slice(0, -4)}xxxx`), query)
  t.match(closedWith(wrongKey.err), { code: 4403, reason: /unknown or revoked/ }, 'wrong secret: the socket is closed')

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

/** Until the subscription `id` on a bare socket hears events: probes of run 0 (which no key may read) arrive as errors. */
async function untilHeard (app: Awaited<ReturnType<typeof build>>, ws: { messages: Array<{ type: string, id?: string }> }, id: string) {
  for (const deadline = Date.now() + 60_000; !ws.messages.some((m) => m.id === id && m.type === 'next'); await new Promise((resolve) => setTimeout(resolve, 50))) {
    if (Date.now() > deadline) throw new Error(`subscription ${id} not started within 60 s`)
    app.events.emitter.emit({ topic: app.events.runCompletedTopic('default', SCOPE), payload: { runId: 0 } })
  }
}

/** A bare graphql-transport-ws socket, open; terminated at teardown. */
async function rawSocket (t: Parameters<typeof build>[0], url: string, headers: Record<string, string> = {}) {
  const socket = new WebSocket(url, 'graphql-transport-ws', { headers })
  t.teardown(() => socket.terminate())
  const messages: Array<{ type: string, id?: string, payload?: any }> = []
  socket.on('message', (data) => { messages.push(JSON.parse(String(data))) })
  const closed = once(socket, 'close').then(([code, reason]) => ({ code: code as number, reason: String(reason) }))
  await once(socket, 'open')
  const send = (message: object) => { socket.send(JSON.stringify(message)) }
  const init = (key?: string) => send({ type: 'connection_init', payload: key === undefined ? {} : { authorization: `Bearer ${key}` } })
  /** Resolves with the first message received (from now on) that passes `test`. */
  const next = (test: (m: { type: string, id?: string, payload?: any }) => boolean) => new Promise<{ type: string, id?: string, payload?: any }>((resolve) => {
    const found = () => messages.find(test)
    const look = () => {
      const m = found()
      if (m === undefined) return false
      socket.off('message', look)
      resolve(m)
      return true
    }
    if (!look()) socket.on('message', look)
  })
  return { socket, messages, closed, send, init, next }
}

t.test('a second connection_init closes the socket (4429)', async (t) => {
  const app = await build(t)
  const ws = await rawSocket(t, await listen(app))
  ws.init(adminKey(app))
  ws.init(adminKey(app))
  t.equal((await ws.closed).code, 4429)
})

t.test('a socket costs nothing it has not got a key for: closed without connection_init in time, before it, without a key, with a refused key', async (t) => {
  const app = await build(t)
  const url = await listen(app)
  // Timed from before the socket exists: the server's timer starts after that, so a correct
  // server closes it no sooner than INIT_TIMEOUT_MS from here, however loaded the machine is.
  const started = Date.now()
  const silent = await rawSocket(t, url)
  t.equal((await silent.closed).code, 4408, 'no connection_init: closed')
  t.ok(Date.now() - started >= INIT_TIMEOUT_MS, `after the init timeout (${Date.now() - started} ms)`)

  const early = await rawSocket(t, url)
  early.send({ type: 'subscribe', id: '1', payload: { query: `subscription { runCompleted(scope: "${SCOPE}") { id } }` } })
  t.equal((await early.closed).code, 4401, 'a subscribe before connection_init: closed')

  const keyless = await rawSocket(t, url)
  keyless.init()
  t.same(await keyless.closed, { code: 4401, reason: 'Unauthorized: send an API key, { authorization: "Bearer tally_…" }' }, 'connection_init without a key: closed')
  t.same(keyless.messages, [], 'and never acknowledged')

  const wrong = await rawSocket(t, url)
  wrong.init(`${adminKey(app).slice(0, -4)}xxxx`)
  t.equal((await wrong.closed).code, 4403, 'a refused key: closed')

  const viaHeader = await rawSocket(t, url, { authorization: `Bearer ${adminKey(app)}` })
  viaHeader.init()
  t.equal((await viaHeader.next((m) => m.type === 'connection_ack')).type, 'connection_ack', 'the key of the upgrade request is enough')
})

t.test('a keyed socket is bounded: message size, document tokens, subscriptions at once, sockets per key; refused subscriptions are forgotten', async (t) => {
  const app = await build(t, { GRAPHQL_WS_MAX_SUBSCRIPTIONS: '3', GRAPHQL_WS_MAX_SOCKETS_PER_KEY: '2' })
  const url = await listen(app)
  const reader = await createKey(app, { tenant: 'default', role: 'reader' })
  const query = `subscription { runCompleted(scope: "${SCOPE}") { id } }`

  const big = await rawSocket(t, url)
  big.init(reader)
  await big.next((m) => m.type === 'connection_ack')
  big.send({ type: 'subscribe', id: '1', payload: { query: `subscription { ${'a '.repeat(40_000)}}` } })
  t.equal((await big.closed).code, 1009, 'a message over GRAPHQL_WS_MAX_MESSAGE (64 KiB): closed')

  const ws = await rawSocket(t, url)
  ws.init(reader)
  await ws.next((m) => m.type === 'connection_ack')
  // 25,000 fields in 50 KB: under the size, over the tokens.
  ws.send({ type: 'subscribe', id: 'many', payload: { query: `subscription { ${'a '.repeat(25_000)}}` } })
  const tokens = await ws.next((m) => m.id === 'many')
  t.match(tokens, { type: 'error', payload: [{ message: /Document contains more that 20000 tokens/, extensions: { code: 'GRAPHQL_PARSE_FAILED' } }] }, 'a document over 20,000 tokens is refused unparsed')

  for (const id of ['s1', 's2', 's3']) ws.send({ type: 'subscribe', id, payload: { query } })
  ws.send({ type: 'subscribe', id: 's4', payload: { query } })
  t.match(await ws.next((m) => m.id === 's4'), { type: 'error', payload: [{ extensions: { code: 'TOO_MANY_SUBSCRIPTIONS' } }] }, 'a fourth subscription at once is refused')
  ws.send({ type: 'complete', id: 's1' })
  ws.send({ type: 'subscribe', id: 's5', payload: { query } })
  await untilHeard(app, ws, 's5')
  t.pass('one stopped, another may start')

  // Refused subscriptions free their place: far more of them than the limit, then one that works.
  const refusedMb = async (n: number) => {
    for (let i = 0; i < n; i++) ws.send({ type: 'subscribe', id: `r${i}`, payload: { query: `subscription { runCompleted(scope: "gcp/${'x'.repeat(200)}-${i}") { id } }` } })
    await ws.next((m) => m.id === `r${n - 1}`)
  }
  await refusedMb(200)
  t.equal(ws.messages.filter((m) => m.id?.startsWith('r') && m.type === 'error').length, 200, '200 refusals')
  ws.send({ type: 'complete', id: 's2' })
  ws.send({ type: 'subscribe', id: 's6', payload: { query } })
  await untilHeard(app, ws, 's6')
  t.pass('and the socket still takes a subscription')

  const second = await rawSocket(t, url)
  second.init(reader)
  await second.next((m) => m.type === 'connection_ack')
  const third = await rawSocket(t, url)
  third.init(reader)
  t.match(await third.closed, { code: 4429, reason: /Too many WebSockets for this key/ }, 'a third socket of the key: closed')
  second.socket.close()
  await once(second.socket, 'close')
  const fourth = await rawSocket(t, url)
  fourth.init(reader)
  t.equal((await fourth.next((m) => m.type === 'connection_ack')).type, 'connection_ack', 'a place freed by a closed socket')
})

t.test('refused subscriptions do not stay in the server\'s memory', async (t) => {
  const app = await build(t)
  const url = await listen(app)
  const reader = await createKey(app, { tenant: 'default', role: 'reader', scopes: ['aws/*'] })
  const ws = await rawSocket(t, url)
  ws.init(reader)
  await ws.next((m) => m.type === 'connection_ack')
  // 200 refused subscriptions of 60 KB (out of the key's scopes): 12 MB if each were kept.
  const heap = () => { gc(); return process.memoryUsage().heapUsed }
  const before = heap()
  for (let i = 0; i < 200; i++) {
    ws.send({ type: 'subscribe', id: `r${i}`, payload: { query: `subscription { runCompleted(scope: "gcp/${i}") { id } } # ${String(i).repeat(30_000).slice(0, 60_000)}` } })
    await ws.next((m) => m.id === `r${i}`)
  }
  const grown = heap() - before
  t.equal(ws.messages.filter((m) => m.type === 'error').length, 200, '200 refusals')
  t.ok(grown < 4_000_000, `the heap grew ${(grown / 1e6).toFixed(1)} MB`)
})
