/** Resolvers and loaders: thin shapes over the inventory repository, one query per list or batch. */
import type { GraphQLResolveInfo } from 'graphql'
import type { IResolvers, MercuriusContext, MercuriusLoaders } from 'mercurius'
import { scopeRefusal, type Access } from '../auth/keys.js'
import { badString } from '../reconcile/canonical.js'
import { RUN_ID_TEXT } from '../contract.js'
import { decodeCursor, encodeCursor, type CursorKey } from '../cursor.js'
import type { GraphQLCode } from '../errors.js'

import mercurius from 'mercurius'
import type { ChangeFilter, ChangeRow, InventoryRepository, ResourceFilter, ResourceRow } from '../db/inventory-repository.js'
import type { RunRow, ScopeRow } from '../db/runs-repository.js'
import type { ChangeKind, RunStatus } from '../db/schema.js'
import type { RunCompletedEvent } from '../plugins/events.js'
import { MAX_PAGE } from './limits.js'

const { ErrorWithProps } = mercurius

/**
 * A refusal as GraphQL answers it, with its code (errors.ts). ErrorWithProps, not a TallyError:
 * an error thrown where a subscription starts reaches the client without passing the error
 * formatter (which gives a TallyError its code everywhere else).
 */
const refuse = (message: string, { code, ...extra }: { code: GraphQLCode } & Record<string, unknown>, status?: number) =>
  new ErrorWithProps(message, { code, ...extra }, status)

declare module 'mercurius' {
  interface MercuriusContext {
    /** The caller's key: a reader or admin key (the route and the WebSocket guard refuse others). */
    access: Access | null
    /** A WebSocket's key checked again, before each event. */
    recheck?: () => Promise<Access>
    /** Aborted when the client hangs up: resolvers then stop before their query. */
    signal: AbortSignal
  }
}

export type GraphQLContext = MercuriusContext

/** The tenant and scope globs queries are limited to; refuses when the client is gone. */
function caller (context: GraphQLContext): { tenant: string, globs: string[] } {
  if (context.signal.aborted) throw refuse('The client closed the request', { code: 'CLIENT_CLOSED' })
  const access = accessOf(context)
  return { tenant: access.tenant, globs: access.scopes }
}

/** The caller's key. */
function accessOf (context: GraphQLContext): Access {
  // Never: the auth hook and the WebSocket guard let nothing through without a key.
  if (context.access == null) throw refuse('Send an API key: Authorization: Bearer <key> (on a WebSocket, as `authorization` in connection_init\'s payload)', { code: 'UNAUTHORIZED' }, 401)
  return context.access
}

/** A scope the key may read, or a FORBIDDEN error. */
function readableScope (context: GraphQLContext, scope: string): string {
  text(scope, 'scope')
  const refusal = scopeRefusal(accessOf(context), scope)
  if (refusal !== undefined) throw refuse(refusal, { code: 'FORBIDDEN' })
  return scope
}

/** Text Postgres can store and compare: no U+0000, no lone surrogate. Null and undefined pass. */
function text<T extends string | null | undefined> (value: T, name: string): T {
  if (typeof value === 'string' && badString(value)) {
    throw refuse(`${name} must not contain U+0000 or unpaired surrogates`, { code: 'BAD_USER_INPUT' })
  }
  return value
}

/** The key of an `after` cursor (cursor.ts), null for none; a BAD_CURSOR error for one this server did not issue. */
function afterKey<K extends CursorKey> (cursor: string | null | undefined, kind: Parameters<typeof decodeCursor<K>>[1]): K | null {
  if (cursor == null) return null
  const key = decodeCursor<K>(cursor, kind)
  if (key === undefined) throw refuse('after is not a cursor this server issued', { code: 'BAD_CURSOR' })
  return key
}

function pageSize (first: number | null | undefined): number {
  const n = first ?? 50
  if (!Number.isInteger(n) || n < 0 || n > MAX_PAGE) {
    throw refuse(`first must be between 0 and ${MAX_PAGE}`, { code: 'FIRST_TOO_LARGE' })
  }
  return n
}

/** A connection from rows fetched with one extra: its presence says there is a next page. */
function connection<R> (rows: R[], limit: number, key: (row: R) => CursorKey) {
  const page = rows.slice(0, limit)
  const edges = page.map((node) => ({ cursor: encodeCursor(key(node)), node }))
  return { edges, pageInfo: { hasNextPage: rows.length > limit, endCursor: edges.at(-1)?.cursor ?? null } }
}

const iso = (d: Date | null) => d?.toISOString() ?? null

function runView (run: RunRow) {
  const { seen, created, updated, unchanged, deleted, batches, skipped } = run
  return {
    ...run,
    scanner: run.scannerName === null ? null : { name: run.scannerName, version: run.scannerVersion },
    startedAt: iso(run.startedAt),
    completedAt: iso(run.completedAt),
    durationMs: run.completedAt === null ? null : run.completedAt.getTime() - run.startedAt.getTime(),
    stats: { seen, created, updated, unchanged, deleted, batches, skipped }
  }
}

function resourceView (r: ResourceRow) {
  return { ...r, firstSeenAt: iso(r.firstSeenAt), lastChangedAt: iso(r.changedAt), deletedAt: iso(r.deletedAt) }
}

const scopeView = (s: ScopeRow) => ({ ...s, lastCompletedAt: iso(s.lastCompletedAt) })

interface ResourcesArgs {
  scope: string
  type?: string | null
  region?: string | null
  tag?: { key: string, value: string } | null
  idPrefix?: string | null
  changedSince?: string | null
  includeDeleted?: boolean | null
  first?: number | null
  after?: string | null
}

function isoTime (value: string | null | undefined, name: string): Date | null {
  if (value == null) return null
  const date = new Date(value)
  if (Number.isNaN(date.getTime())) throw refuse(`${name} must be an ISO 8601 time`, { code: 'BAD_USER_INPUT' })
  return date
}

const changeView = (c: ChangeRow) => ({
  ...c, kind: c.kind.toUpperCase(), at: iso(c.at), changedFields: c.changedFields ?? []
})

/** Whose changes a connection lists, kept on it for its totalCount. */
type ChangeOwner =
  | { owner: 'run', runId: number, filter: ChangeFilter }
  | { owner: 'resource', tenant: string, scope: string, id: string }
  | { owner: 'scope', tenant: string, scope: string, filter: ChangeFilter }

interface ChangesArgs { kind?: string | null, type?: string | null, first?: number | null, after?: string | null }

function changeFilter (args: ChangesArgs & { since?: string | null }): ChangeFilter {
  return { kind: (args.kind?.toLowerCase() ?? null) as ChangeKind | null, type: text(args.type, 'type'), since: isoTime(args.since, 'since') }
}

/** Mercurius loader queries grouped by their arguments: each group is one statement. */
function byParams<Q extends { params: unknown }> (queries: Q[]): Array<[Q['params'], Array<{ query: Q, index: number }>]> {
  const groups = new Map<string, [Q['params'], Array<{ query: Q, index: number }>]>()
  queries.forEach((query, index) => {
    const key = JSON.stringify(query.params)
    const group = groups.get(key) ?? groups.set(key, [query.params, []]).get(key)!
    group[1].push({ query, index })
  })
  return [...groups.values()]
}

/** Rows fetched for many owners at once, one connection per owner. */
function connectionsOf<K> (rows: ChangeRow[], owners: K[], ownerOf: (row: ChangeRow) => K, limit: number) {
  const buckets = new Map<K, ChangeRow[]>(owners.map((o) => [o, []]))
  for (const row of rows) buckets.get(ownerOf(row))?.push(row)
  return new Map(owners.map((o) => [o, connection(buckets.get(o)!.map(changeView), limit, (c) => c.id)]))
}

export interface SubscriptionSupport {
  runCompletedTopic: (tenant: string, scope: string) => string
  /** Throws when the subscription's selection, priced with its variables, is over the limits. */
  priceSubscription: (info: GraphQLResolveInfo) => void
}

export function createResolvers (inventory: InventoryRepository, { runCompletedTopic, priceSubscription }: SubscriptionSupport): { resolvers: IResolvers, loaders: MercuriusLoaders } {
  const runLoader = (field: 'firstSeenRunId' | 'changedRunId' | 'deletedRunId' | 'baselineRunId' | 'runId') =>
    async (queries: Array<{ obj: Record<string, unknown> }>, context: GraphQLContext) => {
      const ids = [...new Set(queries.map((q) => q.obj[field]).filter((id): id is number => typeof id === 'number'))]
      const { tenant, globs } = caller(context)
      const byId = new Map((await inventory.runsByIds(tenant, globs, ids)).map((r) => [r.id, runView(r)]))
      return queries.map((q) => byId.get(q.obj[field] as number) ?? null)
    }

  const resolvers: IResolvers = {
    Query: {
      async resources (_root, args: ResourcesArgs, context: GraphQLContext) {
        const limit = pageSize(args.first)
        const { tenant } = caller(context)
        readableScope(context, args.scope)
        for (const name of ['type', 'region', 'idPrefix'] as const) text(args[name], name)
        text(args.tag?.key, 'tag.key')
        text(args.tag?.value, 'tag.value')
        const filter: ResourceFilter = { ...args, tenant, changedSince: isoTime(args.changedSince, 'changedSince') }
        const rows = await inventory.resourcesPage(filter, afterKey<string>(args.after, 'string'), limit + 1)
        return { ...connection(rows.map(resourceView), limit, (r) => r.id), filter }
      },
      async resource (_root, args: { scope: string, id: string }, context: GraphQLContext) {
        const { tenant } = caller(context)
        const row = await inventory.resource(tenant, readableScope(context, args.scope), text(args.id, 'id'))
        return row === undefined ? null : resourceView(row)
      },
      async runs (_root, args: { scope?: string | null, status?: RunStatus | null, first?: number | null, after?: string | null }, context: GraphQLContext) {
        const limit = pageSize(args.first)
        const { tenant, globs } = caller(context)
        const scope = args.scope == null ? null : readableScope(context, args.scope)
        const rows = await inventory.runsPage(tenant, globs, scope, args.status ?? null, afterKey<number>(args.after, 'number'), limit + 1)
        return connection(rows.map(runView), limit, (r) => r.id)
      },
      async run (_root, args: { id: string }, context: GraphQLContext) {
        const { tenant, globs } = caller(context)
        if (!RUN_ID_TEXT.test(args.id)) return null
        const [row] = await inventory.runsByIds(tenant, globs, [Number(args.id)])
        return row === undefined ? null : runView(row)
      },
      async scopes (_root, args: { first?: number | null, after?: string | null }, context: GraphQLContext) {
        const limit = pageSize(args.first)
        const { tenant, globs } = caller(context)
        const rows = await inventory.scopesPage(tenant, globs, afterKey<string>(args.after, 'string'), limit + 1)
        return connection(rows.map(scopeView), limit, (s) => s.scope)
      },
      summary: async (_root, args: { scope: string }, context: GraphQLContext) =>
        inventory.summary(caller(context).tenant, readableScope(context, args.scope)),
      async changes (_root, args: ChangesArgs & { scope: string, since?: string | null }, context: GraphQLContext) {
        const limit = pageSize(args.first)
        const { tenant } = caller(context)
        const scope = readableScope(context, args.scope)
        const filter = changeFilter(args)
        const rows = await inventory.scopeChanges(tenant, scope, filter, afterKey<[number, number]>(args.after, 'pair'), limit + 1)
        const count: ChangeOwner = { owner: 'scope', tenant, scope, filter }
        return { ...connection(rows.map(changeView), limit, (c) => [c.runId, c.id]), count }
      }
    },
    Subscription: {
      runCompleted: {
        async subscribe (_root, args: { scope: string }, context: GraphQLContext & { pubsub: { subscribe: (topic: string) => Promise<AsyncIterable<unknown>> } }, info: GraphQLResolveInfo) {
          const { tenant } = caller(context)
          const scope = readableScope(context, args.scope)
          priceSubscription(info)
          return await context.pubsub.subscribe(runCompletedTopic(tenant, scope))
        },
        // The event names the run; each subscriber reads it with its own key, checked again
        // (through the key cache): a revoked key stops receiving within AUTH_CACHE_TTL. Its
        // refusal, a TallyError, gets its code from the error formatter, as an event's errors pass it.
        async resolve (event: RunCompletedEvent, _args: unknown, context: GraphQLContext) {
          if (context.recheck !== undefined) context.access = await context.recheck()
          const { tenant, globs } = caller(context)
          const [row] = await inventory.runsByIds(tenant, globs, [event.runId])
          if (row === undefined) throw refuse(`Run ${event.runId} is not readable with this key`, { code: 'FORBIDDEN' })
          return runView(row)
        }
      }
    },
    ResourceConnection: {
      totalCount: async (parent: { filter: ResourceFilter }, _args: unknown, context: GraphQLContext) => {
        caller(context)
        return inventory.countResources(parent.filter)
      }
    }
  }

  const loaders: MercuriusLoaders = {
    Resource: {
      firstSeenRun: runLoader('firstSeenRunId'),
      lastChangedRun: runLoader('changedRunId'),
      deletedRun: runLoader('deletedRunId'),
      // The histories of a page of resources: one statement per scope and page arguments.
      async history (queries: Array<{ obj: ResourceRow, params: { first?: number | null, after?: string | null } }>, context: GraphQLContext) {
        caller(context)
        const out = new Array<unknown>(queries.length)
        for (const [, group] of byParams(queries.map((q) => ({ ...q, params: { ...q.params, tenant: q.obj.tenant, scope: q.obj.scope } })))) {
          const { tenant, scope } = group[0]!.query.obj
          const { first, after } = group[0]!.query.params
          const limit = pageSize(first)
          const ids = [...new Set(group.map((g) => g.query.obj.id))]
          const rows = await inventory.historyOf(tenant, scope, ids, afterKey<number>(after, 'number'), limit + 1)
          const pages = connectionsOf(rows, ids, (row) => row.resourceId, limit)
          for (const { query, index } of group) {
            const count: ChangeOwner = { owner: 'resource', tenant, scope, id: query.obj.id }
            out[index] = { ...pages.get(query.obj.id), count }
          }
        }
        return out
      }
    },
    Run: {
      baselineRun: runLoader('baselineRunId'),
      // The changes of a page of runs: one statement per set of arguments.
      async changes (queries: Array<{ obj: { id: number }, params: ChangesArgs }>, context: GraphQLContext) {
        caller(context)
        const out = new Array<unknown>(queries.length)
        for (const [params, group] of byParams(queries)) {
          const limit = pageSize(params.first)
          const filter = changeFilter(params)
          const runIds = [...new Set(group.map((g) => g.query.obj.id))]
          const rows = await inventory.changesOfRuns(runIds, filter, afterKey<number>(params.after, 'number'), limit + 1)
          const pages = connectionsOf(rows, runIds, (row) => row.runId, limit)
          for (const { query, index } of group) {
            const count: ChangeOwner = { owner: 'run', runId: query.obj.id, filter }
            out[index] = { ...pages.get(query.obj.id), count }
          }
        }
        return out
      }
    },
    Change: { run: runLoader('runId') },
    ChangeConnection: {
      // Counts of many connections: one statement per kind of owner and filter.
      async totalCount (queries: Array<{ obj: { count: ChangeOwner } }>, context: GraphQLContext) {
        caller(context)
        const owners = queries.map((q) => q.obj.count)
        const out = new Array<number>(owners.length)
        const runGroups = byParams(owners.flatMap((o, index) => o.owner === 'run' ? [{ params: o.filter, runId: o.runId, index }] : []))
        for (const [filter, group] of runGroups) {
          const counts = await inventory.countChangesOfRuns([...new Set(group.map((g) => g.query.runId))], filter)
          for (const { query } of group) out[query.index] = counts.get(query.runId) ?? 0
        }
        const resourceGroups = byParams(owners.flatMap((o, index) => o.owner === 'resource' ? [{ params: [o.tenant, o.scope] as [string, string], id: o.id, index }] : []))
        for (const [[tenant, scope], group] of resourceGroups) {
          const counts = await inventory.countHistory(tenant, scope, [...new Set(group.map((g) => g.query.id))])
          for (const { query } of group) out[query.index] = counts.get(query.id) ?? 0
        }
        for (const [index, o] of owners.entries()) {
          if (o.owner === 'scope') out[index] = await inventory.countScopeChanges(o.tenant, o.scope, o.filter)
        }
        return out
      }
    },
    Scope: { baselineRun: runLoader('baselineRunId') }
  }
  return { resolvers, loaders }
}
