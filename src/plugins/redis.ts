/**
 * The Redis plugin: one ioredis client — a `Redis` for REDIS_URL, a `Cluster` for
 * REDIS_CLUSTER_NODES — registered through @fastify/redis (which closes it), with Tally's Lua
 * scripts defined on it. A Redis that may evict keys is refused at start.
 */
import fastifyRedis from '@fastify/redis'
import calculateSlot from 'cluster-key-slot'
import fp from 'fastify-plugin'
import { Cluster, Redis } from 'ioredis'
import { clusterNodes, natMap, type Config } from '../config.js'
import { isUnavailable } from '../errors.js'
import { defineScripts } from '../reconcile/scripts.js'

export type RedisClient = Redis | Cluster

export function createRedis (config: Config): RedisClient {
  if (config.REDIS_CLUSTER_NODES === undefined) {
    return new Redis(config.REDIS_URL!, {
      // Sends the per-shard commands of a batch in one write.
      enableAutoPipelining: true,
      // A short retry budget turns an outage into a prompt 503.
      maxRetriesPerRequest: 2,
      connectTimeout: 5000
    })
  }
  return new Cluster(clusterNodes(config.REDIS_CLUSTER_NODES), {
    // Not on a cluster: ioredis groups auto-pipelined commands into one pipeline per node and
    // retries a pipeline's MOVED/ASK only when every command in it failed alike, so after a
    // failover or a reshard such fan-outs failed until restart (measured, issue 12).
    enableAutoPipelining: false,
    scaleReads: 'master',
    maxRedirections: 16,
    retryDelayOnFailover: 200,
    retryDelayOnClusterDown: 200,
    retryDelayOnTryAgain: 100,
    slotsRefreshTimeout: 2000,
    clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
    // Managed clusters (ElastiCache with TLS) must be reached by the names they announce.
    dnsLookup: (address, callback) => callback(null, address),
    ...(config.REDIS_NAT_MAP === undefined ? {} : { natMap: natMap(config.REDIS_NAT_MAP) }),
    redisOptions: {
      username: config.REDIS_USERNAME,
      password: config.REDIS_PASSWORD,
      ...(config.REDIS_TLS ? { tls: {} } : {}),
      maxRetriesPerRequest: 2,
      connectTimeout: 5000
    }
  })
}

/** The primaries: every node of a cluster that owns slots, or the one server. */
export function primaries (client: RedisClient): Redis[] {
  return client instanceof Cluster ? client.nodes('master') : [client]
}

/**
 * Redis's maxmemory-policy, the laxest of all primaries. Tally's keys must never be evicted: a
 * run's seen set evicted while its marker stays would make every resource of that shard look
 * vanished. BullMQ refuses such a Redis for the same reason; so does Tally, at start and in /readyz.
 */
export async function evictionPolicy (client: RedisClient): Promise<string> {
  const policies = await Promise.all(primaries(client).map(async (node) =>
    /maxmemory_policy:(\S+)/.exec(await node.info('memory'))?.[1] ?? 'unknown'))
  return policies.find((policy) => policy !== 'noeviction') ?? 'noeviction'
}

export function evictionMessage (policy: string): string {
  return `Redis evicts keys under memory pressure (maxmemory-policy ${policy}), which would silently drop ` +
    "the ids of a run's sets; Tally needs maxmemory-policy noeviction (redis.conf, or CONFIG SET maxmemory-policy noeviction)"
}

/**
 * A key for each primary, in a slot it serves: `<prefix>{ready:<i>}` for the first i that lands
 * there. One key for a single Redis.
 */
function probeKeys (client: RedisClient, prefix: string): string[] {
  if (!(client instanceof Cluster)) return [`${prefix}ready`]
  const owners = new Set(client.nodes('master').map((node) => `${node.options.host}:${node.options.port}`))
  const keys: string[] = []
  for (let i = 0; owners.size > 0 && i < 100_000; i++) {
    const key = `${prefix}{ready:${i}}`
    const owner = client.slots[calculateSlot(key)]?.[0]
    if (owner !== undefined && owners.delete(owner)) keys.push(key)
  }
  return keys
}

/**
 * Why Redis refuses writes now, or undefined: a key of ten seconds written on every primary. A
 * Redis that answers reads may still refuse every write Tally makes: full (OOM, as
 * noeviction must be), read-only (a replica), failing to persist (MISCONF).
 */
export async function writeProblem (client: RedisClient, prefix: string): Promise<string | undefined> {
  try {
    await Promise.all(probeKeys(client, prefix).map((key) => client.set(key, '1', 'PX', 10_000)))
    return undefined
  } catch (err) {
    if (!isUnavailable(err)) throw err
    return `Redis refuses writes: ${(err as Error).message}`
  }
}

/** Why the Redis cannot serve every key now (a cluster with slots no primary serves), or undefined. */
export async function clusterProblem (client: RedisClient): Promise<string | undefined> {
  if (!(client instanceof Cluster)) return undefined
  const info = String(await client.cluster('INFO'))
  const state = /cluster_state:(\S+)/.exec(info)?.[1]
  // With cluster-require-full-coverage no the state stays ok while slots have no primary.
  const slotsOk = Number(/cluster_slots_ok:(\d+)/.exec(info)?.[1] ?? 0)
  return state === 'ok' && slotsOk === 16384 ? undefined : `Redis Cluster state is ${state ?? 'unknown'} with ${slotsOk} of 16384 slots served`
}

export default fp(async function redis (fastify) {
  const client = createRedis(fastify.config)
  client.on('error', (err) => fastify.log.warn({ err }, 'redis connection error'))
  // A Cluster's nodes report their connection errors through it.
  client.on('node error', (err: Error, node: string) => fastify.log.warn({ err, node }, 'redis node connection error'))
  defineScripts(client)
  // @fastify/redis waits until the client is ready, and quits it on close. Its types know of
  // Redis only; a Cluster answers the same commands for the keys Tally uses.
  await fastify.register(fastifyRedis, { client, closeClient: true })
  const policy = await evictionPolicy(client)
  if (policy !== 'noeviction') throw new Error(evictionMessage(policy))
}, { name: 'redis', dependencies: ['config'] })
