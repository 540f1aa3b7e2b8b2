/**
 * The content hash: XXH64 of the canonical JSON (keys sorted at every depth) of everything a
 * scanner sent except the id, as 16 hex digits. Key order and absent-versus-empty optional
 * fields are not changes; anything else, including array order, is.
 *
 * A fast non-cryptographic hash is enough: it only tells one version of one resource from the
 * next, scanners are trusted, and a collision (2^-64 per change) would skip one write that the
 * next change makes. It is 3× cheaper than SHA-1 here, and its 8 bytes keep the Redis cache small.
 *
 * The canonical JSON is written by the walk that checks a resource (`canonical.ts`); the HTTP
 * routes run that walk before schema validation and the hash it gives is kept with the
 * resource object, so ingestion does not walk the resource again.
 */
import xxhash from 'xxhash-wasm'
import { canonicalResource, type BadValue } from './canonical.js'
import type { ResourceIn } from './types.js'

const { h64ToString } = await xxhash()

/** A resource's content: its canonical JSON (everything but the id), and the hash of that. */
export interface Content {
  canonical: string
  hash: string
}

/** What the check found for resources already checked, by object: bodies are not changed between the check and ingestion. */
const checked = new WeakMap<object, Content>()

/** Checks a resource as sent (see canonical.ts) and keeps its content; the reason it is refused, if it is. */
export function hashResource (item: unknown, root: string, maxValues: number): BadValue | undefined {
  const result = canonicalResource(item, root, maxValues)
  if (!('canonical' in result)) return result
  if (typeof item === 'object' && item !== null) checked.set(item, { canonical: result.canonical, hash: digest(result.canonical) })
  return undefined
}

/** The content of a resource: as its check found it, or (called without HTTP) made now. */
export function contentOf (r: ResourceIn): Content {
  if (!checked.has(r)) {
    const bad = hashResource(r, '', Infinity)
    if (bad !== undefined) throw new TypeError(`resource ${JSON.stringify(r.id)}: ${bad.path} ${bad.message}`)
  }
  return checked.get(r)!
}

export const contentHash = (r: ResourceIn): string => contentOf(r).hash

/** XXH64 of any text, 16 hex digits. */
export function digest (text: string): string {
  return h64ToString(text)
}
