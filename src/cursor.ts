/**
 * Page cursors, for REST and GraphQL alike: the sort key of a page's last row as JSON, in
 * base64url. Opaque to clients; a cursor this server did not issue decodes to undefined, and
 * each API refuses it in its own words.
 */
import { badString } from './reconcile/canonical.js'

/** The keys pages are sorted by: an id, a run id, or a change's (run, change) pair. */
export type CursorKey = string | number | [number, number]
type KindOf<K extends CursorKey> = K extends string ? 'string' : K extends number ? 'number' : 'pair'

export const encodeCursor = (key: CursorKey): string => Buffer.from(JSON.stringify([key])).toString('base64url')

/** The key of a cursor of this kind, or undefined when it is not one this server issued. */
export function decodeCursor<K extends CursorKey> (cursor: string, kind: KindOf<K>): K | undefined {
  let key: unknown
  try {
    [key] = JSON.parse(Buffer.from(cursor, 'base64url').toString()) as unknown[]
  } catch {
    return undefined
  }
  if (kind === 'string' && typeof key === 'string' && !badString(key)) return key as K
  if (kind === 'number' && Number.isSafeInteger(key) && (key as number) > 0) return key as K
  if (kind === 'pair' && Array.isArray(key) && key.length === 2 && key.every((n) => Number.isSafeInteger(n))) return key as K
  return undefined
}
