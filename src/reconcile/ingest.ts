/**
 * Ingesting one batch of a run. Unchanged resources cost one Redis round trip and no
 * database write: all shards' scripts go out together (ioredis pipelines them), misses of
 * the hash cache are read from Postgres in one query, and everything new or changed is
 * written by one upsert statement. A failure at any step leaves a state that a retry of
 * the same batch repairs.
 */
import { LRUCache } from 'lru-cache'
import type { RunRow } from '../db/runs-repository.js'
import type { ResourceWrite } from '../db/resources-repository.js'
import { TallyError } from '../errors.js'
import { contentHash } from './content-hash.js'
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

/**
 * Returns `ingestBatch`. A run's scope and shard count never change, so its row is cached for
 * good; whether it is still open is never cached: the shard markers answer that, atomically,
 * on every batch.
 */
export function createIngest (deps: ReconcileDeps) {
  const runCache: RunCache = new LRUCache<number, RunRow>({ max: 10_000 })
  return async function ingestBatch (runId: number, resources: ResourceIn[]): Promise<BatchResult> {
    try {
      return await ingest(deps, await runFor(deps, runCache, runId), resources)
    } catch (err) {
      if (err instanceof TallyError) runCache.delete(runId)
      throw err
    }
  }
}

async function ingest (deps: ReconcileDeps, run: RunRow, resources: ResourceIn[]): Promise<BatchResult> {
  const { redis, keys } = deps
  const items = new Map<string, Item>()
  for (const [id, resource] of dedupe(resources)) {
    items.set(id, { resource, hash: contentHash(resource), kind: 'created' })
  }

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

  // 4. After commit: refresh the hash cache and count the batch.
  const fills = groupByShard(cacheFill.keys(), run.shardCount)
  await Promise.all([
    ...[...fills].map(([shard, ids]) => redis.hset(
      keys.hash(run, shard, run.shardCount), ...ids.flatMap((id) => [id, cacheFill.get(id)!]))),
    redis.multi()
      .hincrby(keys.counters(run.id), 'created', counts.created)
      .hincrby(keys.counters(run.id), 'updated', counts.updated)
      .hincrby(keys.counters(run.id), 'unchanged', counts.unchanged)
      .hincrby(keys.counters(run.id), 'batches', 1)
      .expire(keys.counters(run.id), deps.settings.runTtl)
      .exec()
  ])
  return { runId: run.id, received: resources.length, ...counts, duplicate: false }
}
