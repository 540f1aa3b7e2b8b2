/** Runs and scopes: opening, listing, conditional status moves and the baseline promotion. */
import { and, desc, eq, inArray, lt, or, sql, type SQL } from 'drizzle-orm'
import { globToLike } from '../auth/keys.js'
import type { Static } from '@sinclair/typebox'
import type { RunStatsSchema } from '../contract.js'
import type { Db, Executor, Tx } from './client.js'
import { runAcks, runs, runWrites, scopes, type RunStatus, type SkipPartition } from './schema.js'

export type RunRow = typeof runs.$inferSelect
export type ScopeRow = typeof scopes.$inferSelect

/** A run's counters, as the contract's run stats have them. */
export type RunCounts = Static<typeof RunStatsSchema>

export type NewRun = Required<Pick<typeof runs.$inferInsert, 'tenant' | 'scope' | 'shardCount' | 'seenSets' | 'digestBits' | 'scannerName' | 'scannerVersion' | 'openedBy'>>

export interface RunFilter {
  tenant: string
  scope?: string | undefined
  status?: RunStatus | undefined
  beforeId?: number | undefined
  /** Only scopes matching one of these globs (see auth/keys.ts); empty or absent: any scope. */
  scopeGlobs?: string[] | undefined
  limit: number
}

/** `scope` matches one of the globs (as SQL), or undefined when there are none. */
export function scopeInGlobs (column: typeof runs.scope | typeof scopes.scope, globs: string[] | undefined): SQL | undefined {
  if (globs === undefined || globs.length === 0) return undefined
  return or(...globs.map((glob) => sql`${column} like ${globToLike(glob)}`))
}

const UNIQUE_VIOLATION = '23505'
// Advisory lock class of the per-tenant open-runs count (the key is hashtext(tenant)).
const OPEN_RUNS_LOCK = 7_261

/** True when a write failed on `runs_one_open_per_scope`: the scope already has a run in flight. */
export function isOpenRunConflict (err: unknown): boolean {
  const e = err as { code?: string, constraint?: string, cause?: { code?: string, constraint?: string } }
  const pgErr = e.cause ?? e
  return pgErr.code === UNIQUE_VIOLATION && pgErr.constraint === 'runs_one_open_per_scope'
}

export function createRunsRepository (db: Db) {
  return {
    async getRun (id: number, tx: Executor = db): Promise<RunRow | undefined> {
      const [row] = await tx.select().from(runs).where(eq(runs.id, id))
      return row
    },

    async findInFlightRun (tenant: string, scope: string, tx: Executor = db): Promise<RunRow | undefined> {
      const [row] = await tx.select().from(runs).where(and(
        eq(runs.tenant, tenant), eq(runs.scope, scope), inArray(runs.status, ['open', 'completing'])
      ))
      return row
    },

    /** Every run in flight (open or completing), across tenants: one per scanning scope at most. */
    async inFlightRuns (): Promise<RunRow[]> {
      return db.select().from(runs).where(inArray(runs.status, ['open', 'completing'])).orderBy(runs.id)
    },

    async listRuns (filter: RunFilter): Promise<RunRow[]> {
      const where: SQL[] = [eq(runs.tenant, filter.tenant)]
      if (filter.scope !== undefined) where.push(eq(runs.scope, filter.scope))
      if (filter.status !== undefined) where.push(eq(runs.status, filter.status))
      if (filter.beforeId !== undefined) where.push(lt(runs.id, filter.beforeId))
      const inGlobs = scopeInGlobs(runs.scope, filter.scopeGlobs)
      if (inGlobs !== undefined) where.push(inGlobs)
      return db.select().from(runs).where(and(...where)).orderBy(desc(runs.id)).limit(filter.limit)
    },

    /**
     * The tenant's runs in flight, counted under a lock per tenant held to the end of `tx`:
     * two opens racing cannot both take the last place.
     */
    async lockAndCountInFlight (tenant: string, tx: Tx): Promise<number> {
      await tx.execute(sql`select pg_advisory_xact_lock(${OPEN_RUNS_LOCK}, hashtext(${tenant}))`)
      const [row] = await tx.select({ n: sql<number>`count(*)::int` }).from(runs)
        .where(and(eq(runs.tenant, tenant), inArray(runs.status, ['open', 'completing'])))
      return row!.n
    },

    /**
     * Inserts the run; fails with a unique violation (see `isOpenRunConflict`) if one is in flight.
     * The baseline is read by a second statement: under READ COMMITTED it sees a completion
     * that committed while the insert waited on the unique index, which the insert's own
     * snapshot would not.
     */
    async insertRun (run: NewRun, tx: Executor = db): Promise<RunRow> {
      const [inserted] = await tx.insert(runs).values(run).returning({ id: runs.id })
      const [row] = await tx.update(runs)
        .set({
          baselineRunId: sql`(select ${scopes.baselineRunId} from ${scopes}
            where ${scopes.tenant} = ${run.tenant} and ${scopes.scope} = ${run.scope})`
        })
        .where(eq(runs.id, inserted!.id))
        .returning()
      return row!
    },

    /** Moves a run from one of `from` to `to`; undefined when it was in none of them (someone else won). */
    async transition (id: number, from: RunStatus[], to: RunStatus, counts?: RunCounts, tx: Executor = db): Promise<RunRow | undefined> {
      const [row] = await tx.update(runs)
        .set({
          status: to,
          ...counts,
          ...(to === 'completing' ? { attempt: sql`${runs.attempt} + 1` } : {}),
          ...(to === 'open' || to === 'completing' ? {} : { completedAt: sql`now()` })
        })
        .where(and(eq(runs.id, id), inArray(runs.status, from)))
        .returning()
      return row
    },

    /**
     * Locks the run's row until the transaction ends. Every write of the run's batches holds a
     * share of that lock (resources writeChanged), so none is under way meanwhile, and none
     * begins before the transaction ends (and then finds the run finished).
     */
    async lockRun (id: number, tx: Tx): Promise<void> {
      await tx.select({ id: runs.id }).from(runs).where(eq(runs.id, id)).for('update')
    },

    /** Gives a run's sets a new count, if they still have `from` (complete.ts relay); whether they did. */
    async relaySets (id: number, from: number, to: number): Promise<boolean> {
      const rows = await db.update(runs).set({ seenSets: to }).where(and(eq(runs.id, id), eq(runs.seenSets, from))).returning({ id: runs.id })
      return rows.length > 0
    },

    /** Finishes a run still completing in `attempt`; undefined when it is not (see runs.attempt). */
    async finishRun (id: number, attempt: number, status: 'completed' | 'superseded', counts: RunCounts, skip: SkipPartition[],
      writesSeen: boolean, tx: Tx): Promise<RunRow | undefined> {
      const [row] = await tx.update(runs)
        // The clock, not the transaction's start: the run row is locked by now, every write of
        // the run has committed, and each change it logged is at or before this time.
        .set({ status, completedAt: sql`clock_timestamp()`, ...counts, skip, writesSeen })
        .where(and(eq(runs.id, id), eq(runs.status, 'completing'), eq(runs.attempt, attempt)))
        .returning()
      return row
    },

    async getScope (tenant: string, scope: string, tx: Executor = db): Promise<ScopeRow | undefined> {
      const [row] = await tx.select().from(scopes).where(and(eq(scopes.tenant, tenant), eq(scopes.scope, scope)))
      return row
    },

    /** The scope's row, created on first use with the given shard count (which its hash cache keeps for good). */
    async ensureScope (tenant: string, scope: string, shardCount: number, tx: Executor = db): Promise<ScopeRow> {
      await tx.insert(scopes).values({ tenant, scope, shardCount, cacheShardCount: shardCount }).onConflictDoNothing()
      const [row] = await tx.select().from(scopes).where(and(eq(scopes.tenant, tenant), eq(scopes.scope, scope)))
      return row!
    },

    /**
     * Makes the run the scope's baseline. A completion that deleted bumps the scope's cache
     * generation, and gets the new one back (undefined when nothing was deleted).
     */
    async promoteBaseline (tenant: string, scope: string, run: { id: number, shardCount: number, seen: number, deleted: number },
      tx: Tx): Promise<number | undefined> {
      const [row] = await tx.update(scopes).set({
        baselineRunId: run.id,
        baselineSeen: run.seen,
        shardCount: run.shardCount,
        resourceCount: run.seen,
        lastCompletedAt: sql`now()`,
        ...(run.deleted > 0 ? { cacheGeneration: sql`${scopes.cacheGeneration} + 1` } : {})
      }).where(and(eq(scopes.tenant, tenant), eq(scopes.scope, scope))).returning({ cacheGeneration: scopes.cacheGeneration })
      return run.deleted > 0 ? row!.cacheGeneration : undefined
    },

    /** Witnesses an acknowledged batch: its token, and the shards whose acks sets hold it. */
    async recordAck (runId: number, token: string, shards: number[]): Promise<void> {
      await db.insert(runAcks).values({ runId, token, shards })
    },

    async acks (runId: number): Promise<Array<{ token: string, shards: number[] }>> {
      return db.select({ token: runAcks.token, shards: runAcks.shards }).from(runAcks).where(eq(runAcks.runId, runId))
    },

    /**
     * Did a batch of the run write rows and never get acknowledged (a batch that failed after its
     * write, or whose holder died)? If not, every row the run wrote is in its sets. Asked under
     * the run's row lock, no write is under way (resources writeChanged). The acks are read only
     * for a run whose batches wrote: a rescan that changed nothing never reads them.
     */
    async anyUnacknowledgedWrite (runId: number, tx: Executor = db): Promise<boolean> {
      const written = await tx.select({ token: runWrites.token }).from(runWrites).where(eq(runWrites.runId, runId))
      if (written.length === 0) return false
      const acked = await tx.select({ token: runAcks.token }).from(runAcks)
        .where(and(eq(runAcks.runId, runId), inArray(runAcks.token, written.map((w) => w.token))))
      return acked.length < written.length
    },

    /** A run's witnesses, acks and writes, when it ends. */
    async dropWitnesses (runId: number, tx: Executor = db): Promise<void> {
      await tx.delete(runAcks).where(eq(runAcks.runId, runId))
      await tx.delete(runWrites).where(eq(runWrites.runId, runId))
    }
  }
}

export type RunsRepository = ReturnType<typeof createRunsRepository>
