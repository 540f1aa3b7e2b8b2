/**
 * Authentication and roles. Every route declares who may call it in its config (`auth`):
 * `'public'` (health, the API description, the GraphiQL page), or the roles allowed. A route
 * that declares nothing is for admins only, so a route added without thought is closed, not
 * open. The key is checked in `onRequest`, before a byte of the body is read: a caller
 * without a key cannot make the server buffer or parse anything.
 *
 * Keys are looked up by id and cached for AUTH_CACHE_TTL seconds (misses too, apart: a flood of
 * made-up ids cannot push real keys out), so a revoked key stops working on every instance
 * within that time, and a request costs no query. Made-up ids would each cost a query: at most
 * KEY_LOOKUPS run at once (the rest wait; ingestion keeps the rest of the pool), and an address
 * whose keys were refused AUTH_FAILURE_LIMIT times in RATE_LIMIT_WINDOW seconds gets 429 instead
 * of any further lookup until the window ends (a key in the cache still works from there).
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { LRUCache } from 'lru-cache'
import pLimit from 'p-limit'
import { parseKey, scopeRefusal, secretMatches, type Access, type Role } from '../auth/keys.js'
import type { KeyRow } from '../db/keys-repository.js'
import { TallyError } from '../errors.js'

export type AuthPolicy = 'public' | readonly Role[]

declare module 'fastify' {
  interface FastifyRequest {
    /** The caller's key; null only on public routes. */
    auth: Access | null
  }
  interface FastifyContextConfig {
    auth?: AuthPolicy
  }
  interface FastifyInstance {
    /**
     * The access of an `Authorization` value (`Bearer tally_…`) whose role `policy` allows, for
     * callers outside a request's hooks (a WebSocket's connection_init); throws a TallyError.
     */
    authenticate: (authorization: string | undefined, policy: readonly Role[], address?: string) => Promise<Access>
  }
}

/** Key lookups (misses of the cache) running at once on the pool ingestion uses. */
const KEY_LOOKUPS = 2

export const READERS: readonly Role[] = ['scanner', 'reader', 'admin']
export const SCANNERS: readonly Role[] = ['scanner', 'admin']
export const DASHBOARDS: readonly Role[] = ['reader', 'admin']

/** The caller's access on a route that required a key. */
export function accessOf (request: FastifyRequest): Access {
  if (request.auth === null) throw new Error(`route ${request.routeOptions.url} has no key to read: is it public?`)
  return request.auth
}

/** 403 unless the key may touch `scope`. */
export function requireScope (access: Access, scope: string): void {
  const refusal = scopeRefusal(access, scope)
  if (refusal !== undefined) throw new TallyError('forbidden', refusal)
}

/** 403 unless the key is an admin's; `what` names the option. */
export function requireAdmin (access: Access, what: string): void {
  if (access.role !== 'admin') throw new TallyError('forbidden', `${what} needs an admin key; this one is a ${access.role} key`)
}

/** Logs an action that deletes or overrides, with the key that did it. */
export function logDestructive (request: FastifyRequest, action: string, details: Record<string, unknown> = {}): void {
  const access = accessOf(request)
  request.log.warn({ keyId: access.keyId, tenant: access.tenant, action, ...details }, `destructive action: ${action}`)
}

function unauthorized (reply: FastifyReply | undefined, detail: string, presented: boolean): TallyError {
  // RFC 6750: say the scheme, and whether a token was there but wrong.
  reply?.header('www-authenticate', presented ? 'Bearer realm="tally", error="invalid_token"' : 'Bearer realm="tally"')
  // The body is never read: close the connection rather than keep it open for the rest of it.
  reply?.header('connection', 'close')
  return new TallyError('unauthorized', detail)
}

function requireRole (access: Access, policy: readonly Role[], what: string): void {
  if (!policy.includes(access.role)) throw new TallyError('forbidden', `A ${access.role} key may not call ${what}`)
}

export default fp(async function auth (fastify) {
  const { keys } = fastify.db
  fastify.decorateRequest('auth', null)

  const { AUTH_CACHE_TTL, AUTH_FAILURE_LIMIT, RATE_LIMIT_WINDOW } = fastify.config
  const lookups = pLimit(KEY_LOOKUPS)
  const ttl = AUTH_CACHE_TTL * 1000
  // Ids no key has, apart from the keys: misses never evict a key.
  const unknown = new LRUCache<string, true>({ max: 10_000, ttl: Math.max(ttl, 1) })
  const known = new LRUCache<string, KeyRow>({
    max: 10_000,
    ttl: Math.max(ttl, 1),
    // Concurrent lookups of one id share one query.
    fetchMethod: async (id) => {
      const row = await lookups(() => keys.byId(id))
      if (row === undefined) unknown.set(id, true)
      return row
    }
  })
  const cached = (id: string): KeyRow | false | undefined => ttl === 0 ? undefined : known.get(id) ?? (unknown.has(id) ? false : undefined)
  const lookup = async (id: string): Promise<KeyRow | undefined> => ttl === 0 ? lookups(() => keys.byId(id)) : known.fetch(id)
  // Refused keys per client address, counted from the first in a window of RATE_LIMIT_WINDOW.
  const failures = new LRUCache<string, number>({ max: 10_000, ttl: RATE_LIMIT_WINDOW * 1000, noUpdateTTL: true })

  async function authenticate (header: string | undefined, reply?: FastifyReply, address?: string): Promise<Access> {
    if (header === undefined) throw unauthorized(reply, 'Send an API key: Authorization: Bearer <key>', false)
    const [scheme, token] = header.split(' ', 2)
    const parsed = scheme?.toLowerCase() === 'bearer' && token !== undefined ? parseKey(token.trim()) : undefined
    if (parsed === undefined) throw unauthorized(reply, 'The Authorization header does not hold a Tally API key (Bearer tally_…)', true)
    const failed = address === undefined ? 0 : failures.get(address) ?? 0
    let row = cached(parsed.id)
    if (row === undefined) {
      // A lookup: refused first to an address whose keys were refused too often.
      if (AUTH_FAILURE_LIMIT > 0 && failed >= AUTH_FAILURE_LIMIT) {
        const retry = Math.max(1, Math.ceil(failures.getRemainingTTL(address!) / 1000))
        reply?.header('retry-after', String(retry))
        throw new TallyError('rate_limited', `${failed} refused API keys from this address in ${RATE_LIMIT_WINDOW} s (AUTH_FAILURE_LIMIT); retry in ${retry} s`)
      }
      row = await lookup(parsed.id) ?? false
    }
    if (row === false || row.revokedAt !== null || !secretMatches(parsed.secret, row.secretHash)) {
      if (address !== undefined) failures.set(address, (failures.get(address) ?? 0) + 1)
      throw unauthorized(reply, 'The API key is unknown or revoked', true)
    }
    return { keyId: row.id, tenant: row.tenant, role: row.role, scopes: row.scopes }
  }

  // Routes that say nothing: Swagger UI's are public like the document; GraphQL is for
  // dashboards; anything else is for admins.
  fastify.addHook('onRoute', (route) => {
    const config = (route.config ??= {}) as { auth?: AuthPolicy }
    if (config.auth !== undefined) return
    if (route.url === '/docs' || route.url.startsWith('/docs/')) config.auth = 'public'
    else if (route.url === '/graphql') config.auth = DASHBOARDS
    else config.auth = ['admin']
  })

  fastify.decorate('authenticate', async (authorization: string | undefined, policy: readonly Role[], address?: string) => {
    const access = await authenticate(authorization, undefined, address)
    requireRole(access, policy, 'GraphQL subscriptions')
    return access
  })

  fastify.addHook('onRequest', async (request, reply) => {
    if (request.is404) return
    const policy = request.routeOptions.config.auth ?? ['admin']
    if (policy === 'public') return
    // A browser cannot set headers on a WebSocket: its key comes in the graphql-ws
    // connection_init message, checked there (graphql/index.ts) before any subscription.
    // Node marks the requests it handed over as upgrades (`upgrade` event); headers alone do not.
    if (request.headers.authorization === undefined && request.routeOptions.url === '/graphql' && (request.raw as { upgrade?: boolean }).upgrade === true) return
    const access = await authenticate(request.headers.authorization, reply, request.ip)
    requireRole(access, policy, `${request.method} ${request.routeOptions.url}`)
    request.auth = access
  })
}, { name: 'auth', dependencies: ['config', 'db'] })
