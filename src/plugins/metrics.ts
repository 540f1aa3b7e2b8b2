/**
 * Prometheus metrics (prom-client): `GET /metrics` in the text format, for a `reader` or
 * `admin` key of the operator's tenant, METRICS_TENANT (Prometheus sends it with
 * `authorization: { credentials_file: … }`): the figures sum over all tenants.
 *
 * Every series is `tally_`-prefixed but the process defaults (`process_cpu_seconds_total`,
 * `nodejs_heap_size_used_bytes`, …). Labels are bounded sets (outcomes, statuses, problem
 * codes, batch steps, the two Postgres pools): no scope, run or resource id. Each app
 * has a registry of its own, so several apps in one process (the tests) count apart.
 */
import fp from 'fastify-plugin'
import type pg from 'pg'
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import { TallyError, type ProblemCode } from '../errors.js'
import { accessOf } from './auth.js'

/** Seconds: from a ~1 ms Redis call to a 30 s completion. */
const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

function createMetrics (register: Registry) {
  const of = { registers: [register] }
  return {
    register,
    resources: new Counter({ ...of, name: 'tally_resources_ingested_total', help: 'Resources of acknowledged batches, by what Tally did with each', labelNames: ['outcome'] as const }),
    batches: new Counter({ ...of, name: 'tally_batches_total', help: 'Acknowledged batches (a retried copy of an applied one: duplicate)', labelNames: ['result'] as const }),
    batchSeconds: new Histogram({ ...of, name: 'tally_batch_duration_seconds', help: 'Time to apply and acknowledge a batch request', buckets: BUCKETS }),
    completions: new Counter({ ...of, name: 'tally_completions_total', help: 'Runs finished by a completion, by their status', labelNames: ['status'] as const }),
    completionSeconds: new Histogram({ ...of, name: 'tally_completion_duration_seconds', help: 'Time of completion requests answered 200 (a retried one too)', buckets: BUCKETS }),
    deleted: new Counter({ ...of, name: 'tally_resources_deleted_total', help: 'Resources soft-deleted by completions' }),
    guardTrips: new Counter({ ...of, name: 'tally_guard_trips_total', help: 'Completions the mass-deletion guard refused' }),
    stateLost: new Counter({ ...of, name: 'tally_run_state_lost_total', help: "Requests refused because a run's Redis state was lost (run_state_lost)" }),
    problems: new Counter({ ...of, name: 'tally_problems_total', help: 'Problem responses (4xx and 5xx), by code', labelNames: ['code'] as const }),
    batchStepSeconds: new Histogram({ ...of, name: 'tally_batch_step_duration_seconds', help: 'Time of each step of an applied batch: begin, read (the cache, every shard at once), postgres, apply (sets and cache fill, every shard at once), witness, done', labelNames: ['step'] as const, buckets: BUCKETS }),
    postgresSeconds: new Histogram({ ...of, name: 'tally_postgres_query_duration_seconds', help: 'Postgres statement latency as the server sees it', labelNames: ['pool'] as const, buckets: BUCKETS })
  }
}

export type Metrics = ReturnType<typeof createMetrics>

/**
 * Times every statement of the pool's connections. pg-pool's own `pool.query` (drizzle's path)
 * calls the client's `query` with a callback, and gets nothing back to wait on: the callback is
 * wrapped then. Connections the pool opened before this plugin (the migrations') are not timed.
 */
function timePool (pool: pg.Pool, histogram: Metrics['postgresSeconds'], name: string) {
  pool.on('connect', (client) => {
    const query = client.query.bind(client) as (...args: unknown[]) => unknown
    client.query = ((...args: unknown[]) => {
      const end = histogram.startTimer({ pool: name })
      const last = args.length - 1
      const callback = args[last]
      if (typeof callback === 'function') {
        args[last] = (...results: unknown[]) => {
          end()
          return (callback as (...r: unknown[]) => unknown)(...results)
        }
        return query(...args)
      }
      const result = query(...args)
      if (result instanceof Promise) result.then(() => end(), () => end())
      return result
    }) as typeof client.query
  })
}

/**
 * The process's own series (CPU, memory, event loop lag, GC), collected once per process:
 * prom-client's default metrics cannot be stopped (a GC observer and an event-loop histogram
 * that hold their registry for good, prometheus/client_js#494 and #500), so a registry per app
 * would keep every app a process ever built (2.2 MB each, measured by building 10 apps).
 */
let processRegistry: Registry | undefined
function processMetrics (): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry()
    collectDefaultMetrics({ register: processRegistry })
  }
  return processRegistry
}

export default fp(async function metrics (fastify) {
  const register = new Registry()
  processMetrics()
  const m = createMetrics(register)
  timePool(fastify.pg.pool, m.postgresSeconds, 'main')
  timePool(fastify.db.readPool, m.postgresSeconds, 'graphql')
  register.registerMetric(new Gauge({
    registers: [],
    name: 'tally_runs_open',
    help: 'Runs open or completing, all tenants',
    // Postgres down or slow: the other series are still scraped; this one keeps its last value.
    async collect () {
      try {
        // The read pool: its statements stop after GRAPHQL_TIMEOUT, and ingestion keeps its connections.
        const { rows } = await fastify.db.readPool.query<{ n: number }>("select count(*)::int as n from runs where status in ('open', 'completing')")
        this.set(rows[0]!.n)
      } catch (err) {
        fastify.log.warn({ err }, 'metrics: runs open not counted')
      }
    }
  }))
  fastify.decorate('metrics', m)
}, { name: 'metrics', dependencies: ['db', 'redis'] })

/** `GET /metrics`: registered after the error handler (plugins/problems.ts), so its refusals are problems too. */
export const metricsRoutes = fp(async function metricsRoutes (fastify) {
  fastify.get('/metrics', {
    schema: { hide: true },
    // Sums over all tenants: only the operator's tenant (METRICS_TENANT) may scrape.
    config: { auth: ['reader', 'admin'] }
  }, async (request, reply) => {
    const { tenant } = accessOf(request)
    if (tenant !== fastify.config.METRICS_TENANT) {
      throw new TallyError('forbidden', `Metrics sum over all tenants: they are for keys of tenant ${fastify.config.METRICS_TENANT} (METRICS_TENANT), not ${tenant}`)
    }
    const all = Registry.merge([fastify.metrics.register, processMetrics()])
    reply.type(all.contentType)
    return await all.metrics()
  })
}, { name: 'metrics-routes', dependencies: ['metrics', 'problems', 'auth'] })

/** What a problem response adds to the metrics. */
export function countProblem (metrics: Metrics, code: ProblemCode) {
  metrics.problems.inc({ code })
  if (code === 'mass_deletion_guard') metrics.guardTrips.inc()
  if (code === 'run_state_lost') metrics.stateLost.inc()
}

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
}
