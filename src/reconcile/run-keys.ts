/** Per-run Redis state as a whole: markers, seen sets and counters across all of a run's shards. */
import type { RunCounts, RunRow } from '../db/runs-repository.js'
import type { ReconcileDeps } from './types.js'
import { MARKER_MISSING } from './scripts.js'

type Deps = Pick<ReconcileDeps, 'redis' | 'keys'>

export const shards = (count: number) => Array.from({ length: count }, (_, k) => k)

/** Writes the `open` marker in every shard of a new run. */
export async function writeMarkers (deps: Deps, run: RunRow, ttl: number): Promise<void> {
  await Promise.all(shards(run.shardCount).map((k) =>
    deps.redis.set(deps.keys.marker(run, k, run.id), 'open', 'EX', ttl)))
}

/**
 * Moves every shard's marker from `from` to `to`. Returns false if any shard's marker is gone:
 * the run's sets can no longer be proven whole.
 */
export async function moveMarkers (deps: Deps, run: RunRow, from: string, to: string): Promise<boolean> {
  const results = await Promise.all(shards(run.shardCount).map((k) =>
    deps.redis.tallyMarker(deps.keys.marker(run, k, run.id), from, to)))
  return !results.includes(MARKER_MISSING)
}

/** Σ SCARD of a run's seen sets. */
export async function seenCount (deps: Deps, run: Pick<RunRow, 'id' | 'tenant' | 'scope' | 'shardCount'>): Promise<number> {
  const counts = await Promise.all(shards(run.shardCount).map((k) =>
    deps.redis.scard(deps.keys.seen(run, k, run.id))))
  return counts.reduce((a, b) => a + b, 0)
}

/** The counters of a run in flight, read from Redis. */
export async function liveCounts (deps: Deps, run: RunRow): Promise<RunCounts> {
  const [seen, c] = await Promise.all([seenCount(deps, run), deps.redis.hgetall(deps.keys.counters(run.id))])
  const n = (v: string | undefined) => Number(v ?? 0)
  return { seen, created: n(c.created), updated: n(c.updated), unchanged: n(c.unchanged), deleted: 0, batches: n(c.batches), skipped: 0 }
}

/** Drops every key of a run that did not become the baseline (aborted or superseded). */
export async function dropRunKeys (deps: Deps, run: RunRow): Promise<void> {
  await Promise.all([
    ...shards(run.shardCount).map((k) =>
      deps.redis.unlink(deps.keys.seen(run, k, run.id), deps.keys.marker(run, k, run.id))),
    deps.redis.unlink(deps.keys.counters(run.id), deps.keys.batches(run.id))
  ])
}
