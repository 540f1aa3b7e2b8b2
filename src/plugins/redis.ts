/**
 * The Redis plugin: one ioredis client, registered through @fastify/redis (which closes it),
 * with Tally's Lua scripts defined on it. Auto-pipelining sends the per-shard commands of a
 * batch in one write; a short retry budget turns an outage into a prompt 503.
 */
import fastifyRedis from '@fastify/redis'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import { defineScripts } from '../reconcile/scripts.js'

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
}, { name: 'redis', dependencies: ['config'] })
