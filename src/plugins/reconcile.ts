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
  fastify.decorate('reconcile', createReconciler({
    runs: fastify.db.runs,
    resources: fastify.db.resources,
    transaction: fastify.db.transaction,
    redis: fastify.redis,
    keys: createKeys(config.REDIS_KEY_PREFIX),
    log: fastify.log,
    settings: {
      runTtl: config.RUN_TTL,
      defaultShardCount: config.DEFAULT_SHARD_COUNT,
      guardMinBaseline: config.GUARD_MIN_BASELINE,
      maxDeleteRatio: config.MAX_DELETE_RATIO
    }
  }))
}, { name: 'reconcile', dependencies: ['db', 'redis'] })
