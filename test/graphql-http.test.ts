/**
 * The GraphQL-over-HTTP specification's own audit (`graphql-http`'s serverAudits) against the
 * running server: every MUST passes. SHOULD and MAY results are printed, not required.
 */
import { auditServer } from 'graphql-http'
import t from 'tap'
import { bearer, build } from './helper.js'

t.test('GraphQL over HTTP: no MUST fails', async (t) => {
  const app = await build(t)
  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  const headers = bearer(app)
  // Every request carries the key; the audits' own headers stay as they are.
  const fetchFn: typeof fetch = async (input, init) => {
    const merged = new Headers(init?.headers)
    merged.set('authorization', headers.authorization)
    return await fetch(input, { ...init, headers: merged })
  }
  const results = await auditServer({ url: `${address}/graphql`, fetchFn })
  const tally = { ok: 0, notice: 0, warn: 0, error: 0 }
  for (const result of results) {
    tally[result.status]++
    if (result.status !== 'ok') t.comment(`${result.status}: ${result.name}: ${result.reason}`)
  }
  t.comment(`audit: ${JSON.stringify(tally)}`)
  t.ok(results.length > 50, `${results.length} audits ran`)
  t.same(results.filter((r) => r.status === 'error').map((r) => `${r.name}: ${'reason' in r ? r.reason : ''}`), [], 'no MUST failed')
})
