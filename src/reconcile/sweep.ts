/**
 * The sweeper, run periodically by every instance (each step is safe to run twice at once):
 *
 * - a run in flight that took no batch for RUN_TTL seconds is abandoned: it is aborted (open)
 *   or given up (a completion that crashed and was never called again), deleting nothing, and
 *   its keys are dropped;
 * - a run in flight that is still active gets its keys' TTLs renewed: markers of shards that
 *   no batch touched lately must not expire under a long run;
 * - rows soft-deleted longer ago than DELETED_RETENTION, and changes logged longer ago than
 *   CHANGES_RETENTION, are purged in bounded batches.
 */
import type { RunRow } from '../db/runs-repository.js'
import { dropRunKeys, runStateKeys, seenKeys } from './run-keys.js'
import { endAborted } from './runs.js'
import type { ReconcileDeps } from './types.js'

const PURGE_BATCH = 1000
// Bounds one sweep's purge; a larger backlog is worked off over the next sweeps.
const PURGE_MAX_BATCHES = 100

export interface SweepResult {
  abandoned: number[]
  renewed: number
  purged: number
  purgedChanges: number
}

/** When the run last showed life: its last batch or completion call (counters' `touched`), else its start. */
async function lastActive (deps: ReconcileDeps, run: RunRow): Promise<number> {
  const touched = Number(await deps.redis.hget(deps.keys.counters(run.id), 'touched'))
  return Math.max(run.startedAt.getTime(), Number.isFinite(touched) ? touched : 0)
}

async function renew (deps: ReconcileDeps, run: RunRow): Promise<void> {
  const ttl = deps.settings.RUN_TTL
  await Promise.all([...seenKeys(deps, run), ...runStateKeys(deps, run)]
    .map((key) => deps.redis.expire(key, ttl, 'XX')))
}

async function abandon (deps: ReconcileDeps, run: RunRow): Promise<boolean> {
  // Conditional: whoever moves it first (another instance's sweep, a completion, an abort) wins.
  const aborted = await endAborted(deps, run.id, [run.status])
  if (aborted === undefined) return false
  await dropRunKeys(deps, aborted)
  deps.log.warn({ runId: run.id, scope: run.scope, was: run.status }, 'abandoned run aborted by the sweeper')
  return true
}

export async function sweep (deps: ReconcileDeps, now = Date.now()): Promise<SweepResult> {
  const result: SweepResult = { abandoned: [], renewed: 0, purged: 0, purgedChanges: 0 }
  const ttlMs = deps.settings.RUN_TTL * 1000
  for (const run of await deps.runs.inFlightRuns()) {
    if (now - await lastActive(deps, run) > ttlMs) {
      if (await abandon(deps, run)) result.abandoned.push(run.id)
    } else if (run.status === 'open') {
      await renew(deps, run)
      result.renewed++
    }
  }
  result.purged = await purge(deps.settings.DELETED_RETENTION, deps.resources.purgeDeleted)
  result.purgedChanges = await purge(deps.settings.CHANGES_RETENTION, deps.resources.purgeChanges)
  return result
}

/** Up to PURGE_MAX_BATCHES batches of what is older than `retention` seconds (0: kept for good). */
async function purge (retention: number, batch: (retention: number, limit: number) => Promise<number>): Promise<number> {
  let purged = 0
  if (retention === 0) return purged
  for (let i = 0; i < PURGE_MAX_BATCHES; i++) {
    const n = await batch(retention, PURGE_BATCH)
    purged += n
    if (n < PURGE_BATCH) break
  }
  return purged
}
