/**
 * Ingesting one batch of a run. Unchanged resources cost one Redis round trip and no
 * database write: all shards' scripts go out together (ioredis pipelines them), misses of
 * the hash cache are read from Postgres in one query, and everything new or changed is
 * written by one upsert statement. A failure at any step leaves a state that a retry of
 * the same batch repairs.
 */
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { LRUCache } from 'lru-cache'
import type { RunRow } from '../db/runs-repository.js'
import type { ResourceWrite } from '../db/resources-repository.js'
import { TallyError } from '../errors.js'
import { contentHash, digest } from './content-hash.js'
import { groupByShard } from './keys.js'
import { requireRun } from './runs.js'
import { MARKER_MISSING } from './scripts.js'
import type { BatchResult, ReconcileDeps, ResourceIn } from './types.js'

type Kind = 'created' | 'updated' | 'unchanged'

interface Item {
  resource: ResourceIn
  /** The content hash, 16 hex digits, as kept in the Redis cache. */
  hash: string
  kind: Kind
}

type RunCache = LRUCache<number, RunRow>

async function runFor (deps: ReconcileDeps, runCache: RunCache, runId: number): Promise<RunRow> {
  const cached = runCache.get(runId)
  if (cached !== undefined) return cached
  const run = await requireRun(deps, runId)
  if (run.status !== 'open') throw new TallyError('run_not_open', `Run ${runId} is ${run.status}`)
  runCache.set(runId, run)
  return run
}

/** Why the markers refused a batch, told from the run's row. */
async function refusal (deps: ReconcileDeps, run: RunRow, missing: boolean): Promise<TallyError> {
  const current = await requireRun(deps, run.id)
  if (current.status === 'open' && missing) {
    return new TallyError('run_state_lost', `Run ${run.id}'s Redis state is gone (restart, flush or expiry); abort it and rescan`)
  }
  return new TallyError('run_not_open', `Run ${run.id} is ${current.status}`)
}

function dedupe (resources: ResourceIn[]): Map<string, ResourceIn> {
  const byId = new Map<string, ResourceIn>()
  // Last one wins: delete first so a repeated id takes its last position too.
  for (const r of resources) {
    byId.delete(r.id)
    byId.set(r.id, r)
  }
  return byId
}

function toWrite (r: ResourceIn, hash: string): ResourceWrite {
  return {
    id: r.id,
    type: r.type,
    name: r.name ?? null,
    region: r.region ?? null,
    tags: r.tags ?? {},
    attributes: r.attributes ?? {},
    contentHash: Buffer.from(hash, 'hex')
  }
}

/** How long a claim on a batch id holds before another copy may take it over (its holder died). */
const CLAIM_STALE_MS = 30_000
const CLAIM_POLL_MS = 25

/** What a batch id's record holds: the first copy's result, and a fingerprint of its content. */
interface BatchRecord {
  received: number
  created: number
  updated: number
  unchanged: number
  fingerprint: string
}

/** Ids and content hashes, in order: two copies of a batch agree on it, a different batch does not. */
function fingerprintOf (items: Map<string, Item>): string {
  let text = ''
  for (const [id, item] of items) text += `${id}\u0000${item.hash}\n`
  return digest(text)
}

function replayOf (deps: ReconcileDeps, run: RunRow, batchId: string, stored: string, fingerprint: string): BatchResult {
  const record = JSON.parse(stored) as BatchRecord
  if (record.fingerprint !== fingerprint) {
    throw new TallyError('batch_id_reused',
      `Batch id ${JSON.stringify(batchId)} was already used for a different batch of run ${run.id}; use a new id per batch`)
  }
  deps.log.info({ runId: run.id, batchId }, 'replayed batch answered from its first result')
  return { runId: run.id, received: record.received, created: record.created, updated: record.updated, unchanged: record.unchanged, duplicate: true }
}

/**
 * Returns `ingestBatch`. A run's scope and shard count never change, so its row is cached for
 * good; whether it is still open is never cached: the shard markers answer that, atomically,
 * on every batch.
 *
 * With a batch id, a batch applies and counts once: the first copy claims the id, a copy that
 * arrives meanwhile waits for its result, and later copies get that result with
 * `duplicate: true`. A copy whose claim holder died takes the claim over after CLAIM_STALE_MS;
 * should both finish, the batch is recorded (and counted) by whichever finishes first.
 */
export function createIngest (deps: ReconcileDeps) {
  const runCache: RunCache = new LRUCache<number, RunRow>({ max: 10_000 })
  return async function ingestBatch (runId: number, resources: ResourceIn[], batchId?: string): Promise<BatchResult> {
    try {
      const run = await runFor(deps, runCache, runId)
      const items = itemsOf(resources)
      if (batchId === undefined) return await ingest(deps, run, items, resources.length)
      return await ingestOnce(deps, run, items, resources.length, batchId)
    } catch (err) {
      if (err instanceof TallyError) runCache.delete(runId)
      throw err
    }
  }
}

function itemsOf (resources: ResourceIn[]): Map<string, Item> {
  const items = new Map<string, Item>()
  for (const [id, resource] of dedupe(resources)) {
    items.set(id, { resource, hash: contentHash(resource), kind: 'created' })
  }
  return items
}

async function ingestOnce (deps: ReconcileDeps, run: RunRow, items: Map<string, Item>, received: number, batchId: string): Promise<BatchResult> {
  const { redis, keys } = deps
  const fingerprint = fingerprintOf(items)
  const token = randomUUID()
  for (;;) {
    const [state, stored] = await redis.tallyBatchClaim(keys.batches(run.id), batchId, token, CLAIM_STALE_MS, deps.settings.runTtl)
    if (state === 'done') return replayOf(deps, run, batchId, stored, fingerprint)
    if (state === 'claimed') break
    await sleep(CLAIM_POLL_MS)
  }
  try {
    return await ingest(deps, run, items, received, { batchId, fingerprint })
  } catch (err) {
    await redis.tallyBatchRelease(keys.batches(run.id), batchId, token).catch(() => {})
    throw err
  }
}

async function ingest (deps: ReconcileDeps, run: RunRow, items: Map<string, Item>, received: number,
  batch?: { batchId: string, fingerprint: string }): Promise<BatchResult> {
  const { redis, keys } = deps

  // 1. One script per shard: check the marker, SADD the ids, HMGET their cached hashes.
  const byShard = groupByShard(items.keys(), run.shardCount)
  const replies = await Promise.all([...byShard].map(([shard, ids]) => redis.tallyObserve(
    keys.marker(run, shard, run.id), keys.seen(run, shard, run.id),
    keys.hash(run, shard, run.shardCount), deps.settings.runTtl, ...ids)))

  const misses: string[] = []
  let refused: number | undefined
  let shardIndex = 0
  for (const ids of byShard.values()) {
    const reply = replies[shardIndex++]!
    if (typeof reply === 'number') {
      refused = refused === MARKER_MISSING ? refused : reply
      continue
    }
    ids.forEach((id, i) => {
      const cached = reply[i]
      const item = items.get(id)!
      if (cached === null || cached === undefined) misses.push(id)
      else item.kind = cached === item.hash ? 'unchanged' : 'updated'
    })
  }
  if (refused !== undefined) throw await refusal(deps, run, refused === MARKER_MISSING)

  // 2. A cold cache must not turn into writes: misses are compared against Postgres.
  const cacheFill = new Map<string, string>()
  if (misses.length > 0) {
    const live = await deps.resources.liveHashes(run.tenant, run.scope, misses)
    for (const [id, stored] of live) {
      const item = items.get(id)!
      const storedHash = stored.toString('hex')
      item.kind = storedHash === item.hash ? 'unchanged' : 'updated'
      cacheFill.set(id, storedHash)
    }
  }

  // 3. One statement writes what is new or changed; the row guard skips what a twin already wrote.
  const changed = [...items.values()].filter((i) => i.kind !== 'unchanged')
  const written = await deps.resources.upsertChanged(run.tenant, run.scope, run.id,
    changed.map((i) => toWrite(i.resource, i.hash)))
  const counts = { created: 0, updated: 0, unchanged: 0 }
  for (const [id, item] of items) {
    if (item.kind !== 'unchanged' && written.has(id)) {
      counts[item.kind]++
      cacheFill.set(id, item.hash)
    } else {
      counts.unchanged++
    }
  }

  // 4. After commit: refresh the hash cache; record the batch and count it, in one step.
  const fills = groupByShard(cacheFill.keys(), run.shardCount)
  const record: BatchRecord = { received, ...counts, fingerprint: batch?.fingerprint ?? '' }
  const [, earlier] = await Promise.all([
    Promise.all([...fills].map(([shard, ids]) => redis.hset(
      keys.hash(run, shard, run.shardCount), ...ids.flatMap((id) => [id, cacheFill.get(id)!])))),
    redis.tallyBatchDone(keys.batches(run.id), keys.counters(run.id), batch?.batchId ?? '', JSON.stringify(record),
      counts.created, counts.updated, counts.unchanged, deps.settings.runTtl)
  ])
  if (batch !== undefined && earlier !== '') return replayOf(deps, run, batch.batchId, earlier, batch.fingerprint)
  return { runId: run.id, received, ...counts, duplicate: false }
}
