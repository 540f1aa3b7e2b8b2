/**
 * The Postgres schema, source of the SQL migrations drizzle-kit generates into `migrations/`.
 * Every table carries `tenant`. Resources are soft-deleted (`deleted_at`), so a wrong deletion
 * can be undone and a reappearing resource comes back to life; there is no `last_seen` column
 * on purpose: keeping it would cost the very write this server exists to avoid.
 */
import type { Static } from '@sinclair/typebox'
import type { SkipPartitionSchema } from '../contract.js'
import { sql } from 'drizzle-orm'
import {
  bigint, boolean, check, customType, index, integer, jsonb, pgTable, primaryKey, smallint, text, timestamp, uniqueIndex
} from 'drizzle-orm/pg-core'

const bytea = customType<{ data: Buffer, driverData: Buffer }>({
  dataType: () => 'bytea'
})

/**
 * Text compared byte by byte. Resource ids are opaque (ARNs, URLs, UUIDs): a linguistic
 * collation buys nothing, and only "C" lets a btree serve `LIKE 'prefix%'` (the idPrefix filter).
 */
const bytewiseText = customType<{ data: string, driverData: string }>({
  dataType: () => 'text COLLATE "C"'
})

const tenant = () => text().notNull().default('default')
const runRef = () => bigint({ mode: 'number' })
const at = () => timestamp({ withTimezone: true, mode: 'date' })

/** A partition a completion was told to leave alone, as the contract has it. */
export type SkipPartition = Static<typeof SkipPartitionSchema>

export const roles = ['scanner', 'reader', 'admin'] as const
export type Role = typeof roles[number]

export const runStatuses = ['open', 'completing', 'completed', 'aborted', 'superseded'] as const
export type RunStatus = typeof runStatuses[number]

export const changeKinds = ['created', 'updated', 'deleted', 'revived'] as const
export type ChangeKind = typeof changeKinds[number]

export const scopes = pgTable('scopes', {
  tenant: tenant(),
  scope: text().notNull(),
  shardCount: integer().notNull(),
  /**
   * Shards of the scope's hash cache, fixed when the scope is created. Runs choose their own
   * shard count; the cache does not follow them, so there is one cache per scope to keep right.
   */
  cacheShardCount: integer().notNull(),
  baselineRunId: runRef(),
  /** Σ SCARD of the baseline's seen sets when it completed: a smaller set later means lost state. */
  baselineSeen: bigint({ mode: 'number' }).notNull().default(0),
  /**
   * Bumped by every completion that deletes. Each cache shard records the generation its last
   * invalidation was for; a shard behind this one missed an invalidation (a write Redis lost)
   * and is not trusted.
   */
  cacheGeneration: bigint({ mode: 'number' }).notNull().default(0),
  resourceCount: bigint({ mode: 'number' }).notNull().default(0),
  createdAt: at().notNull().defaultNow(),
  lastCompletedAt: at()
}, (t) => [primaryKey({ columns: [t.tenant, t.scope] })])

export const runs = pgTable('runs', {
  id: bigint({ mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
  tenant: tenant(),
  scope: text().notNull(),
  status: text({ enum: runStatuses }).notNull().default('open'),
  shardCount: integer().notNull(),
  /**
   * Seen sets per shard (a power of two) and the bits of the id digests they hold
   * (reconcile/members.ts), chosen when the run opens. Null for runs opened by versions whose
   * sets held id strings: this version neither feeds nor diffs those.
   */
  seenSets: integer(),
  digestBits: smallint(),
  /** The scope's baseline when this run opened: the run it diffs against and replaces. */
  baselineRunId: runRef(),
  scannerName: text(),
  scannerVersion: text(),
  /** The API key that opened the run (api_keys.id); null for runs opened before keys existed. */
  openedBy: text(),
  startedAt: at().notNull().defaultNow(),
  completedAt: at(),
  seen: bigint({ mode: 'number' }).notNull().default(0),
  created: bigint({ mode: 'number' }).notNull().default(0),
  updated: bigint({ mode: 'number' }).notNull().default(0),
  unchanged: bigint({ mode: 'number' }).notNull().default(0),
  deleted: bigint({ mode: 'number' }).notNull().default(0),
  batches: bigint({ mode: 'number' }).notNull().default(0),
  /**
   * Bumped by every move to `completing`. A completion commits only if the attempt it diffed in
   * is still the current one: one that was refused and reopened meanwhile (batches joined
   * since) cannot commit a diff that does not know them.
   */
  attempt: integer().notNull().default(0),
  /** Partitions the scanner could not enumerate (complete's `skip`): nothing in them was deleted. */
  skip: jsonb().$type<SkipPartition[]>().notNull().default([]),
  /** Resources the run did not see but kept because they lie in a skipped partition. */
  skipped: bigint({ mode: 'number' }).notNull().default(0),
  /**
   * Set by the run's completion: every live row the run wrote is in its seen sets (counted
   * under the run row's lock, which every write holds a share of: none can land after the
   * count). The next completion then need not check the run's own rows against its sets.
   */
  writesSeen: boolean().notNull().default(false)
}, (t) => [
  index('runs_scope_idx').on(t.tenant, t.scope, t.id),
  index('runs_status_idx').on(t.tenant, t.status, t.id),
  // At most one run per scope is in flight; the database, not a race-prone check, says so.
  uniqueIndex('runs_one_open_per_scope').on(t.tenant, t.scope).where(sql`status in ('open', 'completing')`),
  check('runs_status_check', sql`status in ('open', 'completing', 'completed', 'aborted', 'superseded')`)
])

export const resources = pgTable('resources', {
  tenant: tenant(),
  scope: text().notNull(),
  id: bytewiseText().notNull(),
  type: text().notNull(),
  name: text(),
  region: text(),
  tags: jsonb().$type<Record<string, string>>().notNull().default({}),
  attributes: jsonb().$type<Record<string, unknown>>().notNull().default({}),
  contentHash: bytea().notNull(),
  firstSeenAt: at().notNull().defaultNow(),
  firstSeenRunId: runRef().notNull(),
  changedAt: at().notNull().defaultNow(),
  changedRunId: runRef().notNull(),
  deletedAt: at(),
  deletedRunId: runRef(),
  /**
   * XXH64 of the id (reconcile/members.ts), written with the row: what a completion turns the
   * members a Redis diff finds back into rows by. Null only in rows written before it existed;
   * a completion that diffs against Postgres fills those in.
   */
  idDigest: bigint({ mode: 'bigint' })
}, (t) => [
  primaryKey({ columns: [t.tenant, t.scope, t.id] }),
  // Keyset pages of live rows by filter (GraphQL): each filter is an index range in id order.
  index('resources_live_type_idx').on(t.tenant, t.scope, t.type, t.id).where(sql`deleted_at is null`),
  index('resources_live_region_idx').on(t.tenant, t.scope, t.region, t.id).where(sql`deleted_at is null`),
  index('resources_live_changed_at_idx').on(t.tenant, t.scope, t.changedAt).where(sql`deleted_at is null`),
  index('resources_tags_idx').using('gin', sql`tags jsonb_path_ops`).where(sql`deleted_at is null`),
  // Finds rows written since the baseline by runs that never completed (see reconcile/complete).
  index('resources_live_changed_run_idx').on(t.tenant, t.scope, t.changedRunId).where(sql`deleted_at is null`),
  // The rows of the members a completion's diff found (see idDigest). Partial on
  // `id_digest is not null`, which a digest probe implies and nothing else does: a probe that
  // leaves deleted_at out then has only this index and the primary key to choose from, and a
  // primary-key probe never this one. Measured without statistics: partial on live rows, the
  // digest probe took another live-row index on (tenant, scope) and read the whole scope per
  // member (18 s for 1,000 of 100k rows); not partial, the primary-key probes of the first
  // load took this one, the same way (565 resources/s).
  index('resources_digest_idx').on(t.tenant, t.scope, t.idDigest).where(sql`id_digest is not null`),
  // The purge of rows soft-deleted longer ago than DELETED_RETENTION reads the oldest first.
  index('resources_deleted_at_idx').on(t.deletedAt).where(sql`deleted_at is not null`)
])

/**
 * The change log: one row per resource a run created, updated, deleted or revived, written by
 * the statement that writes the resource (resources-repository writeChanged, softDelete), so a
 * change is logged exactly when it commits. Unchanged resources add nothing. Rows carry the run,
 * not the tenant and scope (the run has them): a row is what it must be and no more, as every
 * written resource pays for it. Purged after CHANGES_RETENTION by the sweeper.
 */
export const changes = pgTable('changes', {
  /** Order of writing: keyset pages go newest first by it. */
  id: bigint({ mode: 'number' }).generatedAlwaysAsIdentity(),
  runId: bigint({ mode: 'number' }).notNull(),
  at: at().notNull().defaultNow(),
  kind: text({ enum: changeKinds }).notNull(),
  resourceId: bytewiseText().notNull(),
  type: text().notNull(),
  /**
   * Updates and revivals: the fields that differ from the row before (`type`, `name`,
   * `region`, `tags`, `attributes`), each of the last two followed by its first-level keys that
   * differ (`tags.env`, `attributes.policy`). Null for creations and deletions.
   */
  changedFields: text().array()
}, (t) => [
  // A run's changes (Run.changes, a scope's changes run by run, the purge oldest run first).
  primaryKey({ columns: [t.runId, t.id] }),
  // A resource's history; the run says whose (tenant and scope).
  index('changes_resource_idx').on(t.resourceId, t.id),
  check('changes_kind_check', sql`kind in ('created', 'updated', 'deleted', 'revived')`)
])

/**
 * The witness of acknowledged batches, outside Redis: before a batch is answered 200, its token
 * is in the acks set of every shard it added ids to, and here. A completion finds every token in
 * its shard's set, or the shard lost acknowledged writes (a failover to a replica that had not
 * received them, a restart from a persistence file missing its last second) and nothing is
 * deleted. Rows go with the run's end.
 */
export const runAcks = pgTable('run_acks', {
  runId: bigint({ mode: 'number' }).notNull(),
  token: text().notNull(),
  shards: integer().array().notNull()
}, (t) => [primaryKey({ columns: [t.runId, t.token] })])

/**
 * The batches of a run in flight that wrote rows, by token, written by the statement that writes
 * the rows. When every one of them is acknowledged (run_acks), every row the run wrote is in its
 * sets: its completion records `runs.writes_seen`. Rows go with the run's end.
 */
export const runWrites = pgTable('run_writes', {
  runId: bigint({ mode: 'number' }).notNull(),
  token: text().notNull()
}, (t) => [primaryKey({ columns: [t.runId, t.token] })])

/**
 * API keys. A key is `tally_<id>_<secret>`: the id finds the row, the secret is never stored,
 * only its SHA-256 (the secret is 256 random bits, so a slow hash would add nothing but
 * latency to every request). A revoked key keeps its row, for the record.
 */
export const apiKeys = pgTable('api_keys', {
  id: text().primaryKey(),
  tenant: text().notNull(),
  role: text({ enum: roles }).notNull(),
  /** Scope globs the key is restricted to (`*` matches any characters); empty: every scope of the tenant. */
  scopes: text().array().notNull().default(sql`'{}'::text[]`),
  name: text(),
  secretHash: bytea().notNull(),
  /** Who created it: another key's id, or `cli` / `bootstrap`. */
  createdBy: text().notNull(),
  createdAt: at().notNull().defaultNow(),
  revokedAt: at()
}, (t) => [
  index('api_keys_tenant_idx').on(t.tenant, t.id),
  check('api_keys_role_check', sql`role in ('scanner', 'reader', 'admin')`)
])
