/**
 * Where the content-hash cache keeps an id, and what it keeps for it. The cache answers "has this
 * id still the content Postgres holds?" without a query; Postgres stays the truth.
 *
 * It is not a hash of id → content hash (~136 bytes an entry for a 70-character ARN) but many
 * small hashes of integers, each small enough for Redis's listpack encoding (~16 bytes an entry):
 *
 * - the **cache shard**: crc32(id) mod the scope's cache shard count (keys.ts), for good;
 * - the **field**: the member's (members.ts) low 32 bits, a 32-bit integer (5 bytes in a listpack);
 * - the **bucket** within the shard: the field mod the shard's bucket count n, a power of two
 *   that only grows (with the scope, and whenever a bucket fills up), so an entry written under
 *   an earlier count sits in the field's bucket under that count: the field's **chain** of
 *   buckets, one per count since the shard was last emptied. The scripts (scripts.ts) keep at
 *   most one entry per field in a chain, in the bucket under n but while a growth is under way;
 * - the **value**: XXH64 of the content hash, seeded with the full id digest. It names the id
 *   and its content, so two ids sharing a field never read each other's entry as theirs: a
 *   shared field only costs a miss (a Postgres read), never a skipped change.
 */
import xxhash from 'xxhash-wasm'
import type { ScopeRow } from '../db/runs-repository.js'
import { shardOf } from './keys.js'
import { partsFor } from './members.js'

const { h64, h64Raw } = await xxhash()

/** Buckets per cache shard are capped. */
export const MAX_BUCKETS = 4096

export interface CacheSlot {
  /** The cache shard (keys.cache). */
  shard: number
  /** The field: its bucket under a count n is `field mod n` (floor modulo: always 0 … n − 1). */
  field: string
}

/** Where the cache keeps the id of this digest (`idDigest`). */
export function cacheSlot (id: string, digest: bigint, { shards, bits }: CacheLayout): CacheSlot {
  const u = BigInt.asUintN(64, digest) >> BigInt(64 - bits)
  return { shard: shardOf(id, shards), field: BigInt.asIntN(32, u).toString() }
}

/** What the cache holds for an id of this digest whose content has this hash (16 hex digits). */
export function cacheValue (digest: bigint, hash: string): string {
  return BigInt.asIntN(64, h64(hash, BigInt.asUintN(64, digest))).toString()
}

/**
 * What the cache holds for an NDJSON line of an id of this digest that begins with the id
 * (lines.ts): XXH64 of the line's bytes, seeded with the digest. Never equal to a content's
 * value but by an XXH64 collision: the inputs differ (a line is no 16-digit hash).
 */
export function lineValue (digest: bigint, line: Uint8Array): string {
  return BigInt.asIntN(64, h64Raw(line, BigInt.asUintN(64, digest))).toString()
}

/** A scope's cache as a run sees it: the scope's cache shards, the buckets its size calls for, the run's member width. */
export interface CacheLayout {
  shards: number
  buckets: number
  bits: number
}

/**
 * The cache layout for a run of a scope (undefined before its first run). The buckets follow
 * the scope's size at its last completion; a cache shard keeps the largest count it was given.
 */
export function cacheLayoutOf (scope: ScopeRow | undefined, run: { shardCount: number }, bits: number, bucketSize: number): CacheLayout {
  const shards = scope?.cacheShardCount ?? run.shardCount
  const size = Math.max(scope?.resourceCount ?? 0, scope?.baselineSeen ?? 0)
  return { shards, buckets: bucketsFor(size, shards, bucketSize), bits }
}

/** Buckets per cache shard for a scope of about `size` resources (CACHE_BUCKET_SIZE entries a bucket). */
export function bucketsFor (size: number, cacheShards: number, bucketSize: number): number {
  return partsFor(size, cacheShards, bucketSize, MAX_BUCKETS)
}
