import t from 'tap'
import { clusterNodes, loadConfig, natMap } from '../src/config.js'

t.test('defaults apply and numbers are parsed', async (t) => {
  const config = loadConfig({ DATABASE_URL: 'postgres://x/y', REDIS_URL: 'redis://z', PORT: '8080' })
  t.match(config, { PORT: 8080, HOST: '127.0.0.1', MAX_BATCH: 5000, DEFAULT_SHARD_COUNT: 64, GUARD_MIN_BASELINE: 100, RUN_TTL: 86400 })
})

t.test('a missing or bad variable is named in one clear message', async (t) => {
  t.throws(() => loadConfig({}), /Invalid configuration: .*DATABASE_URL.*REDIS_URL/)
  t.throws(() => loadConfig({ DATABASE_URL: 'x', REDIS_URL: 'y', PORT: 'eighty' }), /Invalid configuration: .*PORT/)
  t.throws(() => loadConfig({ DATABASE_URL: 'x', REDIS_URL: 'y', MAX_DELETE_RATIO: '2' }), /MAX_DELETE_RATIO/)
  t.throws(() => loadConfig({ DATABASE_URL: 'x', REDIS_URL: 'y', REDIS_KEY_PREFIX: 'a{b' }), /REDIS_KEY_PREFIX/)
})

t.test('Redis Cluster: seed nodes instead of a URL, the options a managed cluster needs', async (t) => {
  const config = loadConfig({
    DATABASE_URL: 'x',
    REDIS_CLUSTER_NODES: 'node-1.cache.internal:6379,10.0.0.2:6380',
    REDIS_TLS: 'true',
    REDIS_USERNAME: 'tally',
    REDIS_PASSWORD: 'secret',
    REDIS_NAT_MAP: '10.0.0.2:6380=127.0.0.1:16380'
  })
  t.same(clusterNodes(config.REDIS_CLUSTER_NODES!), [{ host: 'node-1.cache.internal', port: 6379 }, { host: '10.0.0.2', port: 6380 }])
  t.same(natMap(config.REDIS_NAT_MAP!), { '10.0.0.2:6380': { host: '127.0.0.1', port: 16380 } })
  t.match(config, { REDIS_TLS: true, REDIS_USERNAME: 'tally' })
  t.throws(() => loadConfig({ DATABASE_URL: 'x', REDIS_URL: 'y', REDIS_CLUSTER_NODES: 'a:1' }), /REDIS_URL or REDIS_CLUSTER_NODES, not both/)
  t.throws(() => loadConfig({ DATABASE_URL: 'x', REDIS_CLUSTER_NODES: 'a:1,b' }), /REDIS_CLUSTER_NODES/)
  t.throws(() => loadConfig({ DATABASE_URL: 'x', REDIS_CLUSTER_NODES: 'a:1', REDIS_NAT_MAP: 'a:1' }), /REDIS_NAT_MAP/)
})
