/**
 * `subscription { runCompleted(scope) }` over WebSocket (graphql-ws): a run completed on one
 * instance reaches subscribers of another (through Redis pub/sub), with the same keys, roles,
 * scopes and tenants as queries.
 */
import type { Client } from 'graphql-ws'
import t from 'tap'
import { api, build, createKey, listenWs as listen, resource, subscribeRunCompleted as subscribe, testEnv, wsClient as client, waitFor, type RunCompletedEvent as Event } from './helper.js'

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
  await Promise.all([viaPayload.ready, viaHeader.ready, elsewhere.ready, stranger.ready])

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
  const get = await app.inject({ method: 'GET', url: '/graphql?query=%7B%20scopes%20%7B%20edges%20%7B%20cursor%20%7D%20%7D%20%7D', headers: { upgrade: 'websocket' } })
  t.not(get.statusCode, 200)
  t.match(get.body, /UNAUTHORIZED|unauthorized/)
})
