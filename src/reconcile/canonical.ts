/**
 * One walk over a resource that both checks it and writes its canonical JSON: keys sorted at
 * every depth (UTF-16 code-unit order, as `Array.prototype.sort`), no whitespace, strings as
 * `JSON.stringify` writes them, numbers as `String(n)`. Byte for byte what
 * `safe-stable-stringify` (deterministic) wrote before it, so content hashes stay what they were
 * (`test/content-hash.test.ts` compares the two on random values).
 *
 * The checks are those Postgres needs (it cannot store U+0000 or a lone surrogate in text or
 * jsonb, JSON cannot carry 1e309), and the bounds that keep a body's cost linear: nesting depth
 * and the number of keys and array items per resource. A value that fails one stops the walk;
 * its JSON pointer is built only then.
 */

/** Levels below the body; the resources array and a resource take 2, so attributes nest up to 32 levels. */
const MAX_DEPTH = 34

/** True for text Postgres cannot store as it is: U+0000 or an unpaired surrogate. */
export const badString = (s: string) => s.includes('\u0000') || !s.isWellFormed()

/** True when quotes around `s` make its JSON: no control character, quote, backslash or surrogate (those take a closer look). */
function plain (s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return false
  }
  return true
}

export interface BadValue { path: string, message: string }

/** Thrown inside the walk, caught at its root with the walk's path as it stood. */
class Refusal {
  constructor (readonly message: string, readonly atRoot = false) {}
}

/** One walk's state: the keys and indexes from its root to the value at hand, and what it has counted. */
interface Walk { path: Array<string | number>, values: number, maxValues: number }

function text (s: string): string {
  if (plain(s)) return `"${s}"`
  if (badString(s)) throw new Refusal('must not contain U+0000 or unpaired surrogates')
  return JSON.stringify(s)
}

/**
 * A key as JSON, once it is known to be one Postgres can store and no prototype-poisoning
 * attempt: the ingest routes parse JSON without secure-json-parse's scans of the whole text
 * (`__proto__` anywhere, `constructor.prototype`), so the walk refuses them instead.
 */
function keyText (k: string, value: unknown): string {
  if (plain(k)) {
    if (k === '__proto__' || (k === 'constructor' && typeof value === 'object' && value !== null && Object.hasOwn(value, 'prototype'))) {
      throw new Refusal(`must not hold a ${k === '__proto__' ? '__proto__ key' : 'constructor.prototype'}`)
    }
    return `"${k}"`
  }
  if (badString(k)) throw new Refusal('keys must not contain U+0000 or unpaired surrogates')
  return JSON.stringify(k)
}

function count (walk: Walk, n: number): void {
  walk.values += n
  if (walk.values > walk.maxValues) {
    throw new Refusal(`holds more than ${walk.maxValues} keys and array items (MAX_RESOURCE_KEYS)`, true)
  }
}

/** The canonical JSON of any value, checked on the way; `undefined` members are left out, as JSON.stringify does. */
function write (value: unknown, depth: number, walk: Walk): string {
  switch (typeof value) {
    case 'string': return text(value)
    case 'number':
      // JSON.parse reads 1e309 as Infinity, which JSON cannot write back: it would be stored as null.
      if (!Number.isFinite(value)) throw new Refusal('must be a number JSON can keep (1e309 is not)')
      return String(value)
    case 'boolean': return value ? 'true' : 'false'
    case 'object': break
    default: return 'null'
  }
  if (value === null) return 'null'
  if (depth > MAX_DEPTH) throw new Refusal(`nests too deep (attributes hold at most ${MAX_DEPTH - 2} levels)`)
  if (Array.isArray(value)) {
    count(walk, value.length)
    let out = '['
    for (let i = 0; i < value.length; i++) out += `${i === 0 ? '' : ','}${member(value[i], i, depth, walk)}`
    return out + ']'
  }
  // Counted before anything else is done with them: an object of 3 M keys is refused, not sorted.
  const keys = Object.keys(value)
  count(walk, keys.length)
  if (!sorted(keys)) keys.sort()
  let out = '{'
  for (const k of keys) {
    const v = (value as Record<string, unknown>)[k]
    const name = keyText(k, v)
    if (v === undefined) continue
    out += `${out.length === 1 ? '' : ','}${name}:${member(v, k, depth, walk)}`
  }
  return out + '}'
}

/** Scanners often send keys in order already; checking costs less than sorting. */
function sorted (keys: string[]): boolean {
  for (let i = 1; i < keys.length; i++) if (keys[i - 1]! > keys[i]!) return false
  return true
}

/** A member of an object or array, one level down; its key is on the path while it is written. */
function member (value: unknown, at: string | number, depth: number, walk: Walk): string {
  walk.path.push(at)
  const out = write(value, depth + 1, walk)
  walk.path.pop()
  return out
}

const pointer = (root: string, walk: Walk) => root + walk.path.map((k) => `/${k}`).join('')

/** Runs a walk from `root` (at `depth`), turning a refusal into its place and reason. */
function walkFrom<T> (root: string, maxValues: number, run: (walk: Walk) => T): T | BadValue {
  const walk: Walk = { path: [], values: 0, maxValues }
  try {
    return run(walk)
  } catch (err) {
    if (!(err instanceof Refusal)) throw err
    return { path: err.atRoot ? root : pointer(root, walk), message: err.message }
  }
}

/**
 * Checks a resource (anything sent as one: the schema is checked later) and writes the canonical
 * JSON of its content, everything but the id: `{attributes, name, region, tags, type}` with
 * absent optional fields as `{}` or `null`. Its other fields are checked too.
 */
export function canonicalResource (item: unknown, root: string, maxValues: number): { canonical: string } | BadValue {
  return walkFrom(root, maxValues, (walk) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) return { canonical: write(item, 2, walk) }
    const r = item as Record<string, unknown>
    const fields = Object.keys(r)
    count(walk, fields.length)
    for (const field of fields) {
      keyText(field, r[field])
      if (field !== 'type' && field !== 'name' && field !== 'region' && field !== 'tags' && field !== 'attributes') member(r[field], field, 2, walk)
    }
    const canonical = `{"attributes":${member(r.attributes ?? {}, 'attributes', 2, walk)},"name":${member(r.name ?? null, 'name', 2, walk)},` +
      `"region":${member(r.region ?? null, 'region', 2, walk)},"tags":${member(r.tags ?? {}, 'tags', 2, walk)}` +
      // A resource without a type is refused by the schema; like JSON.stringify, leave the member out.
      `${r.type === undefined ? '' : `,"type":${member(r.type, 'type', 2, walk)}`}}`
    return { canonical }
  })
}

/** Checks any other value (a body that is not a batch of resources, or a batch's other fields). */
export function checkValue (value: unknown, root: string, depth: number): BadValue | undefined {
  return walkFrom<undefined>(root, Infinity, (walk) => { write(value, depth, walk); return undefined })
}
