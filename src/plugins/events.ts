/**
 * Events between instances: an MQEmitter over Redis pub/sub (mqemitter-redis, the emitter
 * mercurius's docs name for subscriptions across instances), on two connections of its own
 * duplicated from the app's Redis client, so a Cluster's pub/sub works as a single server's.
 * A run completed on one instance is published here; every instance's GraphQL subscribers
 * hear it (`subscription { runCompleted }`). Delivery is at most once, like Redis pub/sub: a
 * subscriber that is disconnected at the moment misses the event (and can read the run's
 * changes from the API afterwards).
 */
import type { EventEmitter } from 'node:events'
import fp from 'fastify-plugin'
import MQEmitterRedis from 'mqemitter-redis'
import { Cluster, type Redis } from 'ioredis'

export interface RunCompletedEvent {
  runId: number
}

export interface Events {
  /** The topic a scope's completed runs are published on: tenant and scope escaped, so neither is an MQTT wildcard. */
  runCompletedTopic: (tenant: string, scope: string) => string
  publishRunCompleted: (run: { id: number, tenant: string, scope: string }) => void
  /** What mercurius subscribes through. */
  emitter: MQEmitterRedis.MQEmitterRedis
}

declare module 'fastify' {
  interface FastifyInstance {
    events: Events
  }
}

export default fp(async function events (fastify) {
  // The key prefix separates deployments (and test files) sharing one Redis, channels included.
  const prefix = `${fastify.config.REDIS_KEY_PREFIX}events/`
  const connection = () => {
    // A Cluster's duplicate is a Cluster: its pub/sub reaches every node's publishers. Commands
    // wait out an outage (a SUBSCRIBE that failed would leave its topic deaf for good).
    const client = fastify.redis as unknown as Redis | Cluster
    const redis = (client instanceof Cluster
      ? client.duplicate([], { redisOptions: { ...client.options.redisOptions, maxRetriesPerRequest: null } })
      : client.duplicate({ maxRetriesPerRequest: null })) as Redis
    redis.on('error', (err) => fastify.log.warn({ err }, 'redis events connection error'))
    return redis
  }
  // Its types name the ioredis it was built against; the connections are the app's ioredis.
  const subConn = connection()
  const pubConn = connection()
  const emitter = MQEmitterRedis({ subConn: subConn as never, pubConn: pubConn as never })
  ;(emitter as unknown as { state: EventEmitter }).state.on('error', (err: Error) => fastify.log.warn({ err }, 'redis events error'))
  const runCompletedTopic = (tenant: string, scope: string) =>
    `${prefix}run-completed/${encodeURIComponent(tenant)}/${encodeURIComponent(scope)}`
  fastify.decorate('events', {
    runCompletedTopic,
    emitter,
    publishRunCompleted (run) {
      const event: RunCompletedEvent = { runId: run.id }
      emitter.emit({ topic: runCompletedTopic(run.tenant, run.scope), payload: event }, (err) => {
        if (err != null) fastify.log.warn({ err, runId: run.id }, 'run completion not published: subscribers miss it')
      })
    }
  } satisfies Events)
  // Not emitter.close(): it QUITs and waits for both connections' `end`, which a connection
  // reconnecting to a restarted Redis never emits (the model test's restarts hung the close).
  fastify.addHook('onClose', async () => {
    subConn.disconnect()
    pubConn.disconnect()
  })
}, { name: 'events', dependencies: ['config', 'redis'] })
