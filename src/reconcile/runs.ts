/** Opening, reading, listing and aborting runs. */
import type { RunCounts, RunRow } from '../db/runs-repository.js'
import { isOpenRunConflict } from '../db/runs-repository.js'
import type { RunStatus } from '../db/schema.js'
import { allowsScope, type Access } from '../auth/keys.js'
import { TallyError } from '../errors.js'
import { drain, dropRunKeys, layoutOf, liveCounts, runStateKeys, writeMarkers } from './run-keys.js'
import { setsFor, type SetLayout } from './members.js'
import type { ReconcileDeps, RunState } from './types.js'

export interface OpenRunInput {
  tenant: string
  scope: string
  shardCount?: number | undefined
  scanner?: { name: string, version?: string | undefined } | undefined
  supersede?: boolean | undefined
  /** The key opening the run (recorded in runs.opened_by). */
  openedBy?: string | undefined
}

const inFlight = (status: RunStatus) => status === 'open' || status === 'completing'

function storedCounts (run: RunRow): RunCounts {
  const { seen, created, updated, unchanged, deleted, batches, skipped } = run
  return { seen, created, updated, unchanged, deleted, batches, skipped }
}

export async function stateOf (deps: ReconcileDeps, run: RunRow): Promise<RunState> {
  return { run, stats: inFlight(run.status) ? await liveCounts(deps, run) : storedCounts(run) }
}

/**
 * The run, if it exists and `access` (the caller's key, when there is one) may touch it.
 * Another tenant's run does not exist for the caller: same 404, same words.
 */
export async function requireRun (deps: ReconcileDeps, id: number, access?: Access): Promise<RunRow> {
  const run = await deps.runs.getRun(id)
  checkAccess(run, id, access)
  return run!
}

/**
 * The run's seen-set layout. A run opened by a version whose seen sets held ids has none: this
 * version can neither feed nor complete it.
 */
export function requireLayout (run: RunRow): SetLayout {
  const layout = layoutOf(run)
  if (layout === null) {
    throw new TallyError('run_state_lost', `Run ${run.id} was opened by an earlier version of Tally, whose Redis layout this one does not use; abort it and rescan`)
  }
  return layout
}

export function checkAccess (run: RunRow | undefined, id: number, access: Access | undefined): asserts run is RunRow {
  if (run === undefined || (access !== undefined && run.tenant !== access.tenant)) {
    throw new TallyError('run_not_found', `Run ${id} does not exist`)
  }
  if (access !== undefined && !allowsScope(access, run.scope)) {
    throw new TallyError('forbidden', `This key is restricted to scopes ${access.scopes.join(', ')}; run ${id} is in ${run.scope}`)
  }
}

export async function getRun (deps: ReconcileDeps, id: number, access?: Access): Promise<RunState> {
  return stateOf(deps, await requireRun(deps, id, access))
}

export async function listRuns (deps: ReconcileDeps, filter: Parameters<ReconcileDeps['runs']['listRuns']>[0]): Promise<RunState[]> {
  const rows = await deps.runs.listRuns(filter)
  return Promise.all(rows.map((run) => stateOf(deps, run)))
}

/**
 * Opens a run. The database allows one run in flight per scope; with `supersede` an open
 * one is aborted first (a completing one is never interrupted). The `open` markers are
 * written inside the run's transaction, so a run never exists without them.
 */
export async function openRun (deps: ReconcileDeps, input: OpenRunInput): Promise<RunState> {
  const { tenant, scope } = input
  for (let attempt = 0; ; attempt++) {
    try {
      // Everything in one transaction: an open refused (too many runs, Redis unavailable) leaves
      // no trace, not even the scope's row.
      const run = await deps.transaction(async (tx) => {
        const inFlight = await deps.runs.lockAndCountInFlight(tenant, tx)
        if (inFlight >= deps.settings.MAX_OPEN_RUNS) {
          throw new TallyError('too_many_open_runs',
            `Tenant ${tenant} has ${inFlight} runs in flight, the most this server allows (MAX_OPEN_RUNS); complete or abort one first`)
        }
        const scopeRow = await deps.runs.ensureScope(tenant, scope, input.shardCount ?? deps.settings.DEFAULT_SHARD_COUNT, tx)
        const shardCount = input.shardCount ?? scopeRow.shardCount
        // Sets sized for the scope as it stands (a first scan: one per shard; the next follows its size).
        const seenSets = setsFor(Math.max(scopeRow.baselineSeen, scopeRow.resourceCount), shardCount, deps.settings.SEEN_SET_SIZE)
        const row = await deps.runs.insertRun({
          tenant,
          scope,
          shardCount,
          seenSets,
          digestBits: deps.settings.ID_DIGEST_BITS,
          scannerName: input.scanner?.name ?? null,
          scannerVersion: input.scanner?.version ?? null,
          openedBy: input.openedBy ?? null
        }, tx)
        try {
          await writeMarkers(deps, row, deps.settings.RUN_TTL)
        } catch (err) {
          // The run will not exist: neither should the markers that did get written (best
          // effort, Redis may be what failed; else they expire with RUN_TTL).
          await Promise.allSettled(runStateKeys(deps, row).map((key) => deps.redis.unlink(key)))
          throw err
        }
        return row
      })
      deps.log.info({ runId: run.id, scope, shardCount: run.shardCount, seenSets: run.seenSets }, 'run opened')
      return stateOf(deps, run)
    } catch (err) {
      if (!isOpenRunConflict(err)) throw err
      const open = await deps.runs.findInFlightRun(tenant, scope)
      if (open === undefined && attempt < 3) continue
      if (open === undefined || !input.supersede || open.status !== 'open' || attempt >= 3) {
        const name = open === undefined ? 'another run' : `run ${open.id} (${open.status})`
        throw new TallyError('scope_has_open_run', `Scope ${scope} already has ${name} in flight`,
          open === undefined ? undefined : { openRunId: open.id })
      }
      await abortRun(deps, open.id).catch((abortErr: unknown) => {
        if (!(abortErr instanceof TallyError)) throw abortErr
      })
    }
  }
}

/**
 * Moves a run from one of `from` to `aborted`, with its row locked first: a write of its batches
 * under way (one given up for dead by the drain, or one that began as the sweeper gave up the run)
 * commits before, and none after (resources writeChanged). Undefined when the run was in none of them.
 */
export async function endAborted (deps: Pick<ReconcileDeps, 'runs' | 'transaction'>, id: number, from: RunStatus[], counts?: RunCounts): Promise<RunRow | undefined> {
  return deps.transaction(async (tx) => {
    await deps.runs.lockRun(id, tx)
    return deps.runs.transition(id, from, 'aborted', counts, tx)
  })
}

/**
 * Aborts an open run: deletes nothing, keeps its counters in the row, drops its Redis state.
 * Batches in flight are waited for first, so none writes after the abort and its counters are
 * whole. Aborting an aborted run answers the same again.
 */
export async function abortRun (deps: ReconcileDeps, id: number, access?: Access): Promise<RunState> {
  const run = await requireRun(deps, id, access)
  if (run.status === 'aborted') {
    await dropRunKeys(deps, run)
    return stateOf(deps, run)
  }
  if (run.status !== 'open') {
    throw new TallyError('run_not_open', `Run ${id} is ${run.status}; only an open run can be aborted`)
  }
  // A run whose state is already gone has nothing in flight to wait for.
  await drain(deps, run)
  const aborted = await endAborted(deps, id, ['open'], await liveCounts(deps, run))
  if (aborted === undefined) return abortRun(deps, id)
  deps.log.info({ runId: id, scope: run.scope }, 'run aborted')
  await dropRunKeys(deps, aborted)
  return stateOf(deps, aborted)
}
