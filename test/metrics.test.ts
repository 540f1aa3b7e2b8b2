/** GET /metrics: Prometheus text, for reader and admin keys, whose counters agree with the runs' stats. */
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { api, bearer, build, createKey, resource, testEnv } from './helper.js'

/** The value of one series, `name{labels}` exactly as exposed (labels in prom-client's order). */
function value (text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  if (line === undefined) throw new Error(`no series ${series}`)
  return Number(line.slice(series.length + 1))
}

t.test('metrics after scans equal the runs\' stats', async (t) => {
  const app = await build(t, { GUARD_MIN_BASELINE: '10' })
  const tally = api(app)
  const SCOPE = 'aws/metrics-9f3c'
  const first = Array.from({ length: 30 }, (_, i) => resource(`r${i}`))
  const runs = [
    await tally.scan(SCOPE, first, { batch: 7 }),
    // 5 changed, 5 gone, 3 new, the rest unchanged; one batch sent twice (applied once).
    await (async () => {
      const resources = [...first.slice(0, 5).map((r) => ({ ...r, name: 'changed' })), ...first.slice(5, 25), ...['n1', 'n2', 'n3'].map((id) => resource(id))]
      const runId = (await tally.open(SCOPE)).body.id
      for (let i = 0; i < resources.length; i += 10) {
        const batch = { batchId: `b${i}`, resources: resources.slice(i, i + 10) }
        for (let copy = 0; copy < (i === 0 ? 2 : 1); copy++) {
          const res = await app.inject({ method: 'POST', url: `/runs/${runId}/resources`, headers: bearer(app), payload: batch })
          t.equal(res.statusCode, 200)
        }
      }
      return (await tally.complete(runId)).body
    })()
  ]
  // A run that would delete everything: the guard holds it.
  const guarded = (await tally.open(SCOPE)).body.id
  await tally.ingest(guarded, [resource('only')])
  t.equal((await tally.complete(guarded)).status, 422)

  // A retried completion answers the run as it is, and is not counted again.
  t.equal((await tally.complete(runs[1]!.id)).status, 200)
  // A dashboard's query, on the GraphQL pool.
  t.equal((await app.inject({ method: 'POST', url: '/graphql', headers: bearer(app), payload: { query: `{ summary(scope: "${SCOPE}") { total } }` } })).statusCode, 200)

  const res = await app.inject({ url: '/metrics', headers: bearer(app) })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  const text = res.body
  const sum = (k: 'created' | 'updated' | 'unchanged' | 'deleted') => runs.reduce((n, r) => n + r.stats[k], 0)
  t.equal(value(text, 'tally_resources_ingested_total{outcome="created"}'), sum('created') + 1, 'created: both runs\' and the guarded run\'s')
  t.equal(value(text, 'tally_resources_ingested_total{outcome="updated"}'), sum('updated'))
  t.equal(value(text, 'tally_resources_ingested_total{outcome="unchanged"}'), sum('unchanged'))
  t.equal(value(text, 'tally_resources_deleted_total'), sum('deleted'))
  t.equal(sum('deleted'), 5)
  t.equal(value(text, 'tally_batches_total{result="applied"}'), runs.reduce((n, r) => n + r.stats.batches, 0) + 1)
  t.equal(value(text, 'tally_batches_total{result="duplicate"}'), 1)
  t.equal(value(text, 'tally_completions_total{status="completed"}'), 2)
  t.equal(value(text, 'tally_completion_duration_seconds_count'), 3, 'completion requests answered 200, the retried one too')
  t.equal(value(text, 'tally_guard_trips_total'), 1)
  t.equal(value(text, 'tally_problems_total{code="mass_deletion_guard"}'), 1)
  t.equal(value(text, 'tally_run_state_lost_total'), 0)
  t.equal(value(text, 'tally_runs_open'), 1, 'the guarded run stays open')
  t.ok(value(text, 'tally_batch_duration_seconds_count') >= 9)
  for (const step of ['begin', 'read', 'postgres', 'apply', 'witness', 'done']) {
    t.ok(value(text, `tally_batch_step_duration_seconds_count{step="${step}"}`) > 0, `batch step ${step} timed`)
  }
  t.ok(value(text, 'tally_postgres_query_duration_seconds_count{pool="main"}') > 0, 'Postgres statements timed')
  t.ok(value(text, 'tally_postgres_query_duration_seconds_count{pool="graphql"}') > 0, 'on both pools (drizzle over pool.query included)')
  t.ok(value(text, 'process_cpu_seconds_total') > 0, 'process defaults')
  t.notMatch(text, /metrics-9f3c|r0|"n1"/, 'no scope or id in a label')

  t.equal((await app.inject({ url: '/metrics' })).statusCode, 401, 'a key is needed')
  const reader = await createKey(app, { tenant: 'default', role: 'reader' })
  t.equal((await app.inject({ url: '/metrics', headers: bearer(app, reader) })).statusCode, 200, 'a reader key scrapes')
  const scanner = await createKey(app, { tenant: 'default', role: 'scanner' })
  t.equal((await app.inject({ url: '/metrics', headers: bearer(app, scanner) })).statusCode, 403, 'a scanner key does not')
  // The figures sum over all tenants: another tenant's keys may not read them.
  const other = await createKey(app, { tenant: 'acme', role: 'admin' })
  const refused = await app.inject({ url: '/metrics', headers: bearer(app, other) })
  t.equal(refused.statusCode, 403, "another tenant's admin key does not")
  t.match(refused.json().detail, /METRICS_TENANT/)
})

t.test('an app built and closed leaves nothing behind: the process series are collected once a process', async (t) => {
  setFlagsFromString('--expose_gc')
  const gc = runInNewContext('gc') as () => void
  const env = await testEnv(t)
  const cycle = async () => {
    const app = await buildApp(loadConfig(env))
    await app.ready()
    await app.inject({ url: '/healthz' })
    await app.close()
  }
  await cycle()
  const heap = () => { gc(); gc(); return process.memoryUsage().heapUsed }
  const before = heap()
  for (let i = 0; i < 10; i++) await cycle()
  const perApp = (heap() - before) / 10
  // With a registry of default metrics per app, each app stayed reachable (2.2 MB, more since).
  t.ok(perApp < 1_000_000, `${(perApp / 1e6).toFixed(2)} MB kept per app`)
})
