/**
 * Liveness (the process answers) and readiness (Postgres and Redis answer too, Redis will not
 * evict keys and takes writes, and a Redis Cluster serves every slot).
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { TallyError } from '../errors.js'
import { clusterProblem, evictionMessage, evictionPolicy, writeProblem } from '../plugins/redis.js'
import { HealthSchema, problems } from '../contract.js'

const READY_TIMEOUT_MS = 2000

function withTimeout<T> (p: Promise<T>, ms: number): Promise<T> {
  return Promise.race([p, new Promise<T>((_resolve, reject) => setTimeout(() => reject(new Error('timeout')), ms).unref())])
}

const health: FastifyPluginAsyncTypebox = async function (fastify) {
  const tags = ['health']
  fastify.get('/healthz', {
    schema: { tags, operationId: 'healthz', summary: 'Liveness: the process answers', response: { 200: HealthSchema } },
    config: { auth: 'public' }
  }, async () => ({ status: 'ok' as const }))

  fastify.get('/readyz', {
    schema: { tags, operationId: 'readyz', summary: 'Readiness: Postgres and Redis answer', response: { 200: HealthSchema, ...problems() } },
    config: { auth: 'public' }
  }, async (request) => {
    let policy: string
    let cluster: string | undefined
    let writes: string | undefined
    try {
      [, policy, cluster, writes] = await withTimeout(Promise.all([
        fastify.pg.query('select 1'), evictionPolicy(fastify.redis), clusterProblem(fastify.redis),
        writeProblem(fastify.redis, fastify.config.REDIS_KEY_PREFIX)
      ]), READY_TIMEOUT_MS)
    } catch (err) {
      request.log.warn({ err }, 'not ready')
      throw new TallyError('unavailable', 'Postgres or Redis does not answer')
    }
    if (policy !== 'noeviction') {
      request.log.error({ policy }, 'not ready: Redis may evict keys')
      throw new TallyError('unavailable', evictionMessage(policy))
    }
    if (cluster !== undefined) {
      request.log.warn({ cluster }, 'not ready')
      throw new TallyError('unavailable', cluster)
    }
    if (writes !== undefined) {
      request.log.warn({ writes }, 'not ready')
      throw new TallyError('unavailable', writes)
    }
    return { status: 'ok' as const }
  })
}

export default health
