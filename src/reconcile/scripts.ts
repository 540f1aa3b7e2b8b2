/**
 * Lua scripts, each confined to one scope-shard (all its keys share a hash tag), so each is
 * atomic in that shard and runs on whichever Cluster node owns it.
 */
import type { Redis, Cluster, Result } from 'ioredis'

/** What the scripts return when a shard's marker is gone (1 means done, -1 another state). */
export const MARKER_MISSING = -2

const commands = {
  /**
   * KEYS marker, seen, hash; ARGV ttl, id…
   * If the marker says `open`: SADD the ids, refresh the TTLs and return HMGET of their hashes.
   * Otherwise add nothing and return -1 (closing) or -2 (missing: the run's state is lost).
   */
  tallyObserve: {
    numberOfKeys: 3,
    lua: `
local m = redis.call('GET', KEYS[1])
if m ~= 'open' then
  if m then return -1 end
  return -2
end
local n = #ARGV
for i = 2, n, 1000 do
  redis.call('SADD', KEYS[2], unpack(ARGV, i, math.min(i + 999, n)))
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local out = {}
for i = 2, n, 1000 do
  local got = redis.call('HMGET', KEYS[3], unpack(ARGV, i, math.min(i + 999, n)))
  for j = 1, #got do out[#out + 1] = got[j] end
end
return out`
  },
  /**
   * KEYS marker; ARGV from, to. Moves the marker from one state to the other, keeping its TTL.
   * Returns 1 when it now says `to`, -1 when it says something else, -2 when it is gone.
   */
  tallyMarker: {
    numberOfKeys: 1,
    lua: `
local m = redis.call('GET', KEYS[1])
if not m then return -2 end
if m == ARGV[1] or m == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return -1`
  }
} as const

declare module 'ioredis' {
  interface RedisCommander<Context> {
    tallyObserve(marker: string, seen: string, hash: string, ttl: number, ...ids: string[]): Result<number | Array<string | null>, Context>
    tallyMarker(marker: string, from: string, to: string): Result<number, Context>
  }
}

export function defineScripts (redis: Redis | Cluster): void {
  for (const [name, def] of Object.entries(commands)) {
    redis.defineCommand(name, def)
  }
}
