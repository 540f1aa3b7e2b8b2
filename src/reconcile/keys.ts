/**
 * Shard math and Redis key names. Every key of one scope-shard shares the hash tag
 * `{tenant/scope/shard}`, so SDIFF, scripts and pipelines over them work unchanged on
 * Redis Cluster. Scopes never contain `{` or `}` (validated), so the tag cannot be broken.
 */
import { crc32 } from 'node:zlib'

/**
 * crc32(utf8(id)) mod shardCount: stable forever, across processes and versions. The cache's
 * shards; a run's sets are placed by their members instead (members.ts).
 */
export function shardOf (id: string, shardCount: number): number {
  return crc32(id) % shardCount
}

export interface ScopeRef {
  tenant: string
  scope: string
}

export function createKeys (prefix: string) {
  const tag = (s: ScopeRef, shard: number) => `${prefix}{${s.tenant}/${s.scope}/${shard}}`
  return {
    /**
     * SET of the members (id digests, see members.ts) of set `set` of this shard that the run saw:
     * only ids whose batch reached Postgres join it. `ids`, not the `seen` of versions that held
     * id strings: a baseline left by one of those is simply absent (and diffed against Postgres).
     */
    seen: (s: ScopeRef, shard: number, runId: number, set: number) => `${tag(s, shard)}:ids:${runId}:${set}`,
    /** The seen SET of versions that held id strings (one per shard): only ever unlinked. */
    legacySeen: (s: ScopeRef, shard: number, runId: number) => `${tag(s, shard)}:seen:${runId}`,
    /**
     * HASH created / updated / unchanged: the run's counts of this shard's ids, each id counted
     * once, in the same script that adds it to the seen set (so Σ counts = SCARD, always).
     */
    counts: (s: ScopeRef, shard: number, runId: number) => `${tag(s, shard)}:count:${runId}`,
    /**
     * SET of the tokens of the run's batches that added ids to this shard, added by the same
     * script as the ids; Postgres (run_acks) witnesses every acknowledged one.
     */
    acks: (s: ScopeRef, shard: number, runId: number) => `${tag(s, shard)}:acks:${runId}`,
    /**
     * STRING marker open | closing: proves the shard's sets whole and fences ingestion. Named
     * `mark`, not the `run` of versions that kept id strings: an instance of such a version finds
     * no marker for a run of this one (and refuses its batches), and the other way round.
     */
    marker: (s: ScopeRef, shard: number, runId: number) => `${tag(s, shard)}:mark:${runId}`,
    /**
     * HASH of one cache shard's bookkeeping (the cache itself is in its buckets, `<this>:<b>`,
     * HASHes field -> value, see cache.ts): '' the epoch (every invalidation bumps it, and a fill
     * prepared before it is dropped), '!' the scope's cache generation (scopes.cache_generation)
     * the shard's last invalidation was for, 'n' its bucket count, 'lo' the smallest bucket count
     * it had since it was last emptied (entries may sit in any count's bucket between), 'w' the
     * member width its fields are of. The bucket keys are named by the scripts, in this key's slot.
     */
    cache: (s: ScopeRef, cacheShard: number) => `${tag(s, cacheShard)}:cache`,
    /** HASH id -> content hash of versions before the bucketed cache: only ever unlinked. */
    legacyCache: (s: ScopeRef, cacheShard: number) => `${tag(s, cacheShard)}:hash`,
    /** HASH of the run in flight: state open | closing, batches, touched (ms of its last batch). */
    counters: (runId: number) => `${prefix}{run:${runId}}`,
    /** HASH batch id -> the batch's result, or a claim while a copy is being applied. Same slot as the counters. */
    batches: (runId: number) => `${prefix}{run:${runId}}:batches`,
    /** HASH token -> ms: the batches in flight; a completion waits until it is empty. */
    inflight: (runId: number) => `${prefix}{run:${runId}}:inflight`
  }
}

export type Keys = ReturnType<typeof createKeys>
