/**
 * What JSON Schema cannot say about a request body, checked before anything is written: no
 * string or key holds U+0000 or a lone surrogate (Postgres text and jsonb cannot store them:
 * they would fail a statement or be stored altered), and nothing nests deeper than MAX_DEPTH
 * (hashing walks resource attributes). Iterative, so a hostile 100,000-deep body cannot
 * exhaust the stack.
 */
/** Levels below the body; the resources array and a resource take 2, so attributes nest up to 32 levels. */
export const MAX_DEPTH = 34

/** True for text Postgres cannot store as it is: U+0000 or an unpaired surrogate. */
export const badString = (s: string) => s.includes('\u0000') || !s.isWellFormed()

function walk (root: unknown, rootPath: string, rootDepth: number, maxValues: number): { path: string, message: string } | undefined {
  const stack: Array<[unknown, string, number]> = [[root, rootPath, rootDepth]]
  let values = 0
  while (stack.length > 0) {
    const [value, path, depth] = stack.pop()!
    if (typeof value === 'string') {
      if (badString(value)) return { path, message: 'must not contain U+0000 or unpaired surrogates' }
    } else if (typeof value === 'number') {
      // JSON.parse reads 1e309 as Infinity, which JSON cannot write back: it would be stored as null.
      if (!Number.isFinite(value)) return { path, message: 'must be a number JSON can keep (1e309 is not)' }
    } else if (typeof value === 'object' && value !== null) {
      if (depth > MAX_DEPTH) return { path, message: `nests too deep (attributes hold at most ${MAX_DEPTH - 2} levels)` }
      // Counted before the entries are listed: an object of 3 M keys is refused, not copied.
      const keys = Array.isArray(value) ? undefined : Object.keys(value)
      values += keys === undefined ? (value as unknown[]).length : keys.length
      if (values > maxValues) return { path: rootPath, message: `holds more than ${maxValues} keys and array items (MAX_RESOURCE_KEYS)` }
      const entries = keys === undefined ? (value as unknown[]).entries() : keys.map((key) => [key, (value as Record<string, unknown>)[key]] as const)
      for (const [key, child] of entries) {
        if (typeof key === 'string' && badString(key)) return { path, message: 'keys must not contain U+0000 or unpaired surrogates' }
        stack.push([child, `${path}/${key}`, depth + 1])
      }
    }
  }
  return undefined
}

/**
 * The first offending place in `body`, as a JSON pointer and a reason, or undefined. Each
 * resource may hold at most `maxResourceKeys` object keys and array items, at any depth.
 */
export function findBadValue (body: unknown, maxResourceKeys = Infinity): { path: string, message: string } | undefined {
  const resources = typeof body === 'object' && body !== null ? (body as { resources?: unknown }).resources : undefined
  if (!Array.isArray(resources)) return walk(body, '', 0, Infinity)
  for (const [i, item] of resources.entries()) {
    const bad = walk(item, `/resources/${i}`, 2, maxResourceKeys)
    if (bad !== undefined) return bad
  }
  return walk({ ...body as object, resources: [] }, '', 0, Infinity)
}

/**
 * Limits in UTF-8 bytes on the values Postgres indexes: a btree entry holds at most about
 * 2.7 kB, and (tenant, scope, type, id) must fit. JSON Schema's maxLength counts characters,
 * and 1,000 CJK characters are 3,000 bytes.
 */
export const BYTE_LIMITS = { scope: 256, id: 1024, type: 256, region: 64 } as const

type Limited = keyof typeof BYTE_LIMITS

function oversize (value: unknown, field: Limited, path: string): { path: string, message: string } | undefined {
  if (typeof value !== 'string' || Buffer.byteLength(value) <= BYTE_LIMITS[field]) return undefined
  return { path, message: `must be at most ${BYTE_LIMITS[field]} bytes in UTF-8 (is ${Buffer.byteLength(value)})` }
}

/** The first scope, id, type or region in a runs body longer in bytes than its index allows. */
export function findOversize (body: unknown): { path: string, message: string } | undefined {
  if (typeof body !== 'object' || body === null) return undefined
  const b = body as { scope?: unknown, resources?: unknown, skip?: unknown }
  const found = oversize(b.scope, 'scope', '/scope')
  if (found !== undefined) return found
  for (const [list, name] of [[b.resources, 'resources'], [b.skip, 'skip']] as const) {
    if (!Array.isArray(list)) continue
    for (const [i, item] of list.entries()) {
      if (typeof item !== 'object' || item === null) continue
      for (const field of ['id', 'type', 'region'] as const) {
        const bad = oversize((item as Record<string, unknown>)[field], field, `/${name}/${i}/${field}`)
        if (bad !== undefined) return bad
      }
    }
  }
  return undefined
}
