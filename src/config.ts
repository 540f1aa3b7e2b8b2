/**
 * Configuration, read once from the environment and validated against one schema.
 * Everything else receives a `Config`; nothing reads `process.env` on its own.
 */
import { Type, type Static } from '@sinclair/typebox'
import envSchema from 'env-schema'

export const EnvSchema = Type.Object({
  DATABASE_URL: Type.Optional(Type.String({ minLength: 1, description: 'PostgreSQL connection string; npm start without it runs an embedded PostgreSQL' })),
  REDIS_URL: Type.Optional(Type.String({ minLength: 1, description: 'Redis connection string; npm start without it runs a private redis-server' })),
  REDIS_CLUSTER_NODES: Type.Optional(Type.String({
    pattern: '^[^\\s,:]+:\\d+(,[^\\s,:]+:\\d+)*$',
    description: 'host:port,host:port… of Redis Cluster seed nodes; selects cluster mode instead of REDIS_URL'
  })),
  REDIS_USERNAME: Type.Optional(Type.String({ minLength: 1, description: 'Redis Cluster ACL user (with REDIS_URL, put it in the URL)' })),
  REDIS_PASSWORD: Type.Optional(Type.String({ minLength: 1, description: 'Redis Cluster password (with REDIS_URL, put it in the URL)' })),
  REDIS_TLS: Type.Boolean({ default: false, description: 'connect to the Redis Cluster nodes over TLS (with REDIS_URL, use rediss://)' }),
  REDIS_NAT_MAP: Type.Optional(Type.String({
    pattern: '^[^\\s,=]+:\\d+=[^\\s,=]+:\\d+(,[^\\s,=]+:\\d+=[^\\s,=]+:\\d+)*$',
    description: 'internal-host:port=external-host:port,…: how to reach cluster nodes that announce addresses the server cannot reach'
  })),
  DATA_DIR: Type.String({ default: '.data', description: 'where the embedded PostgreSQL and Redis keep their data' }),
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 3000 }),
  HOST: Type.String({ default: '127.0.0.1' }),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
    { default: 'info' }
  ),
  METRICS_TENANT: Type.String({ default: 'default', description: 'the tenant whose reader and admin keys may read /metrics (which sums over all tenants)' }),
  LOG_FORMAT: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('pretty')], {
    description: 'json, or pretty (pino-pretty: one readable line an event); unset: pretty when standard output is a terminal'
  })),
  REDIS_KEY_PREFIX: Type.String({ pattern: '^[^{}\\s]*$', default: 'tally:' }),
  DEFAULT_SHARD_COUNT: Type.Integer({ minimum: 1, maximum: 1024, default: 64 }),
  SEEN_SET_SIZE: Type.Integer({
    minimum: 1,
    default: 256,
    description: "members a run's seen set aims for; keep it at most half Redis's set-max-intset-entries (512 by default) so sets stay integer-encoded"
  }),
  CACHE_BUCKET_SIZE: Type.Integer({
    minimum: 1,
    default: 64,
    description: "entries a bucket of the content-hash cache aims for; keep it at most half Redis's hash-max-listpack-entries (128 by default) so buckets stay listpack-encoded"
  }),
  ID_DIGEST_BITS: Type.Integer({
    minimum: 1,
    maximum: 64,
    default: 64,
    description: 'bits of the id digests the seen sets hold; fewer only to test collisions (a run keeps the width it opened with)'
  }),
  MAX_SHARD_COUNT: Type.Integer({ minimum: 1, maximum: 1024, default: 256, description: 'the largest shardCount a run may ask for' }),
  MAX_OPEN_RUNS: Type.Integer({ minimum: 1, default: 100, description: 'runs in flight per tenant' }),
  MAX_BATCH: Type.Integer({ minimum: 1, maximum: 100000, default: 5000 }),
  BODY_LIMIT: Type.Integer({ minimum: 1024, default: 16 * 1024 * 1024, description: 'bytes of a request body' }),
  MAX_RESOURCE_KEYS: Type.Integer({ minimum: 1, default: 10000, description: 'object keys and array items in one resource (tags and attributes, at any depth)' }),
  REQUEST_TIMEOUT: Type.Integer({ minimum: 0, default: 30, description: 'seconds to receive a whole request, body included; 0: no limit' }),
  AUTH_CACHE_TTL: Type.Integer({ minimum: 0, default: 5, description: 'seconds an API key lookup is cached: a revoked key works at most this long' }),
  AUTH_FAILURE_LIMIT: Type.Integer({ minimum: 0, default: 60, description: 'refused API keys per client address per RATE_LIMIT_WINDOW before the address gets 429 without a lookup (per instance); 0: no limit' }),
  RATE_LIMIT_MAX: Type.Integer({ minimum: 0, default: 1200, description: 'requests per key per RATE_LIMIT_WINDOW, counted in Redis across instances; 0: no limit' }),
  RATE_LIMIT_WINDOW: Type.Integer({ minimum: 1, default: 60, description: 'seconds' }),
  GUARD_MIN_BASELINE: Type.Integer({ minimum: 0, default: 100 }),
  MAX_DELETE_RATIO: Type.Number({ minimum: 0, maximum: 1, default: 0.5 }),
  RUN_TTL: Type.Integer({ minimum: 60, default: 86400, description: 'seconds an open run may stay idle' }),
  DELETED_RETENTION: Type.Integer({ minimum: 0, default: 30 * 86400, description: 'seconds soft-deleted rows are kept; 0 keeps them' }),
  CHANGES_RETENTION: Type.Integer({ minimum: 0, default: 90 * 86400, description: 'seconds changes stay in the change log; 0 keeps them' }),
  SWEEP_INTERVAL: Type.Integer({ minimum: 0, default: 60, description: 'seconds between sweeps (abandoned runs, purge); 0 turns the sweeper off' }),
  PG_POOL_MAX: Type.Integer({ minimum: 1, default: 10 }),
  MIGRATE_ON_START: Type.Boolean({ default: true }),
  NODE_ENV: Type.String({ default: 'development' }),
  GRAPHIQL: Type.Optional(Type.Boolean({ description: 'serve /graphiql; default: on unless NODE_ENV=production' })),
  GRAPHQL_MAX_DEPTH: Type.Integer({ minimum: 1, default: 8 }),
  GRAPHQL_MAX_COST: Type.Integer({ minimum: 1, default: 50000 }),
  GRAPHQL_MAX_FIELDS: Type.Integer({ minimum: 1, default: 2000, description: 'fields in a query, fragments expanded' }),
  GRAPHQL_TIMEOUT: Type.Integer({ minimum: 100, default: 5000, description: 'milliseconds a GraphQL SQL statement may run (statement_timeout)' }),
  GRAPHQL_POOL_MAX: Type.Integer({ minimum: 1, default: 4, description: 'Postgres connections for GraphQL, apart from ingestion' }),
  GRAPHQL_WS_MAX_MESSAGE: Type.Integer({ minimum: 1024, default: 64 * 1024, description: 'bytes of one GraphQL WebSocket message; a larger one closes the socket (1009)' }),
  GRAPHQL_WS_MAX_SUBSCRIPTIONS: Type.Integer({ minimum: 1, default: 20, description: 'subscriptions at once on one GraphQL WebSocket' }),
  GRAPHQL_WS_MAX_SOCKETS_PER_KEY: Type.Integer({ minimum: 1, default: 20, description: 'GraphQL WebSockets one API key may hold open on one instance' })
})

/** The environment as read: the connection strings may still be missing (the server then embeds). */
export type Settings = Static<typeof EnvSchema>
/** What the app runs with: the database known, and Redis as a URL or as cluster seed nodes. */
export type Config = Settings & { DATABASE_URL: string }

/** Reads and validates the environment; throws one readable error naming every bad variable. */
export function loadSettings (env: Record<string, string | undefined> = process.env): Settings {
  try {
    return envSchema<Settings>({ schema: EnvSchema, data: { ...env }, dotenv: false })
  } catch (err) {
    throw new Error(`Invalid configuration: ${(err as Error).message}. See the configuration table in README.md.`)
  }
}

/** Like loadSettings, and the database and Redis must be named. */
export function loadConfig (env: Record<string, string | undefined> = process.env): Config {
  const missing = [
    ...(env.DATABASE_URL ? [] : ['DATABASE_URL']),
    ...(env.REDIS_URL || env.REDIS_CLUSTER_NODES ? [] : ['REDIS_URL (or REDIS_CLUSTER_NODES)'])
  ]
  const settings = loadSettings(env)
  if (missing.length > 0) {
    throw new Error(`Invalid configuration: ${missing.join(' and ')} must be set. See the configuration table in README.md.`)
  }
  if (settings.REDIS_URL !== undefined && settings.REDIS_CLUSTER_NODES !== undefined) {
    throw new Error('Invalid configuration: set REDIS_URL or REDIS_CLUSTER_NODES, not both. See the configuration table in README.md.')
  }
  return settings as Config
}

function hostPort (node: string): { host: string, port: number } {
  const at = node.lastIndexOf(':')
  return { host: node.slice(0, at), port: Number(node.slice(at + 1)) }
}

/** `host:port,host:port` as ioredis Cluster startup nodes. */
export function clusterNodes (list: string): Array<{ host: string, port: number }> {
  return list.split(',').map(hostPort)
}

/** `internal=external,…` as an ioredis Cluster natMap. */
export function natMap (list: string): Record<string, { host: string, port: number }> {
  return Object.fromEntries(list.split(',').map((pair) => {
    const at = pair.indexOf('=')
    return [pair.slice(0, at), hostPort(pair.slice(at + 1))]
  }))
}
