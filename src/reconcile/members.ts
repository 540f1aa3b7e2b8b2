/**
 * What a run's seen sets hold: not the ids themselves but 64-bit digests of them ("members"),
 * in sets kept small enough for Redis's integer encoding (an intset: ~8 bytes a member, against
 * ~120 for a 70-character ARN in a hashtable-encoded set of strings).
 *
 * The digest is XXH64 of the id's UTF-8 bytes, read as a signed 64-bit integer; Postgres keeps
 * it with each row (`resources.id_digest`), so a completion turns the members a diff finds
 * back into rows. A member is the digest's top `bits` bits (all 64 but in tests of collisions).
 * Everything about where a member lives follows from the member alone: its shard (`u mod
 * shardCount`, u the member as an unsigned number) and its set within the shard
 * (`⌊u / shardCount⌋ mod sets`). Set counts are powers of two, so a set of a run with twice the
 * sets holds a subset of one set of the other: runs with different set counts still diff set by set.
 *
 * Two ids of one scope with the same member are one member to the sets. The only effect: once
 * one of them vanishes while the other stays, the vanished one is not deleted (nothing stale is
 * found for a member the run saw). A collision never deletes a live resource and never hides a
 * change (contents are compared by id, against the cache and Postgres). See docs/architecture.md
 * for the odds.
 */
import xxhash from 'xxhash-wasm'

const { h64 } = await xxhash()

/** How a run lays out its seen sets; stored with the run (`runs.shard_count`, `seen_sets`, `digest_bits`). */
export interface SetLayout {
  shardCount: number
  /** Sets per shard, a power of two. */
  sets: number
  /** Bits of the digest a member keeps, 1–64. */
  bits: number
}

export interface Placed {
  /** The member as Redis stores it: a decimal integer (so sets of members stay intsets). */
  member: string
  shard: number
  set: number
}

/** XXH64 of the id's UTF-8, as the signed 64-bit integer `resources.id_digest` holds. */
export function idDigest (id: string): bigint {
  return BigInt.asIntN(64, h64(id))
}

/** The member's value as an unsigned number (0 … 2^bits − 1). */
function unsignedOf (member: string, bits: number): bigint {
  return bits === 64 ? BigInt.asUintN(64, BigInt(member)) : BigInt(member)
}

/** The set of a shard that a member of this unsigned value lives in. */
const setOfUnsigned = (u: bigint, layout: SetLayout) => Number((u / BigInt(layout.shardCount)) % BigInt(layout.sets))

/** Where the member of an id of this digest (`idDigest`) lives in a run's sets. */
export function place (digest: bigint, layout: SetLayout): Placed {
  const u = BigInt.asUintN(64, digest) >> (64n - BigInt(layout.bits))
  return {
    member: (layout.bits === 64 ? BigInt.asIntN(64, u) : u).toString(),
    shard: Number(u % BigInt(layout.shardCount)),
    set: setOfUnsigned(u, layout)
  }
}

/** The set a member lives in under a layout (as `place` says for its digest). */
export function setOf (member: string, layout: SetLayout): number {
  return setOfUnsigned(unsignedOf(member, layout.bits), layout)
}

/** The range of `resources.id_digest` (signed, inclusive) whose rows have this member. */
export function digestRange (member: string, bits: number): [string, string] {
  const shift = 64n - BigInt(bits)
  const u = unsignedOf(member, bits)
  return [BigInt.asIntN(64, u << shift).toString(), BigInt.asIntN(64, ((u + 1n) << shift) - 1n).toString()]
}

/** Groups things by a key, each group in input order. */
export function groupBy<T, K> (things: Iterable<T>, keyOf: (thing: T) => K): Map<K, T[]> {
  const groups = new Map<K, T[]>()
  for (const thing of things) {
    const key = keyOf(thing)
    const group = groups.get(key)
    if (group === undefined) groups.set(key, [thing])
    else group.push(thing)
  }
  return groups
}

/** Groups things by where their members live: shard → set → member → the things with that member. */
export function groupPlaced<T> (things: Iterable<T>, placedOf: (thing: T) => Placed): Map<number, Map<number, Map<string, T[]>>> {
  const shards = new Map<number, Map<number, Map<string, T[]>>>()
  for (const thing of things) {
    const { member, shard, set } = placedOf(thing)
    let sets = shards.get(shard)
    if (sets === undefined) shards.set(shard, sets = new Map())
    let members = sets.get(set)
    if (members === undefined) sets.set(set, members = new Map())
    const same = members.get(member)
    if (same === undefined) members.set(member, [thing])
    else same.push(thing)
  }
  return shards
}

/** Groups ids by the shard and set of their member: shard → set → member → ids. */
export function groupMembers (ids: Iterable<string>, layout: SetLayout): Map<number, Map<number, Map<string, string[]>>> {
  return groupPlaced(ids, (id) => place(idDigest(id), layout))
}

/** Sets per shard are capped: past this, fewer and larger (hashtable-encoded) sets cost less than more keys. */
export const MAX_SETS = 1024

/**
 * How many parts, a power of two of at most `max`, to split each of `groups` groups into so that
 * `size` things spread evenly leave a part at or under `perPart` on average.
 */
export function partsFor (size: number, groups: number, perPart: number, max: number): number {
  const needed = Math.ceil(size / (groups * perPart))
  let parts = 1
  while (parts < needed && parts < max) parts *= 2
  return parts
}

/** Sets per shard for a run of a scope expected to hold about `size` resources (SEEN_SET_SIZE members a set). */
export function setsFor (size: number, shardCount: number, setSize: number): number {
  return partsFor(size, shardCount, setSize, MAX_SETS)
}
