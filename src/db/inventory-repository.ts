/**
 * Read-only queries behind the GraphQL API. Every list is a keyset page (`id > $after order by
 * id limit n`), never OFFSET, so walking the pages returns each row once even while a run
 * ingests, and a deep page costs what the first one does.
 */
import { and, asc, desc, eq, gt, inArray, isNull, like, lt, sql, type SQL } from 'drizzle-orm'
import type { Db } from './client.js'
import { resources, runs, scopes, type ChangeKind, type RunStatus } from './schema.js'
import { scopeInGlobs, type RunRow, type ScopeRow } from './runs-repository.js'

export type ResourceRow = typeof resources.$inferSelect

export interface ChangeRow {
  id: number
  runId: number
  at: Date
  kind: ChangeKind
  resourceId: string
  type: string
  changedFields: string[] | null
}

/** What a list of changes is narrowed to, besides its owner (a run, a resource, a scope). */
export interface ChangeFilter {
  kind?: ChangeKind | null | undefined
  type?: string | null | undefined
  /** Only changes at or after it. */
  since?: Date | null | undefined
}

type RawChange = { id: string, run_id: string, at: string, kind: ChangeKind, resource_id: string, type: string, changed_fields: string[] | null }

const changeRow = (r: RawChange): ChangeRow => ({
  id: Number(r.id), runId: Number(r.run_id), at: new Date(r.at), kind: r.kind, resourceId: r.resource_id, type: r.type, changedFields: r.changed_fields
})

/** A change's columns; the time in ISO 8601 (the driver hands timestamps over as Postgres's text). */
const CHANGE_COLUMNS = sql.raw('c.id, c.run_id, to_json(c.at) #>> \'{}\' as at, c.kind, c.resource_id, c.type, c.changed_fields')

/** The filter's conditions on `c` (changes), each prefixed by `and`; `beforeId` for a keyset page. */
function changeConditions (f: ChangeFilter, beforeId: number | null = null): SQL {
  return sql.join([
    sql``,
    f.kind == null ? undefined : sql`and c.kind = ${f.kind}`,
    f.type == null ? undefined : sql`and c.type = ${f.type}`,
    f.since == null ? undefined : sql`and c.at >= ${f.since.toISOString()}::timestamptz`,
    beforeId === null ? undefined : sql`and c.id < ${beforeId}`
  ].filter((part): part is SQL => part !== undefined), sql` `)
}

/**
 * The runs of a scope whose changes can match `since`, newest first: from the oldest run the
 * change log still holds, leaving out those that finished before `since` (a finished run's
 * changes are all at or before its completed_at, set by the clock once its writes are fenced
 * off; an aborted run is always read, being rare); up to `beforeRun`, inclusive.
 */
function scopeRuns (tenant: string, scope: string, since: Date | null | undefined, beforeRun: number | null): SQL {
  return sql`select id from runs
    where tenant = ${tenant} and scope = ${scope} and id >= (select coalesce(min(run_id), 0) from changes)
    ${since == null ? sql`` : sql`and (status not in ('completed', 'superseded') or completed_at >= ${since.toISOString()}::timestamptz)`}
    ${beforeRun === null ? sql`` : sql`and id <= ${beforeRun}`}
    order by id desc`
}

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

    /**
     * Up to `limit` changes of each run, newest first, before `beforeId`: one primary-key range
     * per run. The runs were authorised by whoever resolved them.
     */
    async changesOfRuns (runIds: number[], filter: ChangeFilter, beforeId: number | null, limit: number): Promise<ChangeRow[]> {
      if (runIds.length === 0) return []
      const result = await db.execute<RawChange>(sql`
        select ${CHANGE_COLUMNS} from unnest(${sql.param(runIds)}::bigint[]) as o(run_id)
        cross join lateral (
          select c.* from changes c where c.run_id = o.run_id ${changeConditions(filter, beforeId)}
          order by c.id desc limit ${limit}) c`)
      return result.rows.map(changeRow)
    },

    async countChangesOfRuns (runIds: number[], filter: ChangeFilter): Promise<Map<number, number>> {
      if (runIds.length === 0) return new Map()
      const result = await db.execute<{ run_id: string, n: number }>(sql`
        select o.run_id, (select count(*)::int from changes c where c.run_id = o.run_id ${changeConditions(filter)}) as n
        from unnest(${sql.param(runIds)}::bigint[]) as o(run_id)`)
      return new Map(result.rows.map((r) => [Number(r.run_id), r.n]))
    },

    /**
     * Up to `limit` changes of each resource of the scope, newest first, before `beforeId`: one
     * range of changes_resource_idx per id, each change's run checked for the tenant and scope.
     */
    async historyOf (tenant: string, scope: string, ids: string[], beforeId: number | null, limit: number): Promise<ChangeRow[]> {
      if (ids.length === 0) return []
      const result = await db.execute<RawChange>(sql`
        select ${CHANGE_COLUMNS} from unnest(${sql.param(ids)}::text[]) as o(id)
        cross join lateral (
          select c.* from changes c join runs r on r.id = c.run_id
          where c.resource_id = o.id and r.tenant = ${tenant} and r.scope = ${scope} ${changeConditions({}, beforeId)}
          order by c.id desc limit ${limit}) c`)
      return result.rows.map(changeRow)
    },

    async countHistory (tenant: string, scope: string, ids: string[]): Promise<Map<string, number>> {
      if (ids.length === 0) return new Map()
      const result = await db.execute<{ id: string, n: number }>(sql`
        select o.id, (select count(*)::int from changes c join runs r on r.id = c.run_id
                      where c.resource_id = o.id and r.tenant = ${tenant} and r.scope = ${scope}) as n
        from unnest(${sql.param(ids)}::text[]) as o(id)`)
      return new Map(result.rows.map((r) => [r.id, r.n]))
    },

    /**
     * Up to `limit` changes of a scope, by run newest first and newest first within a run,
     * after `before` (a run id and change id): runs walked newest first, each one primary-key
     * range, until `limit` rows are found (a scope's runs are sequential, so this is also the
     * order of writing).
     */
    async scopeChanges (tenant: string, scope: string, filter: ChangeFilter, before: [number, number] | null, limit: number): Promise<ChangeRow[]> {
      const after = before === null ? sql`` : sql`and (c.run_id < ${before[0]} or c.id < ${before[1]})`
      const result = await db.execute<RawChange>(sql`
        select ${CHANGE_COLUMNS} from (${scopeRuns(tenant, scope, filter.since, before?.[0] ?? null)}) r
        cross join lateral (
          select c.* from changes c where c.run_id = r.id ${changeConditions(filter)} ${after}
          order by c.id desc limit ${limit}) c
        order by r.id desc, c.id desc limit ${limit}`)
      return result.rows.map(changeRow)
    },

    async countScopeChanges (tenant: string, scope: string, filter: ChangeFilter): Promise<number> {
      const result = await db.execute<{ n: number }>(sql`
        select count(*)::int as n from (${scopeRuns(tenant, scope, filter.since, null)}) r
        join changes c on c.run_id = r.id ${changeConditions(filter)}`)
      return result.rows[0]?.n ?? 0
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
