/**
 * The content hash: SHA-1 of the canonical JSON (keys sorted at every depth) of everything
 * a scanner sent except the id. Key order and absent-versus-empty optional fields are not
 * changes; anything else, including array order, is.
 */
import { hash } from 'node:crypto'
import { configure } from 'safe-stable-stringify'
import type { ResourceIn } from './types.js'

const canonicalJson = configure({ deterministic: true, bigint: false, circularValue: Error })

export function contentHash (r: ResourceIn): Buffer {
  const canonical = canonicalJson({
    type: r.type,
    name: r.name ?? null,
    region: r.region ?? null,
    tags: r.tags ?? {},
    attributes: r.attributes ?? {}
  })
  return hash('sha1', canonical as string, 'buffer')
}
