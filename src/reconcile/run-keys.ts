/** Per-run Redis state as a whole: markers, seen sets, counts, acks and the run's own hash, across all of a run's shards. */
import { setTimeout as sleep } from 'node:timers/promises'
import type { RunCounts, RunRow } from '../db/runs-repository.js'
import type { ReconcileDeps } from './types.js'
import { MARKER_MISSING } from './scripts.js'
import type { SetLayout } from './members.js'

type Deps = Pick<ReconcileDeps, 'redis' | 'keys'>

export const shards = (count: number) => Array.from({ length: count }, (_, k) => k)

type LayoutFields = Pick<RunRow, 'shardCount' | 'seenSets' | 'digestBits'>

/**
 * How the run lays out its seen sets. A run opened by a version that kept id strings has no
 * layout (null): its sets are not this version's to read.
 */
export function layoutOf (run: LayoutFields): SetLayout | null {
  if (run.seenSets === null || run.digestBits === null) return null
  return { shardCount: run.shardCount, sets: run.seenSets, bits: run.digestBits }
}

type SetsOf = Pick<RunRow, 'id' | 'tenant' | 'scope'> & LayoutFields

/** The seen-set keys of one shard of a run: the one set of ids for a run of a version that kept those. */
export function shardSeenKeys (deps: Deps, run: SetsOf, shard: number): string[] {
  if (run.seenSets === null) return [deps.keys.legacySeen(run, shard, run.id)]
  return shards(run.seenSets).map((set) => deps.keys.seen(run, shard, run.id, set))
}

/** Every seen-set key of a run: shard by shard, set by set. */
export function seenKeys (deps: Deps, run: SetsOf): string[] {
  return shards(run.shardCount).flatMap((k) => shardSeenKeys(deps, run, k))
}

/**
 * How long a batch may stay registered in flight before a completion takes its holder for dead
 * (and the batch, should it go on after all, is refused at its end). Also how long a claimed
 * batch id holds before another copy may take it over.
 */
export const BATCH_STALE_MS = 30_000
const DRAIN_POLL_MS = 10

/** Writes the `open` marker in every shard of a new run, and the run's hash in state `open`. */
export async function writeMarkers (deps: Deps, run: RunRow, ttl: number): Promise<void> {
  const counters = deps.keys.counters(run.id)
  await Promise.all([
    ...shards(run.shardCount).map((k) => deps.redis.set(deps.keys.marker(run, k, run.id), 'open', 'EX', ttl)),
    deps.redis.multi().hset(counters, 'state', 'open', 'touched', Date.now()).expire(counters, ttl).exec()
  ])
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

/**
 * Closes the run to new batches and waits until the batches already registered are done (or,
 * past BATCH_STALE_MS, revoked as dead). Afterwards nothing can join the run's sets or counts
 * but through a batch that will be refused at its end. False when the run's state is gone.
 */
export async function drain (deps: Deps, run: RunRow): Promise<boolean> {
  for (;;) {
    const inFlight = await deps.redis.tallyClose(deps.keys.counters(run.id), deps.keys.inflight(run.id), BATCH_STALE_MS)
    if (inFlight === MARKER_MISSING) return false
    if (inFlight === 0) return true
    await sleep(DRAIN_POLL_MS)
  }
}

/** Σ SCARD of a run's seen sets. */
export async function seenCount (deps: Deps, run: SetsOf): Promise<number> {
  const counts = await Promise.all(shards(run.shardCount).map((k) => {
    const keys = shardSeenKeys(deps, run, k)
    return deps.redis.tallyCard(keys.length, ...keys)
  }))
  return counts.reduce((a, b) => a + b, 0)
}

/** The counters of a run in flight, read from Redis: each shard's counts, and the run's batches. */
export async function liveCounts (deps: Deps, run: RunRow): Promise<RunCounts> {
  const [seen, perShard, c] = await Promise.all([
    seenCount(deps, run),
    Promise.all(shards(run.shardCount).map((k) => deps.redis.hgetall(deps.keys.counts(run, k, run.id)))),
    deps.redis.hgetall(deps.keys.counters(run.id))
  ])
  const n = (v: string | undefined) => Number(v ?? 0)
  const sum = (field: string) => perShard.reduce((total, h) => total + n(h[field]), 0)
  return { seen, created: sum('created'), updated: sum('updated'), unchanged: sum('unchanged'), deleted: 0, batches: n(c.batches), skipped: 0 }
}

/** The keys of a run in flight that are not its seen sets. */
export function runStateKeys (deps: Deps, run: RunRow): string[] {
  return [
    ...shards(run.shardCount).flatMap((k) => [deps.keys.marker(run, k, run.id), deps.keys.counts(run, k, run.id), deps.keys.acks(run, k, run.id)]),
    deps.keys.counters(run.id), deps.keys.batches(run.id), deps.keys.inflight(run.id)
  ]
}

/** Drops every key of a run that did not become the baseline (aborted or superseded), and its acks witness. */
export async function dropRunKeys (deps: Deps & Pick<ReconcileDeps, 'runs'>, run: RunRow): Promise<void> {
  await Promise.all([
    deps.runs.dropWitnesses(run.id),
    ...seenKeys(deps, run).map((key) => deps.redis.unlink(key)),
    ...runStateKeys(deps, run).map((key) => deps.redis.unlink(key))
  ])
}
