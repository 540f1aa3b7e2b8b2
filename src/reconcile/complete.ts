/**
 * Completing a run: find what vanished since the baseline and soft-delete it, safely.
 *
 * The run first stops taking batches and waits for those in flight, so every batch that is
 * acknowledged is in its sets and its stats. Nothing is deleted unless the run's own sets are
 * provably whole (every shard marker still there, before and after the diff), the count
 * matches what the scanner expected, and the deletion stays under the mass-deletion guard.
 * Deletions, the run's stats and the baseline promotion commit in one transaction, so a crash
 * anywhere leaves either nothing done or everything done, and calling complete again finishes
 * the job. Concurrent completes of one run all answer with the one result.
 */
import type { Static } from '@sinclair/typebox'
import pLimit from 'p-limit'
import type { RunCounts, RunRow, ScopeRow } from '../db/runs-repository.js'
import type { SkipPartition } from '../db/schema.js'
import { TallyError } from '../errors.js'
import { cacheLayoutOf, cacheSlot, type CacheLayout } from './cache.js'
import { digestRange, groupBy, groupMembers, idDigest, setOf, setsFor, type SetLayout } from './members.js'
import { drain, dropRunKeys, layoutOf, liveCounts, moveMarkers, runStateKeys, seenCount, seenKeys, shardSeenKeys, shards } from './run-keys.js'
import { requireLayout, requireRun, stateOf } from './runs.js'
import type { Access } from '../auth/keys.js'
import type { CompleteBodySchema } from '../contract.js'
import type { ReconcileDeps, RunState } from './types.js'

/** What a completion is told (the contract's completion body): `skip`, partitions the scanner failed to enumerate, nothing in them deleted. */
export type CompleteOptions = Static<typeof CompleteBodySchema>

/** Thrown inside the transaction to roll it back when another caller finished the run first. */
class ConcurrentFinish extends Error {}

const DELETE_CHUNK = 5000
// A tripped guard describes at most this many of the ids it holds back, and lists a few.
const GUARD_DESCRIBE = 100_000
const GUARD_SAMPLE = 20
const PAGE = 5000
// SDIFF results are held in memory and each call blocks Redis for its shard: a few at a time.
const DIFF_PARALLELISM = 8

interface Stale {
  ids: string[]
  /** How many live resources the deletion ratio is measured against. */
  baselineSize: number
  method: 'sdiff' | 'scan'
}

/** Which of `ids` the run's sets lack: their members looked up, one script per shard. */
async function notSeen (deps: ReconcileDeps, run: RunRow, layout: SetLayout, ids: string[]): Promise<string[]> {
  const absent: string[] = []
  await Promise.all([...groupMembers(ids, layout)].map(async ([shard, sets]) => {
    const setKeys = [...sets.keys()].map((set) => deps.keys.seen(run, shard, run.id, set))
    const members = [...sets.values()].map((m) => [...m.keys()])
    const found = await deps.redis.tallyIsMember(setKeys.length, ...setKeys, ...members.flatMap((m) => [m.length, ...m]))
    const idsOf = [...sets.values()].flatMap((m) => [...m.values()])
    idsOf.forEach((same, i) => { if (found[i] === 0) absent.push(...same) })
  }))
  return absent
}

/**
 * What the baseline itself and the runs since it (every run, for a scope without one) wrote
 * and this run did not see. The baseline's sets cannot know of what runs that never completed
 * wrote, nor of an id that went missing from them (a batch that failed after its write, a lost
 * SADD); an index on `changed_run_id` finds all of them without reading the scope. Such runs
 * all opened after the baseline and before this run: a scope has one run in flight at a time.
 * With `own`, this run's rows too: one of its batches wrote and was never acknowledged (it
 * failed, or its process died, after its write), so a row it wrote may be in none of its sets.
 */
async function orphans (deps: ReconcileDeps, run: RunRow, layout: SetLayout, fromRunId: number, own: boolean): Promise<string[]> {
  const before = own ? run.id + 1 : run.id
  if (fromRunId >= before) return []
  return notSeen(deps, run, layout, await deps.resources.liveIdsWrittenBetween(run.tenant, run.scope, fromRunId, before))
}

/**
 * Fast path, from Redis: the baseline's members that none of the run's sets holds, shard by
 * shard, when the baseline's sets are there, whole (the count recorded at its completion) and
 * laid out compatibly (same shards and digest width; set counts may differ); then the rows of
 * those members, plus the orphans. A scope that never completed a run has only orphans to lose.
 * Undefined when the sets cannot be trusted.
 */
async function staleFromSets (deps: ReconcileDeps, run: RunRow, layout: SetLayout, scope: ScopeRow, seen: number): Promise<Stale | undefined> {
  const baselineId = scope.baselineRunId
  // Drained, so only a batch given up for dead (BATCH_STALE_MS) could still write: the next
  // completion checks what that wrote (writes_seen is decided under the run's lock, in finish).
  const own = await deps.runs.anyUnacknowledgedWrite(run.id)
  if (baselineId === null) {
    const ids = await orphans(deps, run, layout, 0, own)
    return { ids, baselineSize: seen + ids.length, method: 'sdiff' }
  }
  const baseline = await deps.runs.getRun(baselineId)
  const from = baseline === undefined ? null : layoutOf(baseline)
  if (baseline === undefined || from === null || from.shardCount !== layout.shardCount || from.bits !== layout.bits) return undefined
  // The baseline's sets hold what it saw, before the diff and after (they may be laid out again meanwhile: relay).
  const whole = async (when: string) => {
    if (await seenCount(deps, baseline) === scope.baselineSeen) return true
    deps.log.warn({ runId: run.id, baselineRunId: baselineId }, `baseline sets incomplete ${when} the diff; diffing against Postgres`)
    return false
  }
  if (!await whole('before')) return undefined
  const limit = pLimit(DIFF_PARALLELISM)
  const diffs = await Promise.all(shards(layout.shardCount).map((k) => limit(() => {
    const setKeys = [...shardSeenKeys(deps, baseline, k), ...shardSeenKeys(deps, run, k)]
    return deps.redis.tallyDiff(setKeys.length, ...setKeys, from.sets, layout.sets)
  })))
  if (!await whole('after')) return undefined
  const ranges = diffs.flat().map((member) => digestRange(member, layout.bits))
  const vanished: string[] = []
  for (let i = 0; i < ranges.length; i += PAGE) {
    vanished.push(...await deps.resources.liveIdsOfDigests(run.tenant, run.scope, ranges.slice(i, i + PAGE)))
  }
  // A baseline whose completion found every row it wrote in its sets (runs.writes_seen) has
  // none of its own to check: after a first load, that is the whole scope.
  const ids = [...new Set([...vanished, ...await orphans(deps, run, layout, baseline.writesSeen ? baselineId + 1 : baselineId, own)])]
  return { ids, baselineSize: scope.baselineSeen, method: 'sdiff' }
}

/**
 * Fallback: every live id of the scope, in keyset pages, checked against the run's sets. Rows
 * written before ids had digests get theirs here: a baseline this completion leaves can then
 * be diffed from Redis, its vanished members found in Postgres.
 */
async function staleByScan (deps: ReconcileDeps, run: RunRow, layout: SetLayout): Promise<Stale> {
  const ids: string[] = []
  let live = 0
  let after: string | null = null
  for (;;) {
    const page = await deps.resources.liveIdsPage(run.tenant, run.scope, after, PAGE)
    if (page.length === 0) break
    live += page.length
    await deps.resources.fillDigests(run.tenant, run.scope, page.filter((r) => r.bare).map((r) => ({ id: r.id, digest: idDigest(r.id).toString() })))
    ids.push(...await notSeen(deps, run, layout, page.map((r) => r.id)))
    after = page[page.length - 1]!.id
  }
  return { ids, baselineSize: live, method: 'scan' }
}

interface Located { id: string, type: string, region: string | null }

/** Type and region of each live row among `ids`, in chunks (primary-key probes). */
async function locate (deps: ReconcileDeps, run: RunRow, ids: string[]): Promise<Located[]> {
  const rows: Located[] = []
  for (let i = 0; i < ids.length; i += DELETE_CHUNK) {
    rows.push(...await deps.resources.livePartitions(run.tenant, run.scope, ids.slice(i, i + DELETE_CHUNK)))
  }
  return rows
}

const inPartition = (r: Located, p: SkipPartition) =>
  (p.type === undefined || p.type === r.type) && (p.region === undefined || p.region === r.region)

/** Stale ids outside the skipped partitions, and those kept for lying inside one. */
async function withoutSkipped (deps: ReconcileDeps, run: RunRow, ids: string[], skip: SkipPartition[]): Promise<{ ids: string[], kept: string[] }> {
  if (skip.length === 0 || ids.length === 0) return { ids, kept: [] }
  const outside: string[] = []
  const kept: string[] = []
  for (const r of await locate(deps, run, ids)) (skip.some((p) => inPartition(r, p)) ? kept : outside).push(r.id)
  return { ids: outside, kept }
}

/**
 * Adds the ids a skip kept to the run's sets, once its completion has committed. A baseline's
 * sets must hold every live resource of the scope: the next completion diffs against them, and
 * a resource missing from them would never be found stale (the model-based test found exactly
 * that). Should this step be lost (a crash right after the commit), the baseline's recorded
 * size (seen + kept) no longer matches its sets, and the next completion diffs against Postgres.
 */
async function adoptKept (deps: ReconcileDeps, run: RunRow, layout: SetLayout, kept: string[]): Promise<void> {
  await Promise.all([...groupMembers(kept, layout)].flatMap(([shard, sets]) => [...sets].map(([set, members]) =>
    deps.redis.sadd(deps.keys.seen(run, shard, run.id, set), ...members.keys()))))
}

const RELAY_CHUNK = 5000

/**
 * Lays a new baseline's sets out again when its size calls for more sets than it opened with
 * (a first load has no size to go by: one set per shard, hashtable-encoded past 512 members).
 * Members are first copied to their sets under the new count (keys the old count never names,
 * so the old layout stays whole), then the run's count switches in Postgres, then the old sets
 * drop the members they no longer hold. A completion diffing against this baseline meanwhile
 * sees the old layout whole, or the new one with more members than the baseline's size
 * (`scopes.baseline_seen`), and then diffs against Postgres: never a member missing. The same
 * holds if this stops halfway.
 */
async function relay (deps: ReconcileDeps, run: RunRow, layout: SetLayout, size: number): Promise<void> {
  const sets = setsFor(size, layout.shardCount, deps.settings.SEEN_SET_SIZE)
  if (sets <= layout.sets) return
  const next = { ...layout, sets }
  const started = performance.now()
  const limit = pLimit(DIFF_PARALLELISM)
  /** For each of the run's sets under the old count, its members that belong to another set now. */
  const eachLeaving = (act: (shard: number, set: number, leaving: Map<number, string[]>) => Promise<unknown>) =>
    Promise.all(shards(layout.shardCount).map((shard) => limit(async () => {
      for (let set = 0; set < layout.sets; set++) {
        const leaving = groupBy(await deps.redis.smembers(deps.keys.seen(run, shard, run.id, set)), (member) => setOf(member, next))
        leaving.delete(set)
        await act(shard, set, leaving)
      }
    })))
  const inChunks = (members: string[], call: (chunk: string[]) => Promise<unknown>) =>
    Promise.all(Array.from({ length: Math.ceil(members.length / RELAY_CHUNK) }, (_, i) => call(members.slice(i * RELAY_CHUNK, (i + 1) * RELAY_CHUNK))))

  await eachLeaving((shard, _set, leaving) => Promise.all([...leaving].map(([to, members]) =>
    inChunks(members, (chunk) => deps.redis.sadd(deps.keys.seen(run, shard, run.id, to), ...chunk)))))
  if (!await deps.runs.relaySets(run.id, layout.sets, sets)) return
  const scope = await deps.runs.getScope(run.tenant, run.scope)
  if (scope?.baselineRunId !== run.id) {
    // Replaced meanwhile: its sets go, under either count.
    await Promise.all([...seenKeys(deps, { ...run, seenSets: sets })].map((key) => deps.redis.unlink(key)))
    return
  }
  await eachLeaving((shard, set, leaving) => inChunks([...leaving.values()].flat(), (chunk) =>
    deps.redis.srem(deps.keys.seen(run, shard, run.id, set), ...chunk)))
  deps.log.info({ runId: run.id, from: layout.sets, to: sets, relayMs: Math.round(performance.now() - started) }, 'baseline sets laid out again')
}

/** What a tripped guard holds back, for an operator deciding between force and abort. */
async function quarantine (deps: ReconcileDeps, run: RunRow, ids: string[]) {
  const described = ids.slice(0, GUARD_DESCRIBE)
  const byType = new Map<string, number>()
  for (const r of await locate(deps, run, described)) byType.set(r.type, (byType.get(r.type) ?? 0) + 1)
  return {
    byType: [...byType].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([type, count]) => ({ type, count })),
    described: described.length,
    sample: described.toSorted().slice(0, GUARD_SAMPLE)
  }
}

/** Puts a refused completion back: the run is open again and takes batches. */
async function reopen (deps: ReconcileDeps, run: RunRow): Promise<void> {
  // Status first: if a concurrent complete already finished the run, its markers stay closed
  // and no batch can join a completed run.
  if (await deps.runs.transition(run.id, ['completing'], 'open') === undefined) return
  await moveMarkers(deps, run, 'closing', 'open')
  await deps.redis.tallyReopen(deps.keys.counters(run.id))
}

/**
 * The run's Redis state was found incomplete. That is what a concurrent complete leaves once it
 * has finished the run (it drops the run's keys after its commit): then this caller answers
 * with that result. Only a run still in flight has really lost its state.
 */
async function stateGone (deps: ReconcileDeps, run: RunRow, during: string): Promise<RunState> {
  const current = await requireRun(deps, run.id)
  if (current.status === 'completed' || current.status === 'superseded') return stateOf(deps, current)
  if (current.status === 'aborted') throw new TallyError('run_not_open', `Run ${run.id} was aborted while completing`)
  await reopen(deps, run)
  throw new TallyError('run_state_lost', during === 'diff'
    ? `Run ${run.id}'s Redis state was lost while it completed, so nothing was deleted; abort it and rescan`
    : `Run ${run.id}'s Redis state is incomplete (restart, flush or expiry), so nothing can be deleted safely; abort it and rescan`)
}

/**
 * Forgets what the cache holds for the ids in every cache shard they fall in, and bumps those
 * shards' epochs. With a generation (after a commit that deleted), every cache shard records it:
 * a shard where that write is lost stays behind the scope's generation, and is emptied when next read.
 */
async function invalidate (deps: ReconcileDeps, run: RunRow, cache: CacheLayout, ids: string[], generation?: number): Promise<void> {
  const groups = groupBy(ids.map((id) => cacheSlot(id, idDigest(id), cache)), (slot) => slot.shard)
  const targets = generation === undefined ? [...groups.keys()] : shards(cache.shards)
  await Promise.all(targets.map((shard) => deps.redis.tallyInvalidate(deps.keys.cache(run, shard), deps.keys.legacyCache(run, shard),
    generation ?? '', cache.buckets, cache.bits, ...(groups.get(shard) ?? []).map((slot) => slot.field))))
}

/**
 * Are the run's acknowledged batches all still in Redis? Every token Postgres witnessed must be
 * in the acks set of each shard the batch added ids to. A token missing means that shard lost
 * acknowledged writes — its ids too, which a diff would take for vanished.
 */
async function acksWhole (deps: ReconcileDeps, run: RunRow): Promise<boolean> {
  const byShard = new Map<number, string[]>()
  for (const { token, shards: touched } of await deps.runs.acks(run.id)) {
    for (const shard of touched) {
      const tokens = byShard.get(shard)
      if (tokens === undefined) byShard.set(shard, [token])
      else tokens.push(token)
    }
  }
  const found = await Promise.all([...byShard].map(([shard, tokens]) =>
    deps.redis.smismember(deps.keys.acks(run, shard, run.id), ...tokens)))
  const lost = found.reduce((n, members) => n + members.filter((m) => m === 0).length, 0)
  if (lost > 0) deps.log.error({ runId: run.id, lost }, 'acknowledged batches missing from Redis: nothing is deleted')
  return lost === 0
}

/**
 * After the commit: the old baseline's sets go, this run's sets stay for good (they are the
 * new baseline), its markers and counters go. Idempotent, so a repeated complete redoes it.
 */
async function settleKeys (deps: ReconcileDeps, run: RunRow): Promise<void> {
  const { redis } = deps
  const scope = await deps.runs.getScope(run.tenant, run.scope)
  // The run's old baseline, unless it is still the scope's (then this run never replaced it).
  const old = run.baselineRunId === null || scope?.baselineRunId === run.baselineRunId
    ? undefined
    : await deps.runs.getRun(run.baselineRunId)
  const isBaseline = scope?.baselineRunId === run.id
  await Promise.all([
    ...(old === undefined ? [] : seenKeys(deps, old)).map((key) => redis.unlink(key)),
    // A run that is no longer the baseline (superseded, or replaced since) keeps no sets.
    ...seenKeys(deps, run).map((key) => isBaseline ? redis.persist(key) : redis.unlink(key)),
    ...runStateKeys(deps, run).map((key) => redis.unlink(key))
  ])
}

export async function completeRun (deps: ReconcileDeps, id: number, opts: CompleteOptions = {}, access?: Access): Promise<RunState> {
  let run = await requireRun(deps, id, access)
  if (run.status === 'completed' || run.status === 'superseded') {
    await settleKeys(deps, run)
    return stateOf(deps, run)
  }
  if (run.status === 'aborted') throw new TallyError('run_not_open', `Run ${id} was aborted`)
  const layout = requireLayout(run)
  // A completion is activity: the sweeper must not take this run for abandoned.
  const touch = () => deps.redis.hset(deps.keys.counters(id), 'touched', Date.now())
  if (run.status === 'open') {
    // One caller wins the move; a loser (or a retry after a crash) resumes a completing run.
    const moved = await deps.runs.transition(id, ['open'], 'completing')
    if (moved === undefined) return completeRun(deps, id, opts)
    run = moved
    // Nothing of the run has changed in Redis yet: if Redis refuses this first write (down, full),
    // the run is left open, as the 503 says.
    await touch().catch(async (err: unknown) => {
      await deps.runs.transition(id, ['completing'], 'open')
      throw err
    })
  } else {
    await touch()
  }

  // No new batch may begin, and the ones that began are waited for: an acknowledged batch is
  // in the stats. Then every marker says `closing`, or the state is lost.
  if (!await drain(deps, run) || !await moveMarkers(deps, run, 'open', 'closing')) return stateGone(deps, run, 'start')
  const counts: RunCounts = await liveCounts(deps, run)
  if (opts.expectedResources !== undefined && opts.expectedResources !== counts.seen) {
    await reopen(deps, run)
    throw new TallyError('expected_count_mismatch',
      `Run ${id} saw ${counts.seen} resources, the scanner expected ${opts.expectedResources}`,
      { seen: counts.seen, expected: opts.expectedResources })
  }

  const scope = await deps.runs.getScope(run.tenant, run.scope)
  if (scope === undefined || scope.baselineRunId !== run.baselineRunId) {
    // Another run completed after this one started: its view is older, it deletes nothing.
    return await finish(deps, run, layout, cacheOf(deps, scope, run, layout), 'superseded', counts, []) ?? completeRun(deps, id, opts)
  }

  const diffStarted = performance.now()
  const stale = await staleFromSets(deps, run, layout, scope, counts.seen) ?? await staleByScan(deps, run, layout)
  const skip = opts.skip ?? []
  const { ids, kept } = await withoutSkipped(deps, run, stale.ids, skip)
  const diffMs = Math.round(performance.now() - diffStarted)
  const ratio = stale.baselineSize === 0 ? 0 : ids.length / stale.baselineSize
  const maxRatio = opts.maxDeleteRatio ?? deps.settings.MAX_DELETE_RATIO
  if (!opts.force && stale.baselineSize >= deps.settings.GUARD_MIN_BASELINE && ratio > maxRatio) {
    const held = await quarantine(deps, run, ids)
    await reopen(deps, run)
    throw new TallyError('mass_deletion_guard',
      `Completing run ${id} would delete ${ids.length} of ${stale.baselineSize} resources ` +
      `(${(ratio * 100).toFixed(1)}% > ${(maxRatio * 100).toFixed(1)}%); the run stays open: ` +
      'complete with force: true to delete them, with skip for partitions the scan missed, or abort it',
      { stale: ids.length, baseline: stale.baselineSize, ...held })
  }
  // Were the sets whole all along? A Redis restarted or flushed during the diff has lost the
  // markers too, and a diff against a vanished set would take live resources for stale.
  // And did Redis keep every acknowledged write? One that failed over to a replica, or came
  // back from a persistence file, may have kept the markers but lost the last batches' ids.
  if (!await moveMarkers(deps, run, 'closing', 'closing') || !await acksWhole(deps, run)) return stateGone(deps, run, 'diff')
  deps.log.info({ runId: id, stale: ids.length, skipped: kept.length, method: stale.method, diffMs }, 'completing run')
  return await finish(deps, run, layout, cacheOf(deps, scope, run, layout), 'completed', { ...counts, skipped: kept.length }, ids, { skip, kept }) ?? completeRun(deps, id, opts)
}

const cacheOf = (deps: ReconcileDeps, scope: ScopeRow | undefined, run: RunRow, layout: SetLayout): CacheLayout =>
  cacheLayoutOf(scope, run, layout.bits, deps.settings.CACHE_BUCKET_SIZE)

/** Commits the outcome; undefined when the run is no longer this completion's to finish (start over). */
async function finish (deps: ReconcileDeps, run: RunRow, layout: SetLayout, cache: CacheLayout, status: 'completed' | 'superseded', counts: RunCounts,
  stale: string[], partial: { skip: SkipPartition[], kept: string[] } = { skip: [], kept: [] }): Promise<RunState | undefined> {
  const started = performance.now()
  let deleteMs = 0
  // Forget the cached hashes first, and again after the commit (a fill prepared in between is
  // dropped by the epoch): a cache entry outliving its row's deletion would make a reappearing
  // resource look unchanged and leave it deleted. A miss only costs a read.
  await invalidate(deps, run, cache, stale)

  const finished = await deps.transaction(async (tx) => {
    // No write of the run is under way from here to the commit, and none can begin: so what
    // it wrote is known. All of it is in its sets when every batch that wrote was acknowledged
    // (none wrote and then failed), and its sets agree with their counts; then the next
    // completion skips its rows (writesSeen).
    await deps.runs.lockRun(run.id, tx)
    const writesSeen = status === 'completed' && counts.seen === counts.created + counts.updated + counts.unchanged &&
      !await deps.runs.anyUnacknowledgedWrite(run.id, tx)
    let deleted = 0
    const deleting = performance.now()
    for (let i = 0; i < stale.length; i += DELETE_CHUNK) {
      deleted += await deps.resources.softDelete(run.tenant, run.scope, stale.slice(i, i + DELETE_CHUNK), run.id, tx)
    }
    deleteMs = Math.round(performance.now() - deleting)
    const row = await deps.runs.finishRun(run.id, run.attempt, status, { ...counts, deleted }, partial.skip, writesSeen, tx)
    if (row === undefined) throw new ConcurrentFinish()
    await deps.runs.dropWitnesses(run.id, tx)
    // The baseline's sets hold what the run saw and what its skip kept (adoptKept).
    const generation = status === 'completed'
      ? await deps.runs.promoteBaseline(run.tenant, run.scope, { ...run, seen: counts.seen + counts.skipped, deleted }, tx)
      : undefined
    return { row, generation }
  }).catch((err: unknown) => {
    if (err instanceof ConcurrentFinish) return undefined
    throw err
  })
  // undefined: a concurrent complete of the same run committed first; answer with its result.
  const result = finished?.row ?? await requireRun(deps, run.id)
  // Or a concurrent complete with other options was refused and reopened the run: start over.
  if (result.status === 'open' || result.status === 'completing') return undefined
  if (result.status === 'aborted') {
    // The sweeper gave the run up as abandoned while this completion ran; nothing was deleted.
    await dropRunKeys(deps, result)
    throw new TallyError('run_not_open', `Run ${run.id} was aborted while completing`)
  }
  if (finished !== undefined) {
    deps.onFinished?.(finished.row)
    await invalidate(deps, run, cache, stale, finished.generation)
  }
  if (result.status === 'superseded') await dropRunKeys(deps, result)
  else {
    if (finished !== undefined) await adoptKept(deps, run, layout, partial.kept)
    await settleKeys(deps, result)
    if (finished !== undefined) await relay(deps, result, layout, counts.seen + counts.skipped)
  }
  deps.log.info({ runId: run.id, status: result.status, deleted: result.deleted, deleteMs, finishMs: Math.round(performance.now() - started) }, 'run finished')
  return stateOf(deps, result)
}
