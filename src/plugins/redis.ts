/**
 * The Redis plugin: one ioredis client, registered through @fastify/redis (which closes it),
 * with Tally's Lua scripts defined on it. Auto-pipelining sends the per-shard commands of a
 * batch in one write; a short retry budget turns an outage into a prompt 503. A Redis that may
 * evict keys is refused.
 */
import fastifyRedis from '@fastify/redis'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import { defineScripts } from '../reconcile/scripts.js'

/**
 * Redis's maxmemory-policy. Tally's keys must never be evicted: a run's seen set evicted while
 * its marker stays would make every resource of that shard look vanished. BullMQ refuses such a
 * Redis for the same reason; so does Tally, at start and in /readyz.
 */
export async function evictionPolicy (client: Redis): Promise<string> {
  return /maxmemory_policy:(\S+)/.exec(await client.info('memory'))?.[1] ?? 'unknown'
}

export function evictionMessage (policy: string): string {
  return `Redis evicts keys under memory pressure (maxmemory-policy ${policy}), which would silently drop ` +
    "the ids of a run's sets; Tally needs maxmemory-policy noeviction (redis.conf, or CONFIG SET maxmemory-policy noeviction)"
}

export default fp(async function redis (fastify) {
  const client = new Redis(fastify.config.REDIS_URL, {
    enableAutoPipelining: true,
    maxRetriesPerRequest: 2,
    connectTimeout: 5000
  })
  client.on('error', (err) => fastify.log.warn({ err }, 'redis connection error'))
  defineScripts(client)
  // @fastify/redis waits until the client is ready, and quits it on close.
  await fastify.register(fastifyRedis, { client, closeClient: true })
  const policy = await evictionPolicy(client)
  if (policy !== 'noeviction') throw new Error(evictionMessage(policy))
}, { name: 'redis', dependencies: ['config'] })
