/** Resolvers and loaders: thin shapes over the inventory repository, one query per list or batch. */
import type { IResolvers, MercuriusContext, MercuriusLoaders } from 'mercurius'
import { scopeRefusal, type Access } from '../auth/keys.js'
import { badString } from '../reconcile/canonical.js'
import { RUN_ID_TEXT } from '../routes/schemas.js'

import mercurius from 'mercurius'
import type { InventoryRepository, ResourceFilter, ResourceRow } from '../db/inventory-repository.js'
import type { RunRow, ScopeRow } from '../db/runs-repository.js'
import type { RunStatus } from '../db/schema.js'
import { MAX_PAGE } from './limits.js'

const { ErrorWithProps } = mercurius

declare module 'mercurius' {
  interface MercuriusContext {
    /** The caller's key: a reader or admin key (the route refuses others). */
    access: Access
    /** Aborted when the client hangs up: resolvers then stop before their query. */
    signal: AbortSignal
  }
}

export type GraphQLContext = MercuriusContext

/** The tenant and scope globs queries are limited to; refuses when the client is gone. */
function caller (context: GraphQLContext): { tenant: string, globs: string[] } {
  if (context.signal.aborted) throw new ErrorWithProps('The client closed the request', { code: 'CLIENT_CLOSED' })
  return { tenant: context.access.tenant, globs: context.access.scopes }
}

/** A scope the key may read, or a FORBIDDEN error. */
function readableScope (context: GraphQLContext, scope: string): string {
  text(scope, 'scope')
  const refusal = scopeRefusal(context.access, scope)
  if (refusal !== undefined) throw new ErrorWithProps(refusal, { code: 'FORBIDDEN' })
  return scope
}

/** Text Postgres can store and compare: no U+0000, no lone surrogate. Null and undefined pass. */
function text<T extends string | null | undefined> (value: T, name: string): T {
  if (typeof value === 'string' && badString(value)) {
    throw new ErrorWithProps(`${name} must not contain U+0000 or unpaired surrogates`, { code: 'BAD_USER_INPUT' })
  }
  return value
}

const encodeCursor = (key: string | number) => Buffer.from(JSON.stringify([key])).toString('base64url')

function decodeCursor<T extends string | number> (cursor: string | null | undefined, kind: 'string' | 'number'): T | null {
  if (cursor == null) return null
  try {
    const [key] = JSON.parse(Buffer.from(cursor, 'base64url').toString()) as unknown[]
    if (kind === 'string' && typeof key === 'string' && !badString(key)) return key as T
    if (kind === 'number' && Number.isSafeInteger(key)) return key as T
  } catch {}
  throw new ErrorWithProps('after is not a cursor this server issued', { code: 'BAD_CURSOR' })
}

function pageSize (first: number | null | undefined): number {
  const n = first ?? 50
  if (!Number.isInteger(n) || n < 0 || n > MAX_PAGE) {
    throw new ErrorWithProps(`first must be between 0 and ${MAX_PAGE}`, { code: 'FIRST_TOO_LARGE' })
  }
  return n
}

/** A connection from rows fetched with one extra: its presence says there is a next page. */
function connection<R> (rows: R[], limit: number, key: (row: R) => string | number) {
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

function changedSince (value: string | null | undefined): Date | null {
  if (value == null) return null
  const date = new Date(value)
  if (Number.isNaN(date.getTime())) throw new ErrorWithProps('changedSince must be an ISO 8601 time', { code: 'BAD_USER_INPUT' })
  return date
}

export function createResolvers (inventory: InventoryRepository): { resolvers: IResolvers, loaders: MercuriusLoaders } {
  const runLoader = (field: 'firstSeenRunId' | 'changedRunId' | 'deletedRunId' | 'baselineRunId') =>
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
        const filter: ResourceFilter = { ...args, tenant, changedSince: changedSince(args.changedSince) }
        const rows = await inventory.resourcesPage(filter, decodeCursor<string>(args.after, 'string'), limit + 1)
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
        const rows = await inventory.runsPage(tenant, globs, scope, args.status ?? null, decodeCursor<number>(args.after, 'number'), limit + 1)
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
        const rows = await inventory.scopesPage(tenant, globs, decodeCursor<string>(args.after, 'string'), limit + 1)
        return connection(rows.map(scopeView), limit, (s) => s.scope)
      },
      summary: async (_root, args: { scope: string }, context: GraphQLContext) =>
        inventory.summary(caller(context).tenant, readableScope(context, args.scope))
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
      deletedRun: runLoader('deletedRunId')
    },
    Run: { baselineRun: runLoader('baselineRunId') },
    Scope: { baselineRun: runLoader('baselineRunId') }
  }
  return { resolvers, loaders }
}
