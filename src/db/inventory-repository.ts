/**
 * Read-only queries behind the GraphQL API. Every list is a keyset page (`id > $after order by
 * id limit n`), never OFFSET, so walking the pages returns each row once even while a run
 * ingests, and a deep page costs what the first one does.
 */
import { and, asc, desc, eq, gt, inArray, isNull, like, lt, sql, type SQL } from 'drizzle-orm'
import type { Db } from './client.js'
import { resources, runs, scopes, type RunStatus } from './schema.js'
import { scopeInGlobs, type RunRow, type ScopeRow } from './runs-repository.js'

export type ResourceRow = typeof resources.$inferSelect

export interface ResourceFilter {
  tenant: string
  scope: string
  type?: string | null | undefined
  region?: string | null | undefined
  tag?: { key: string, value: string } | null | undefined
  idPrefix?: string | null | undefined
  changedSince?: Date | null | undefined
  includeDeleted?: boolean | null | undefined
}

/** `LIKE` pattern for a literal prefix. */
const prefixPattern = (prefix: string) => `${prefix.replace(/[\\%_]/g, (c) => `\\${c}`)}%`

function resourceWhere (f: ResourceFilter): SQL {
  return and(
    eq(resources.tenant, f.tenant), eq(resources.scope, f.scope),
    f.includeDeleted ? undefined : isNull(resources.deletedAt),
    f.type == null ? undefined : eq(resources.type, f.type),
    f.region == null ? undefined : eq(resources.region, f.region),
    f.tag == null ? undefined : sql`${resources.tags} @> ${JSON.stringify({ [f.tag.key]: f.tag.value })}::jsonb`,
    f.idPrefix == null ? undefined : like(resources.id, prefixPattern(f.idPrefix)),
    f.changedSince == null ? undefined : gt(resources.changedAt, f.changedSince)
  )!
}

export function createInventoryRepository (db: Db) {
  return {
    /** Up to `limit` resources after `afterId`, in id order. */
    async resourcesPage (filter: ResourceFilter, afterId: string | null, limit: number): Promise<ResourceRow[]> {
      return db.select().from(resources)
        .where(and(resourceWhere(filter), afterId === null ? undefined : gt(resources.id, afterId)))
        .orderBy(asc(resources.id))
        .limit(limit)
    },

    async countResources (filter: ResourceFilter): Promise<number> {
      const [row] = await db.select({ n: sql<number>`count(*)::int` }).from(resources).where(resourceWhere(filter))
      return row?.n ?? 0
    },

    async resource (tenant: string, scope: string, id: string): Promise<ResourceRow | undefined> {
      const [row] = await db.select().from(resources)
        .where(and(eq(resources.tenant, tenant), eq(resources.scope, scope), eq(resources.id, id)))
      return row
    },

    /** Runs newest first, before `beforeId`, in scopes matching `globs` (none: any). */
    async runsPage (tenant: string, globs: string[], scope: string | null, status: RunStatus | null, beforeId: number | null, limit: number): Promise<RunRow[]> {
      return db.select().from(runs)
        .where(and(
          eq(runs.tenant, tenant),
          scopeInGlobs(runs.scope, globs),
          scope === null ? undefined : eq(runs.scope, scope),
          status === null ? undefined : eq(runs.status, status),
          beforeId === null ? undefined : lt(runs.id, beforeId)
        ))
        .orderBy(desc(runs.id))
        .limit(limit)
    },

    /** The tenant's runs of these ids in scopes matching `globs` (none: any); others are left out. */
    async runsByIds (tenant: string, globs: string[], ids: number[]): Promise<RunRow[]> {
      if (ids.length === 0) return []
      return db.select().from(runs).where(and(eq(runs.tenant, tenant), scopeInGlobs(runs.scope, globs), inArray(runs.id, ids)))
    },

    async scopesPage (tenant: string, globs: string[], afterScope: string | null, limit: number): Promise<ScopeRow[]> {
      return db.select().from(scopes)
        .where(and(eq(scopes.tenant, tenant), scopeInGlobs(scopes.scope, globs), afterScope === null ? undefined : gt(scopes.scope, afterScope)))
        .orderBy(asc(scopes.scope))
        .limit(limit)
    },

    async summary (tenant: string, scope: string) {
      const live = and(eq(resources.tenant, tenant), eq(resources.scope, scope), isNull(resources.deletedAt))
      const [byType, byRegion] = await Promise.all([
        db.select({ type: resources.type, count: sql<number>`count(*)::int` }).from(resources)
          .where(live).groupBy(resources.type).orderBy(desc(sql`count(*)`), asc(resources.type)),
        db.select({ region: resources.region, count: sql<number>`count(*)::int` }).from(resources)
          .where(live).groupBy(resources.region).orderBy(desc(sql`count(*)`), asc(resources.region))
      ])
      return { total: byType.reduce((n, t) => n + t.count, 0), byType, byRegion }
    }
  }
}

export type InventoryRepository = ReturnType<typeof createInventoryRepository>
