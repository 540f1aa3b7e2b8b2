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
  },
  /**
   * KEYS batches; ARGV batchId, token, staleMs, ttl. Claims a batch id for one copy of a batch.
   * Returns {'done', result} when a copy already applied it, {'pending', ''} while another copy
   * holds a claim younger than staleMs, else {'claimed', ''}: the caller applies the batch.
   * A claim is `pending:<token>:<ms>`, in Redis time, so instances need no common clock.
   */
  tallyBatchClaim: {
    numberOfKeys: 1,
    lua: `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  if string.sub(v, 1, 8) ~= 'pending:' then return {'done', v} end
  local since = tonumber(string.match(v, ':(%d+)$'))
  if since and now - since < tonumber(ARGV[3]) then return {'pending', ''} end
end
redis.call('HSET', KEYS[1], ARGV[1], 'pending:' .. ARGV[2] .. ':' .. now)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'claimed', ''}`
  },
  /**
   * KEYS batches, counters; ARGV batchId ('' for none), result, created, updated, unchanged, ttl.
   * Records a batch as applied and counts it, atomically: if a copy of the batch was recorded
   * first, counts nothing and returns that copy's result; else returns ''.
   */
  tallyBatchDone: {
    numberOfKeys: 2,
    lua: `
if ARGV[1] ~= '' then
  local v = redis.call('HGET', KEYS[1], ARGV[1])
  if v and string.sub(v, 1, 8) ~= 'pending:' then return v end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[2], 'created', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'updated', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'unchanged', ARGV[5])
redis.call('HINCRBY', KEYS[2], 'batches', 1)
redis.call('HSET', KEYS[2], 'touched', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('EXPIRE', KEYS[2], ARGV[6])
return ''`
  },
  /** KEYS batches; ARGV batchId, token. Drops this copy's claim after it failed, so a retry need not wait. */
  tallyBatchRelease: {
    numberOfKeys: 1,
    lua: `
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.find(v, 'pending:' .. ARGV[2] .. ':', 1, true) == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0`
  }
} as const

declare module 'ioredis' {
  interface RedisCommander<Context> {
    tallyObserve(marker: string, seen: string, hash: string, ttl: number, ...ids: string[]): Result<number | Array<string | null>, Context>
    tallyMarker(marker: string, from: string, to: string): Result<number, Context>
    tallyBatchClaim(batches: string, batchId: string, token: string, staleMs: number, ttl: number): Result<[ 'done' | 'pending' | 'claimed', string ], Context>
    tallyBatchDone(batches: string, counters: string, batchId: string, result: string,
      created: number, updated: number, unchanged: number, ttl: number): Result<string, Context>
    tallyBatchRelease(batches: string, batchId: string, token: string): Result<number, Context>
  }
}

export function defineScripts (redis: Redis | Cluster): void {
  for (const [name, def] of Object.entries(commands)) {
    redis.defineCommand(name, def)
  }
}
