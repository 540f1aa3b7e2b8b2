/**
 * Lua scripts, each confined to one hash tag (a scope-shard, or a run) when called on a Cluster,
 * so each is atomic and runs on whichever node owns that slot. `tallyRead` and `tallyApply` take
 * one or more scope-shards: one per call on a Cluster, all of a batch's in one call on a single
 * Redis.
 *
 * A batch goes through them in this order: `tallyBegin` (run slot: the run still takes
 * batches; claim the batch id; register the batch as in flight), `tallyRead` (scope-shard
 * slots: the markers are there; the cached hashes), its write to Postgres, `tallyApply`
 * (scope-shard slots: add the ids to the seen sets and count them, and fill the cache),
 * `tallyDone` (run slot: record and unregister). A completion runs `tallyClose` (run slot: take no new batch; wait until the
 * registered ones are done) before it seals the markers with `tallyMarker` and reads anything.
 *
 * The cache scripts name their bucket keys themselves (`<cache shard key>:<bucket>`, cache.ts):
 * the same hash tag as the cache shard key they are given, so the same slot.
 */
import type { Redis, Cluster, Result } from 'ioredis'
import { MAX_BUCKETS } from './cache.js'

/** What the scripts return when a key that must exist is gone (the run's state is lost), or is in another state. */
export const MARKER_MISSING = -2
export const MARKER_OTHER = -1

const now = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`

/**
 * The buckets of a field's chain (cache.ts) below its bucket under the count n, each once: its
 * buckets under n / 2, n / 4, … down to the shard's `lo`. Needs `meta`, `n` and `lo`.
 */
const below = `
local function below (f)
  local keys, last, m = {}, f % n, n / 2
  while m >= lo do
    local b = f % m
    if b ~= last then
      keys[#keys + 1] = meta .. ':' .. b
      last = b
    end
    m = m / 2
  end
  return keys
end`

/**
 * What the read and the invalidation share. KEYS[k] is a cache shard's bookkeeping hash
 * (keys.cache), KEYS[k + 1] the cache of earlier versions; ARGV[2] the bucket count the caller
 * asks for, ARGV[3] the member width. The shard's count is the larger of that and its own
 * (counts only grow). `empty` drops every bucket and the old cache, keeping the epoch rising
 * (from Redis's clock for a shard seen for the first time).
 */
const cacheShard = (meta: string, old: string) => `
local meta = ${meta}
local info = redis.call('HMGET', meta, '!', '', 'n', 'lo', 'w')
local have = tonumber(info[1]) or 0
local n = math.max(tonumber(ARGV[2]), tonumber(info[3]) or 0)
local lo = tonumber(info[4]) or n
local known = info[2] and info[5] == ARGV[3]
local claims = meta .. ':claims'
local function empty (gen)
  for b = 0, n - 1 do redis.call('UNLINK', meta .. ':' .. b) end
  redis.call('UNLINK', ${old}, claims)
  if not info[2] then
    local t = redis.call('TIME')
    redis.call('HSET', meta, '', t[1] .. string.format('%06d', tonumber(t[2])))
  end
  redis.call('HSET', meta, '!', gen, 'n', n, 'lo', n, 'w', ARGV[3])
  lo = n
  redis.call('HINCRBY', meta, '', 1)
  return redis.call('HGET', meta, '')
end
if known and n ~= tonumber(info[3]) then redis.call('HSET', meta, 'n', n) end
${below}`

/**
 * The cache read: ARGV[1] the scope's cache generation, ARGV[4] the batch's claim
 * (`c<run>:<token>`), ARGV[5] its run's claim prefix (`c<run>:`), then per id its field and the
 * value it would have if unchanged. Returns the epoch, then each id's cached value (false for
 * none). A shard behind that generation, or never seen, or of another member width, is emptied
 * first; one ahead of it (a reader with an old generation) answers misses and claims nothing.
 *
 * An id whose value is not the one it would have unchanged may be written to Postgres by this
 * batch: its value is dropped and the batch **claims** the field (in the shard's `claims` hash,
 * so buckets hold values only), so that until the batch's fill (tallyApply) the id is a miss for
 * everyone, and only that fill gives it a value again. A batch that dies between its write and
 * its fill leaves its claim: never a stale value. A claim of another batch of the same run is
 * not taken over (that batch may still be writing): it becomes the run's bare prefix, which no
 * fill takes. A claim of another run is taken over: only one run of a scope is in flight, and a
 * run that left flight has no write under way (resources writeChanged: the run row's lock).
 *
 * The field's value is looked for in its bucket, then along the rest of its chain (emptied of
 * it): one found lower down and still right moves to the bucket.
 */
const readShard = `
local function readShard (metaKey, oldKey, from, to)
${cacheShard('metaKey', 'oldKey')}
local gen = tonumber(ARGV[1])
local mine, run = ARGV[4], ARGV[5]
local out = {info[2]}
if known and have > gen then
  for i = from, to, 2 do out[#out + 1] = false end
  return out
end
if not known or have < gen then out[1] = empty(math.max(have, gen)) end
for i = from, to, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  local key = meta .. ':' .. (tonumber(f) % n)
  local val = redis.call('HGET', key, f)
  local moved = false
  if not val then
    for _, old in ipairs(below(tonumber(f))) do
      local got = redis.call('HGET', old, f)
      if got then
        redis.call('HDEL', old, f)
        if not val then val, moved = got, true end
      end
    end
  end
  if val == v then
    if moved then redis.call('HSET', key, f, val) end
  else
    if val and not moved then redis.call('HDEL', key, f) end
    local held = redis.call('HGET', claims, f)
    if held and held ~= mine and string.sub(held, 1, #run) == run then
      redis.call('HSET', claims, f, run)
    else
      redis.call('HSET', claims, f, mine)
    end
  end
  out[#out + 1] = val or false
end
return out
end`

/** What a run shard's marker (KEYS[k]) says against taking a batch: nil when `open`, else -1 (sealed) or -2 (missing: the run's state is lost). */
const refused = `
local function refused (k)
  local m = redis.call('GET', KEYS[k])
  if m == 'open' then return nil end
  if m then return -1 end
  return -2
end`

/**
 * Adds members to a shard's seen sets and counts them, each member once, under its kind; adds
 * the batch's token to the shard's acks set. commit(mk, ck, ak, first, last, at): KEYS[mk], [ck],
 * [ak] the shard's marker, counts, acks (the caller checked the marker: `refused`); KEYS[first..
 * last] the seen sets; ARGV[1] ttl, ARGV[2] token, from ARGV[at] for each set in order: nCreated,
 * nUpdated, nUnchanged and that many members.
 */
const commit = `
local function commit (mk, ck, ak, first, last, at)
  local c, u, n = 0, 0, 0
  local i = at
  for k = first, last do
    local nc, nu = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    local total = nc + nu + tonumber(ARGV[i + 2])
    i = i + 3
    for j = 0, total - 1 do
      if redis.call('SADD', KEYS[k], ARGV[i + j]) == 1 then
        if j < nc then c = c + 1 elseif j < nc + nu then u = u + 1 else n = n + 1 end
      end
    end
    i = i + total
    redis.call('EXPIRE', KEYS[k], ARGV[1])
  end
  if c > 0 then redis.call('HINCRBY', KEYS[ck], 'created', c) end
  if u > 0 then redis.call('HINCRBY', KEYS[ck], 'updated', u) end
  if n > 0 then redis.call('HINCRBY', KEYS[ck], 'unchanged', n) end
  redis.call('SADD', KEYS[ak], ARGV[2])
  for _, k in ipairs({mk, ck, ak}) do redis.call('EXPIRE', KEYS[k], ARGV[1]) end
end`

/**
 * The cache fill of a batch: fill(meta, epoch, most, claim, from, to) with ARGV[from..to] field,
 * value per id the batch claimed (readShard). Where the field's claim is still the batch's, it
 * goes, and `value` (what Postgres holds after the batch's writes) is written in the field's
 * bucket under the shard's count now (the rest of the field's chain emptied of it); an empty
 * `value` only gives the claim up. A field claimed by another batch, or by nobody any more, is
 * left as it is. A bucket that fills up has its entries moved to their buckets under the count
 * (`rehome`), and while it stays full the shard's count doubles (up to MAX_BUCKETS): a scope that
 * grows within a scan, a first load above all, keeps small buckets. Does nothing (0) if the epoch
 * moved since the batch read it: an invalidation happened in between (its claims stay: misses,
 * until the next run takes them over).
 */
const fill = `
local function fill (meta, epoch, most, mine, from, to)
local info = redis.call('HMGET', meta, '', 'n', 'lo')
if info[1] ~= epoch then return 0 end
local n, lo = tonumber(info[2]), tonumber(info[3])
local claims = meta .. ':claims'
${below}
local function rehome (k)
  local key = meta .. ':' .. k
  local all = redis.call('HGETALL', key)
  local stay = #all / 2
  for j = 1, #all, 2 do
    local dest = meta .. ':' .. (tonumber(all[j]) % n)
    if dest ~= key then
      if redis.call('HEXISTS', dest, all[j]) == 1 then
        redis.call('HDEL', dest, all[j])
        redis.call('HDEL', key, all[j])
        stay = stay - 1
      elseif redis.call('HLEN', dest) < most then
        redis.call('HSET', dest, all[j], all[j + 1])
        redis.call('HDEL', key, all[j])
        stay = stay - 1
      end
    end
  end
  return stay
end
for i = from, to, 2 do
  local f, value = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', claims, f) == mine then
    redis.call('HDEL', claims, f)
    if value ~= '' then
      local k = tonumber(f) % n
      local key = meta .. ':' .. k
      for _, old in ipairs(below(tonumber(f))) do redis.call('HDEL', old, f) end
      redis.call('HSET', key, f, value)
      if redis.call('HLEN', key) >= most then
        while rehome(k) >= most and n < ${MAX_BUCKETS} do
          n = n * 2
          redis.call('HSET', meta, 'n', n)
        end
      end
    end
  end
end
return 1
end`

const commands = {
  /**
   * KEYS counters, batches, inflight; ARGV batchId ('' for none), token, staleMs, ttl.
   * Returns {'done', result} when a copy of the batch was already applied, {'pending', ''}
   * while another copy holds a claim younger than staleMs (even while the run closes: that copy
   * is in flight, and the completion waits for it), {'closed', ''} when the run takes no
   * batch (a completion or abort is under way), {'missing', ''} when the run's state is gone,
   * else {'begun', ''}: the batch is registered in flight (and its id claimed) under `token`.
   * Claims and registrations carry Redis time, so instances need no common clock.
   */
  tallyBegin: {
    numberOfKeys: 3,
    lua: `${now}
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
if ARGV[1] ~= '' then
  local v = redis.call('HGET', KEYS[2], ARGV[1])
  if v then
    if string.sub(v, 1, 8) ~= 'pending:' then return {'done', v} end
    local since = tonumber(string.match(v, ':(%d+)$'))
    if since and now - since < tonumber(ARGV[3]) then return {'pending', ''} end
  end
end
if state ~= 'open' then return {'closed', ''} end
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[1], 'pending:' .. ARGV[2] .. ':' .. now)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('HSET', KEYS[3], ARGV[2], now)
redis.call('EXPIRE', KEYS[3], ARGV[4])
return {'begun', ''}`
  },
  /**
   * The cache read of a batch, when the run's shards and the cache's are one slot each: KEYS
   * marker, cache, old cache of each shard in turn; ARGV generation, buckets, width, claim, the
   * run's claim prefix, then per shard: the number of its ids and their field, value pairs.
   * -1 (sealed) / -2 (missing) if any marker is not `open` (and nothing claimed), else per shard
   * in turn its epoch and its ids' cached values (see readShard). Called once per shard on a
   * Cluster (a script there touches one slot), once for all of a batch's shards on a single Redis.
   */
  tallyRead: {
    lua: `${refused}
${readShard}
for g = 1, #KEYS, 3 do
  local no = refused(g)
  if no then return no end
end
local out = {}
local at = 6
for g = 1, #KEYS, 3 do
  local c = tonumber(ARGV[at])
  local part = readShard(KEYS[g + 1], KEYS[g + 2], at + 1, at + 2 * c)
  for i = 1, 1 + c do out[#out + 1] = part[i] end
  at = at + 1 + 2 * c
end
return out`
  },
  /**
   * KEYS cache, old cache; ARGV generation, buckets, width, claim, the run's claim prefix, then
   * field, value per id. The cache shard's epoch followed by each id's cached value (nil for
   * none), every id not found unchanged claimed (see readShard). A shard whose recorded
   * generation ('!') is behind the scope's missed an invalidation (Redis lost it): it is emptied
   * and answers misses.
   */
  tallyCacheRead: {
    numberOfKeys: 2,
    lua: `${readShard}
return readShard(KEYS[1], KEYS[2], 6, #ARGV)`
  },
  /**
   * KEYS seen sets of one shard; ARGV for each of them in order: n and n members. 1 or 0 for
   * each member, in order: is it in its set?
   */
  tallyIsMember: {
    lua: `
local out = {}
local i = 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  for j = i + 1, i + n do out[#out + 1] = redis.call('SISMEMBER', KEYS[k], ARGV[j]) end
  i = i + n + 1
end
return out`
  },
  /**
   * KEYS the baseline's seen sets of one shard, then the run's; ARGV the baseline's set count,
   * the run's. The members of the baseline's sets that none of the run's sets holds. Set counts
   * are powers of two: the members of baseline set j can only be in run sets i ≡ j (mod the
   * smaller count), and only those are diffed against it.
   */
  tallyDiff: {
    lua: `
local from, to = tonumber(ARGV[1]), tonumber(ARGV[2])
local common = math.min(from, to)
local out = {}
for j = 0, from - 1 do
  local against = {}
  for i = j % common, to - 1, common do against[#against + 1] = KEYS[from + 1 + i] end
  local stale = redis.call('SDIFF', KEYS[1 + j], unpack(against))
  for _, m in ipairs(stale) do out[#out + 1] = m end
end
return out`
  },
  /** KEYS the seen sets of one shard: Σ SCARD. */
  tallyCard: {
    lua: `
local n = 0
for k = 1, #KEYS do n = n + redis.call('SCARD', KEYS[k]) end
return n`
  },
  /**
   * A batch's writes once its content is in Postgres, per shard-slot: KEYS per shard in turn its
   * marker, counts, acks, cache and s seen sets; ARGV ttl, token, most, claim, then per shard in
   * turn: s, its cache epoch, f, its f fill arguments (field, value per id, as `fill`), its sets'
   * sections (as `commit`). -1 / -2 if the marker of any shard with sets is not `open` (nothing
   * added or filled anywhere), else 1. Each shard's members are committed, then its cache
   * filled: the cache keys share the shard's hash tag, so one call does both. Called once per
   * shard on a Cluster, once for all of a batch's shards on a single Redis.
   */
  tallyApply: {
    lua: `${refused}
${commit}
${fill}
local most, mine = tonumber(ARGV[3]), ARGV[4]
local shards = {}
local k, a = 1, 5
while a <= #ARGV do
  local s, f = tonumber(ARGV[a]), tonumber(ARGV[a + 2])
  local shard = {k = k, s = s, epoch = ARGV[a + 1], f = f, fills = a + 3, sets = a + 3 + f}
  local i = shard.sets
  for _ = 1, s do i = i + 3 + tonumber(ARGV[i]) + tonumber(ARGV[i + 1]) + tonumber(ARGV[i + 2]) end
  if s > 0 then
    local no = refused(k)
    if no then return no end
  end
  shards[#shards + 1] = shard
  k = k + 4 + s
  a = i
end
for _, shard in ipairs(shards) do
  local k = shard.k
  if shard.s > 0 then commit(k, k + 1, k + 2, k + 4, k + 3 + shard.s, shard.sets) end
  if shard.f > 0 then fill(KEYS[k + 3], shard.epoch, most, mine, shard.fills, shard.fills + shard.f - 1) end
end
return 1`
  },
  /**
   * KEYS cache, old cache; ARGV generation ('' for none), buckets, width, then the ids' fields:
   * forgets the ids (in every bucket of their chains, and their claims) and bumps the epoch, so fills prepared
   * earlier are dropped; with a generation, records it as the one this shard is invalidated for
   * (never lowering it). A shard never seen, or of another member width, is emptied instead.
   */
  tallyInvalidate: {
    numberOfKeys: 2,
    lua: `${cacheShard('KEYS[1]', 'KEYS[2]')}
local gen = tonumber(ARGV[1]) or 0
if not known then return empty(math.max(have, gen)) end
for i = 4, #ARGV do
  local f = ARGV[i]
  redis.call('HDEL', meta .. ':' .. (tonumber(f) % n), f)
  redis.call('HDEL', claims, f)
  for _, old in ipairs(below(tonumber(f))) do redis.call('HDEL', old, f) end
end
if have < gen then redis.call('HSET', meta, '!', gen) end
return redis.call('HINCRBY', meta, '', 1)`
  },
  /**
   * KEYS batches, counters, inflight; ARGV batchId ('' for none), token, result, ttl.
   * Records a batch as applied, counts it and unregisters it, atomically. Returns {'revoked', ''}
   * when its registration is gone (a completion gave it up as dead, or the run was dropped):
   * nothing is recorded or counted. If a copy of the batch was recorded first, returns
   * {'replay', that copy's result}. Else {'done', ''}.
   */
  tallyDone: {
    numberOfKeys: 3,
    lua: `${now}
if redis.call('HDEL', KEYS[3], ARGV[2]) == 0 then return {'revoked', ''} end
if ARGV[1] ~= '' then
  local v = redis.call('HGET', KEYS[1], ARGV[1])
  if v and string.sub(v, 1, 8) ~= 'pending:' then return {'replay', v} end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
redis.call('HINCRBY', KEYS[2], 'batches', 1)
redis.call('HSET', KEYS[2], 'touched', now)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {'done', ''}`
  },
  /** KEYS batches, inflight; ARGV batchId ('' for none), token. A failed batch unregisters, and drops its claim so a retry need not wait. */
  tallyRelease: {
    numberOfKeys: 2,
    lua: `
redis.call('HDEL', KEYS[2], ARGV[2])
if ARGV[1] ~= '' then
  local v = redis.call('HGET', KEYS[1], ARGV[1])
  if v and string.find(v, 'pending:' .. ARGV[2] .. ':', 1, true) == 1 then
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
return 0`
  },
  /**
   * KEYS counters, inflight; ARGV staleMs. The run takes no new batch (state `closing`);
   * registrations older than staleMs are revoked (their holder is taken for dead). Returns how
   * many batches are still in flight, or -2 when the run's state is gone. Called until it says 0.
   */
  tallyClose: {
    numberOfKeys: 2,
    lua: `${now}
if not redis.call('HGET', KEYS[1], 'state') then return -2 end
redis.call('HSET', KEYS[1], 'state', 'closing')
local fresh = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if now - tonumber(all[i + 1]) >= tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[2], all[i])
  else
    fresh = fresh + 1
  end
end
return fresh`
  },
  /** KEYS counters. A refused completion opens the run to batches again; -2 if its state is gone. */
  tallyReopen: {
    numberOfKeys: 1,
    lua: `
if not redis.call('HGET', KEYS[1], 'state') then return -2 end
redis.call('HSET', KEYS[1], 'state', 'open')
return 1`
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

type BeginState = 'done' | 'pending' | 'closed' | 'missing' | 'begun'

declare module 'ioredis' {
  interface RedisCommander<Context> {
    tallyBegin(counters: string, batches: string, inflight: string, batchId: string, token: string, staleMs: number, ttl: number): Result<[BeginState, string], Context>
    tallyRead(numberOfKeys: number, ...keysThenArgs: Array<string | number>): Result<number | Array<string | null>, Context>
    tallyCacheRead(cache: string, oldCache: string, generation: number, buckets: number, width: number,
      claim: string, runClaim: string, ...fieldValue: string[]): Result<Array<string | null>, Context>
    tallyApply(numberOfKeys: number, ...keysThenArgs: Array<string | number>): Result<number, Context>
    tallyCard(numberOfKeys: number, ...keys: string[]): Result<number, Context>
    tallyIsMember(numberOfKeys: number, ...keysThenArgs: Array<string | number>): Result<number[], Context>
    tallyDiff(numberOfKeys: number, ...keysThenArgs: Array<string | number>): Result<string[], Context>
    tallyInvalidate(cache: string, oldCache: string, generation: number | '', buckets: number, width: number,
      ...fields: string[]): Result<number | string, Context>
    tallyDone(batches: string, counters: string, inflight: string, batchId: string, token: string, result: string, ttl: number): Result<['revoked' | 'replay' | 'done', string], Context>
    tallyRelease(batches: string, inflight: string, batchId: string, token: string): Result<number, Context>
    tallyClose(counters: string, inflight: string, staleMs: number): Result<number, Context>
    tallyReopen(counters: string): Result<number, Context>
    tallyMarker(marker: string, from: string, to: string): Result<number, Context>
  }
}

export function defineScripts (redis: Redis | Cluster): void {
  for (const [name, def] of Object.entries(commands)) {
    redis.defineCommand(name, def)
  }
}
