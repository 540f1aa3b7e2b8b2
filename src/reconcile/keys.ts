/**
 * Shard math and Redis key names. Every key of one scope-shard shares the hash tag
 * `{tenant/scope/shard}`, so SDIFF, scripts and pipelines over them work unchanged on
 * Redis Cluster. Scopes never contain `{` or `}` (validated), so the tag cannot be broken.
 */
import { crc32 } from 'node:zlib'

/** crc32(utf8(id)) mod shardCount: stable forever, across processes and versions. */
export function shardOf (id: string, shardCount: number): number {
  return crc32(id) % shardCount
}

/** Groups ids by shard; each shard's ids keep their input order. */
export function groupByShard (ids: Iterable<string>, shardCount: number): Map<number, string[]> {
  const groups = new Map<number, string[]>()
  for (const id of ids) {
    const shard = shardOf(id, shardCount)
    const group = groups.get(shard)
    if (group === undefined) groups.set(shard, [id])
    else group.push(id)
  }
  return groups
}

export interface ScopeRef {
  tenant: string
  scope: string
}

export function createKeys (prefix: string) {
  const tag = (s: ScopeRef, shard: number) => `${prefix}{${s.tenant}/${s.scope}/${shard}}`
  return {
    /** SET of ids the run saw in this shard. */
    seen: (s: ScopeRef, shard: number, runId: number) => `${tag(s, shard)}:seen:${runId}`,
    /**
     * HASH id -> content hash, a cache of resources.content_hash. The shard count is part of
     * the name: under another count the same shard number holds other ids, and a stale entry
     * must never answer for an id it was not written for.
     */
    hash: (s: ScopeRef, shard: number, shardCount: number) => `${tag(s, shard)}:hash:${shardCount}`,
    /** STRING marker open | closing: proves the shard's set is whole and fences ingestion. */
    marker: (s: ScopeRef, shard: number, runId: number) => `${tag(s, shard)}:run:${runId}`,
    /** HASH of the open run's counters, and `touched`: when it last took a batch (ms). */
    counters: (runId: number) => `${prefix}{run:${runId}}`,
    /** HASH batch id -> the batch's result, or a claim while a copy is being applied. Same slot as the counters. */
    batches: (runId: number) => `${prefix}{run:${runId}}:batches`
  }
}

export type Keys = ReturnType<typeof createKeys>
