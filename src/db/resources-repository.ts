/**
 * Resource rows. Every function takes a whole batch: one statement however many resources,
 * because a query per resource is what this server exists to avoid.
 */
import { and, asc, eq, gt, gte, isNull, lt, sql, type SQL } from 'drizzle-orm'
import type { Db, Executor } from './client.js'
import { resources } from './schema.js'

export interface ResourceWrite {
  id: string
  /** The canonical JSON of `{attributes, name, region, tags, type}` (absent ones `{}` or null), as hashed. */
  content: string
  /** Its content hash, 16 hex digits. */
  hash: string
  /** XXH64 of the id as a signed 64-bit decimal (reconcile/members.ts idDigest). */
  digest: string
}

/** A live row as Postgres holds it: its content hash, and the runs that created it and last wrote it. */
export interface StoredVersion {
  contentHash: Buffer
  changedRunId: number
  firstSeenRunId: number
}

export interface WriteResult {
  /** False when the run was no longer open or completing: nothing was written. */
  runOpen: boolean
  inserted: Set<string>
  updated: Set<string>
  /** Among the updated, the rows that were soft-deleted: revived, which counts as created. */
  revived: Set<string>
}

/**
 * One primary-key lookup of row `u.id`, for `cross join lateral`; the caller filters on
 * `deleted_at`. A plain `id = any($ids)` is planned from statistics, and before the first
 * ANALYZE of a freshly loaded scope (or with autovacuum off) the planner takes
 * `tenant = … and scope = …` for selective and reads the whole scope once per batch: 1.6 s
 * instead of 29 ms for 1000 ids in a 1M-row scope. Here `limit 1` keeps the probe from being
 * flattened into a join, and leaving `deleted_at` out keeps the partial indexes from matching:
 * the primary key is the only index left, one descent per id (38 s → 13 ms for 1000 ids of
 * 300k rows without statistics).
 */
function primaryKeyProbe (tenant: string, scope: string, columns: SQL) {
  return sql`select ${columns}, deleted_at from resources
    where tenant = ${tenant} and scope = ${scope} and id = u.id limit 1`
}

/** `'<field>' || <its first-level keys whose values differ, as <field>.<key>, in key order>`, when the field differs. */
const changedKeys = (field: 'tags' | 'attributes') => `case when x.old_${field} is distinct from r.${field} then '${field}'::text
    || array(select '${field}.' || k from jsonb_object_keys(x.old_${field} || r.${field}) as k
             where x.old_${field} -> k is distinct from r.${field} -> k order by k) else '{}' end`

/**
 * For the change log, in writeChanged's RETURNING (`x.old_*` the row before, `r` after): the
 * top-level fields that differ, `tags` and `attributes` each followed by their first-level keys
 * that differ. Written out in the statement: as a SQL function (not inlinable, for its
 * subqueries) it cost 8.5 µs a row, inline 3.3 µs (9,000 rows in psql).
 */
const changedFields = sql.raw(`array_remove(array[
    case when x.old_type is distinct from r.type then 'type' end,
    case when x.old_name is distinct from r.name then 'name' end,
    case when x.old_region is distinct from r.region then 'region' end], null)
  || ${changedKeys('tags')} || ${changedKeys('attributes')}`)

/**
 * A batch's rows as relation `u`: ids, hashes and digests as arrays, the contents as one JSON
 * array built from the canonical JSON the check already wrote (no second serialisation, and no
 * jsonb[] literal, which pg would escape element by element). `jsonb_array_elements` parses each
 * content once; `jsonb_to_recordset`, which this replaced, turned each back into text and parsed
 * it again (numbers in BENCHMARKS.md, "What bounds the first scan").
 */
function batchRows (rows: ResourceWrite[]): SQL {
  const ids = rows.map((r) => r.id)
  const hashes = rows.map((r) => r.hash)
  const digests = rows.map((r) => r.digest)
  const contents = `[${rows.map((r) => r.content).join(',')}]`
  return sql`select u.id, u.c->>'type' as type, u.c->>'name' as name, u.c->>'region' as region, u.c->'tags' as tags,
                    u.c->'attributes' as attributes, decode(u.h, 'hex') as content_hash, u.d as id_digest
    from rows from (unnest(${sql.param(ids)}::text[], ${sql.param(hashes)}::text[], ${sql.param(digests)}::bigint[]),
                    jsonb_array_elements(${contents}::jsonb)) as u(id, h, d, c)`
}

export function createResourcesRepository (db: Db) {
  return {
    /**
     * What Postgres holds for the live rows among `ids`: content hash, and which runs created
     * and last wrote the row. A soft-deleted row counts as absent.
     */
    async liveVersions (tenant: string, scope: string, ids: string[]): Promise<Map<string, StoredVersion>> {
      if (ids.length === 0) return new Map()
      const result = await db.execute<{ id: string, content_hash: Buffer, changed_run_id: string, first_seen_run_id: string }>(sql`
        select u.id, r.content_hash, r.changed_run_id, r.first_seen_run_id
        from unnest(${sql.param(ids)}::text[]) as u(id)
        cross join lateral (${primaryKeyProbe(tenant, scope, sql`content_hash, changed_run_id, first_seen_run_id`)}) r
        where r.deleted_at is null`)
      return new Map(result.rows.map((r) => [r.id, {
        contentHash: r.content_hash, changedRunId: Number(r.changed_run_id), firstSeenRunId: Number(r.first_seen_run_id)
      }]))
    },

    /**
     * Writes what is new or changed, in one statement, and nothing else: no row whose content
     * is equal is locked or rewritten (an `INSERT … ON CONFLICT DO UPDATE … WHERE` would lock
     * it even when its WHERE says no). New rows are inserted (`ON CONFLICT DO NOTHING` takes no
     * lock); existing ones are updated only if their hash differs or they were soft-deleted
     * (revived), and never by an older run than the one that last wrote them. Existing rows are
     * found by primary-key probes and updated by ctid, so the plan never depends on statistics
     * (a plain join reads the whole scope). Writes nothing unless the run is still open or
     * completing: a batch of an aborted or finished run cannot change the inventory. The fence
     * holds a share of the run row's lock until the statement commits: a completion or abort
     * that locks the row (runs lockRun) to end the run waits for writes under way, and the ones
     * after it find the run finished. So once a run has left flight, none of its writes is still
     * to land (the cache's claims rely on it: reconcile/scripts.ts readShard).
     * A statement that wrote a row records the batch's `token` in run_writes, in the same commit,
     * and logs each row it wrote in `changes` (created, updated or revived).
     *
     * A row another writer changed meanwhile may be skipped: the caller reads back every id
     * that was neither inserted nor updated.
     */
    async writeChanged (tenant: string, scope: string, runId: number, token: string, rows: ResourceWrite[]): Promise<WriteResult> {
      if (rows.length === 0) return { runOpen: true, inserted: new Set(), updated: new Set(), revived: new Set() }
      const result = await db.execute<{ run_open: boolean, inserted: string[], updated: string[], revived: string[] }>(sql`
        with fence as (select 1 from runs where id = ${runId} and status in ('open', 'completing') for key share),
        u as (${batchRows(rows)}),
        ins as (
          insert into resources (tenant, scope, id, type, name, region, tags, attributes,
                                 content_hash, id_digest, first_seen_run_id, changed_run_id)
          select ${tenant}, ${scope}, u.id, u.type, u.name, u.region, u.tags, u.attributes,
                 u.content_hash, u.id_digest, ${runId}, ${runId}
          from u where exists (select 1 from fence)
          on conflict (tenant, scope, id) do nothing
          returning id, type),
        upd as (
          update resources as r set
            type = x.type, name = x.name, region = x.region, tags = x.tags, attributes = x.attributes,
            content_hash = x.content_hash, id_digest = x.id_digest, changed_at = now(), changed_run_id = ${runId},
            deleted_at = null, deleted_run_id = null
          from (select u.*, p.ctid as tid, p.deleted_at as was_deleted_at, p.type as old_type, p.name as old_name,
                       p.region as old_region, p.tags as old_tags, p.attributes as old_attributes from u
                cross join lateral (${primaryKeyProbe(tenant, scope, sql`ctid, type, name, region, tags, attributes`)}) p) x
          where exists (select 1 from fence)
            and r.ctid = x.tid
            and (r.content_hash is distinct from x.content_hash or r.deleted_at is not null)
            and r.changed_run_id <= ${runId}
          returning r.id, r.type, x.was_deleted_at is not null as revived,
                    ${changedFields} as changed_fields),
        -- The change log, in the same commit. The old values are the ones the update ran
        -- against: a row changed by another writer since the probe read it fails the ctid
        -- recheck and is not updated (see above), so it logs nothing either.
        logged as (
          insert into changes (run_id, kind, resource_id, type, changed_fields)
          select ${runId}::bigint, 'created', id, type, null from ins
          union all
          select ${runId}::bigint, case when revived then 'revived' else 'updated' end, id, type, changed_fields from upd),
        wrote as (
          insert into run_writes (run_id, token)
          select ${runId}, ${token} where exists (select 1 from ins) or exists (select 1 from upd)
          on conflict do nothing)
        select exists (select 1 from fence) as run_open,
               array(select id from ins) as inserted,
               array(select id from upd) as updated,
               array(select id from upd where revived) as revived`)
      const row = result.rows[0]!
      return { runOpen: row.run_open, inserted: new Set(row.inserted), updated: new Set(row.updated), revived: new Set(row.revived) }
    },

    /** Whether the scope holds any live row: a first load has nothing to compare against. */
    async anyLive (tenant: string, scope: string): Promise<boolean> {
      const result = await db.execute<{ any: boolean }>(sql`
        select exists (select 1 from resources where tenant = ${tenant} and scope = ${scope} and deleted_at is null) as any`)
      return result.rows[0]!.any
    },

    /** Type and region of the live rows among `ids`: what partition each lies in. */
    async livePartitions (tenant: string, scope: string, ids: string[]): Promise<Array<{ id: string, type: string, region: string | null }>> {
      if (ids.length === 0) return []
      const result = await db.execute<{ id: string, type: string, region: string | null }>(sql`
        select u.id, r.type, r.region
        from unnest(${sql.param(ids)}::text[]) as u(id)
        cross join lateral (${primaryKeyProbe(tenant, scope, sql`type, region`)}) r
        where r.deleted_at is null`)
      return result.rows
    },

    /**
     * Removes up to `limit` rows soft-deleted more than `retentionSeconds` ago, oldest first,
     * across every scope; returns how many. Bounded, so a large backlog never holds locks long;
     * rows another instance's purge holds are skipped, not waited for.
     */
    async purgeDeleted (retentionSeconds: number, limit: number): Promise<number> {
      const result = await db.execute(sql`
        delete from resources where ctid = any(array(
          select ctid from resources
          where deleted_at is not null and deleted_at < now() - make_interval(secs => ${retentionSeconds})
          order by deleted_at limit ${limit}
          for update skip locked))`)
      return result.rowCount ?? 0
    },

    /**
     * Removes up to `limit` changes logged more than `retentionSeconds` ago; returns how many.
     * Oldest runs first: the runs started before the horizon, from the oldest that still has
     * changes, each one range of the primary key. Bounded like purgeDeleted, and like it skips
     * rows another instance's purge holds.
     */
    async purgeChanges (retentionSeconds: number, limit: number): Promise<number> {
      const result = await db.execute(sql`
        with horizon as (select now() - make_interval(secs => ${retentionSeconds}) as t)
        delete from changes where ctid = any(array(
          select c.ctid from runs r
          cross join lateral (
            select ctid from changes where run_id = r.id and at < (select t from horizon)
            limit ${limit} for update skip locked) c
          where r.id >= (select min(run_id) from changes) and r.started_at < (select t from horizon)
          order by r.id limit ${limit}))`)
      return result.rowCount ?? 0
    },

    /** Soft-deletes the live rows among `ids`, logging each as a change; returns how many it deleted. */
    async softDelete (tenant: string, scope: string, ids: string[], runId: number, tx: Executor = db): Promise<number> {
      if (ids.length === 0) return 0
      // Rows are found by primary-key probes and updated by ctid (a TID scan), see primaryKeyProbe.
      // Each deletion is logged as a change by the same statement; its row count is theirs.
      const result = await tx.execute(sql`
        with deleted as (
          update resources set deleted_at = now(), deleted_run_id = ${runId}
          where ctid = any(array(
            select r.ctid from unnest(${sql.param(ids)}::text[]) as u(id)
            cross join lateral (${primaryKeyProbe(tenant, scope, sql`ctid`)}) r
            where r.deleted_at is null))
            and deleted_at is null
          returning id, type)
        insert into changes (run_id, kind, resource_id, type)
        select ${runId}::bigint, 'deleted', id, type from deleted`)
      return result.rowCount ?? 0
    },

    /**
     * One keyset page of the scope's live ids, in id order, after `afterId`; `bare` for a row
     * written before ids had digests (see fillDigests).
     */
    async liveIdsPage (tenant: string, scope: string, afterId: string | null, limit: number): Promise<Array<{ id: string, bare: boolean }>> {
      return db.select({ id: resources.id, bare: sql<boolean>`${resources.idDigest} is null` }).from(resources)
        .where(and(
          eq(resources.tenant, tenant), eq(resources.scope, scope), isNull(resources.deletedAt),
          afterId === null ? undefined : gt(resources.id, afterId)
        ))
        .orderBy(resources.id)
        .limit(limit)
    },

    /** Writes the id digest of rows that have none (written by a version before digests). */
    async fillDigests (tenant: string, scope: string, rows: Array<{ id: string, digest: string }>): Promise<void> {
      if (rows.length === 0) return
      await db.execute(sql`
        update resources as r set id_digest = x.digest
        from (select u.digest, p.ctid as tid
              from unnest(${sql.param(rows.map((r) => r.id))}::text[], ${sql.param(rows.map((r) => r.digest))}::bigint[]) as u(id, digest)
              cross join lateral (${primaryKeyProbe(tenant, scope, sql`ctid`)}) p) x
        where r.ctid = x.tid and r.id_digest is null`)
    },

    /**
     * Live ids whose digest lies in one of the ranges (inclusive, signed): the rows of the
     * members a diff found. One index range of `resources_digest_idx` per member, for the same
     * reasons as primaryKeyProbe: `offset 0` keeps the probe from being flattened into a join,
     * and leaving `deleted_at` out of it keeps the partial indexes out of the planner's choice.
     */
    async liveIdsOfDigests (tenant: string, scope: string, ranges: Array<[string, string]>): Promise<string[]> {
      if (ranges.length === 0) return []
      const result = await db.execute<{ id: string }>(sql`
        select r.id
        from unnest(${sql.param(ranges.map((r) => r[0]))}::bigint[], ${sql.param(ranges.map((r) => r[1]))}::bigint[]) as d(lo, hi)
        cross join lateral (
          select id, deleted_at from resources
          where tenant = ${tenant} and scope = ${scope} and id_digest between d.lo and d.hi offset 0) r
        where r.deleted_at is null`)
      return result.rows.map((r) => r.id)
    },

    /**
     * Live ids last written by run `fromRunId` or a later one before `beforeRunId`: what the
     * baseline itself (unless its completion proved them all in its sets) and the runs that
     * never completed since created or changed. A completion checks each against its own sets:
     * whatever left such an id out of every set (an aborted run, a batch that failed after its
     * write, a lost SADD), it is found stale. One range of `resources_live_changed_run_idx`, in
     * its order, which keeps the plan on that index without statistics; the rows the current
     * run rewrote are never read. Not paged: keyset pages on (changed_run_id, id), which that
     * index does not order, re-read the whole range for each page (quadratic: 184 s for 1M
     * rows); the ids are all held by the caller anyway.
     */
    async liveIdsWrittenBetween (tenant: string, scope: string, fromRunId: number, beforeRunId: number): Promise<string[]> {
      const rows = await db.select({ id: resources.id }).from(resources)
        .where(and(
          eq(resources.tenant, tenant), eq(resources.scope, scope), isNull(resources.deletedAt),
          gte(resources.changedRunId, fromRunId), lt(resources.changedRunId, beforeRunId)
        ))
        .orderBy(asc(resources.changedRunId))
      return rows.map((r) => r.id)
    }
  }
}

export type ResourcesRepository = ReturnType<typeof createResourcesRepository>
