/**
 * What JSON Schema cannot say about a request body, checked before anything is written: no
 * string or key holds U+0000 or a lone surrogate (Postgres text and jsonb cannot store them:
 * they would fail a statement or be stored altered), no number is beyond JSON, nothing nests
 * deeper than MAX_DEPTH, no key poisons a prototype, and no resource holds more than
 * MAX_RESOURCE_KEYS keys and items. A resource is checked by the same walk that writes its
 * canonical JSON, and its content hash is kept for ingestion (`hashResource`): one walk, not two.
 */
import { checkValue, type BadValue } from '../reconcile/canonical.js'
import { hashResource } from '../reconcile/content-hash.js'

/**
 * The first offending place in `body`, as a JSON pointer and a reason, or undefined. Each
 * resource may hold at most `maxResourceKeys` object keys and array items, at any depth.
 */
export function findBadValue (body: unknown, maxResourceKeys = Infinity): BadValue | undefined {
  const resources = typeof body === 'object' && body !== null ? (body as { resources?: unknown }).resources : undefined
  if (!Array.isArray(resources)) return checkValue(body, '', 0)
  for (let i = 0; i < resources.length; i++) {
    const bad = hashResource(resources[i], `/resources/${i}`, maxResourceKeys)
    if (bad !== undefined) return bad
  }
  return checkValue({ ...body as object, resources: [] }, '', 0)
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

/** The first id, type or region of a resource longer in bytes than its index allows. */
function oversizeField (item: unknown, root: string): { path: string, message: string } | undefined {
  if (typeof item !== 'object' || item === null) return undefined
  for (const field of ['id', 'type', 'region'] as const) {
    const bad = oversize((item as Record<string, unknown>)[field], field, `${root}/${field}`)
    if (bad !== undefined) return bad
  }
  return undefined
}

/** What is wrong with one resource of an NDJSON body (as findBadValue and findOversize for a JSON one), or undefined. */
export function findBadResource (item: unknown, maxResourceKeys: number): BadValue | undefined {
  return hashResource(item, '', maxResourceKeys) ?? oversizeField(item, '')
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
      const bad = oversizeField(item, `/${name}/${i}`)
      if (bad !== undefined) return bad
    }
  }
  return undefined
}
