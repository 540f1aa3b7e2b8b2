/** Decorates the app with the reconciler, wired to the database, Redis and configuration. */
import fp from 'fastify-plugin'
import { createReconciler, type Reconciler } from '../reconcile/index.js'
import { createKeys } from '../reconcile/keys.js'

declare module 'fastify' {
  interface FastifyInstance {
    reconcile: Reconciler
  }
}

export default fp(async function reconcile (fastify) {
  const { config } = fastify
  const reconciler = createReconciler({
    runs: fastify.db.runs,
    resources: fastify.db.resources,
    transaction: fastify.db.transaction,
    redis: fastify.redis,
    keys: createKeys(config.REDIS_KEY_PREFIX),
    log: fastify.log,
    onFinished: (run) => {
      fastify.metrics.completions.inc({ status: run.status })
      fastify.metrics.deleted.inc(run.deleted)
      if (run.status === 'completed') fastify.events.publishRunCompleted(run)
    },
    onBatchStep: (step, seconds) => fastify.metrics.batchStepSeconds.observe({ step }, seconds),
    settings: config
  })
  fastify.decorate('reconcile', reconciler)

  // Every instance sweeps; each step is conditional, so sweeps of two instances may overlap.
  // One instance's sweeps never do: the next is scheduled when the last has ended.
  if (config.SWEEP_INTERVAL > 0) {
    let timer: NodeJS.Timeout | undefined
    let running: Promise<void> = Promise.resolve()
    let closed = false
    const schedule = () => {
      if (closed) return
      timer = setTimeout(() => {
        running = reconciler.sweep().then(
          (r) => { if (r.abandoned.length > 0 || r.purged > 0) fastify.log.info(r, 'sweep') },
          (err: unknown) => fastify.log.warn({ err }, 'sweep failed; retrying at the next interval')
        ).finally(schedule)
      }, config.SWEEP_INTERVAL * 1000)
      timer.unref()
    }
    schedule()
    fastify.addHook('onClose', async () => {
      closed = true
      clearTimeout(timer)
      await running
    })
  }
}, { name: 'reconcile', dependencies: ['db', 'redis', 'metrics', 'events'] })
