import t from 'tap'
import { loadConfig } from '../src/config.js'

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
