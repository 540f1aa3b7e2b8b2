/**
 * Authentication and roles. Every route declares who may call it in its config (`auth`):
 * `'public'` (health, the API description, the GraphiQL page), or the roles allowed. A route
 * that declares nothing is for admins only, so a route added without thought is closed, not
 * open. The key is checked in `onRequest`, before a byte of the body is read: a caller
 * without a key cannot make the server buffer or parse anything.
 *
 * Keys are looked up by id and cached for AUTH_CACHE_TTL seconds (misses too), so a revoked
 * key stops working on every instance within that time, and a request costs no query.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { LRUCache } from 'lru-cache'
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
    authenticate: (authorization: string | undefined, policy: readonly Role[]) => Promise<Access>
  }
}

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

  const cache = new LRUCache<string, KeyRow | false>({
    max: 10_000,
    ttl: fastify.config.AUTH_CACHE_TTL * 1000,
    fetchMethod: async (id) => (await keys.byId(id)) ?? false
  })

  async function authenticate (header: string | undefined, reply?: FastifyReply): Promise<Access> {
    if (header === undefined) throw unauthorized(reply, 'Send an API key: Authorization: Bearer <key>', false)
    const [scheme, token] = header.split(' ', 2)
    const parsed = scheme?.toLowerCase() === 'bearer' && token !== undefined ? parseKey(token.trim()) : undefined
    if (parsed === undefined) throw unauthorized(reply, 'The Authorization header does not hold a Tally API key (Bearer tally_…)', true)
    const row = cache.ttl > 0 ? await cache.fetch(parsed.id) : (await keys.byId(parsed.id)) ?? false
    if (row === undefined || row === false || row.revokedAt !== null || !secretMatches(parsed.secret, row.secretHash)) {
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

  fastify.decorate('authenticate', async (authorization: string | undefined, policy: readonly Role[]) => {
    const access = await authenticate(authorization)
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
    const access = await authenticate(request.headers.authorization, reply)
    requireRole(access, policy, `${request.method} ${request.routeOptions.url}`)
    request.auth = access
  })
}, { name: 'auth', dependencies: ['config', 'db'] })
