/**
 * API keys as strings, and the rules that say what a key may touch.
 *
 * A key reads `tally_<id>_<secret>`: 16 hex digits of public id (shown by `keys list`, logged
 * with destructive actions) and 43 base64url characters of secret (256 random bits). Only
 * SHA-256(secret) is stored.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import type { NewKey } from '../db/keys-repository.js'
import type { Role } from '../db/schema.js'

export { roles, type Role } from '../db/schema.js'

const KEY_PATTERN = /^tally_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/

/** Tenant names: they end up in Redis hash tags (`{tenant/scope/shard}`), so no `/`, `{`, `}` or spaces. */
export const TENANT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/
/** Scope globs: a scope name where `*` stands for any characters, `/` included. */
// eslint-disable-next-line no-control-regex -- the control characters are what it excludes
export const SCOPE_GLOB_PATTERN = /^[^\s{}\u0000-\u001f\u007f]{1,256}$/

export const hashSecret = (secret: string) => createHash('sha256').update(secret).digest()

/** A new key: the row to store, and the string to show once. */
export function generateKey (fields: { tenant: string, role: Role, scopes?: string[], name?: string | null, createdBy: string }): { row: NewKey, key: string } {
  if (!TENANT_PATTERN.test(fields.tenant)) throw new Error(`tenant must match ${TENANT_PATTERN}`)
  for (const glob of fields.scopes ?? []) {
    if (!SCOPE_GLOB_PATTERN.test(glob)) throw new Error(`scope glob ${JSON.stringify(glob)} must be 1–256 characters without spaces, { or }`)
  }
  const id = randomBytes(8).toString('hex')
  const secret = randomBytes(32).toString('base64url')
  return {
    row: { id, tenant: fields.tenant, role: fields.role, scopes: fields.scopes ?? [], name: fields.name ?? null, secretHash: hashSecret(secret), createdBy: fields.createdBy },
    key: `tally_${id}_${secret}`
  }
}

/** The id and secret of a key string; undefined when it is not shaped like a key. */
export function parseKey (key: string): { id: string, secret: string } | undefined {
  const match = KEY_PATTERN.exec(key)
  return match === null ? undefined : { id: match[1]!, secret: match[2]! }
}

export function secretMatches (secret: string, stored: Buffer): boolean {
  const hash = hashSecret(secret)
  return hash.length === stored.length && timingSafeEqual(hash, stored)
}

/** Who is calling: the key's id, tenant, role and scope globs (empty: all of the tenant's scopes). */
export interface Access {
  keyId: string
  tenant: string
  role: Role
  scopes: string[]
}

const globRegExp = (glob: string) =>
  new RegExp(`^${glob.split('*').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`, 's')

/** True when the key may touch `scope`. */
export function allowsScope (access: Access, scope: string): boolean {
  return access.scopes.length === 0 || access.scopes.some((glob) => globRegExp(glob).test(scope))
}

/** Why the key may not touch `scope`, or undefined when it may. */
export function scopeRefusal (access: Access, scope: string): string | undefined {
  return allowsScope(access, scope) ? undefined : `This key is restricted to scopes ${access.scopes.join(', ')}; ${scope} is not one of them`
}

/** A glob as a SQL LIKE pattern (with `\` as the escape character). */
export const globToLike = (glob: string) => glob.split('*').map((part) => part.replace(/[\\%_]/g, (c) => `\\${c}`)).join('%')
