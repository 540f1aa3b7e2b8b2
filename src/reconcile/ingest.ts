/**
 * Ingesting one batch of a run. Unchanged resources cost Redis round trips and no database
 * write: the cache is read for every shard at once (ioredis pipelines), its misses are read
 * from Postgres in one query, and everything new or changed is written by one statement.
 *
 * The order is what makes every guarantee hold:
 * 1. `tallyBegin` registers the batch in flight (and claims its batch id), unless the run has
 *    stopped taking batches: a completion waits for every registered batch before it reads.
 * 2. The hash cache is read, and every id it does not find unchanged is claimed by the batch in
 *    the same script: until this batch's fill, the id is a miss for everyone (scripts.ts readShard).
 *    Misses and wrong entries are settled against Postgres.
 * 3. The write: only rows whose content differs, and only while the run is open (see writeChanged).
 * 4. `tallyApply` adds the ids to the run's seen sets and counts them, each id once, in the same
 *    script per shard: an id joins a set only once its content is in Postgres, and the counts
 *    always agree with the sets. The script adds the batch's token to the shard's acks set, and
 *    Postgres witnesses it (run_acks) before the batch is answered. The same script gives the
 *    fields the batch still claims what Postgres holds (the cache fill: the shard's cache keys
 *    share its hash tag).
 * 5. The batch is recorded and unregistered.
 * A batch that fails anywhere is unregistered and leaves nothing a completion counts as applied;
 * rows it wrote before failing carry the run's id, and the run's completion finds them by it.
 * One that dies between its write and its fill leaves claims in the cache, never a stale value.
 */
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Cluster } from 'ioredis'
import { LRUCache } from 'lru-cache'
import type { RunRow } from '../db/runs-repository.js'
import type { ResourceWrite, StoredVersion } from '../db/resources-repository.js'
import { TallyError } from '../errors.js'
import { contentOf, digest } from './content-hash.js'
import { cacheLayoutOf, cacheSlot, cacheValue, lineValue, type CacheLayout, type CacheSlot } from './cache.js'
import { leadingId } from './lines.js'
import { groupBy, groupPlaced, idDigest, place, type Placed, type SetLayout } from './members.js'
import { BATCH_STALE_MS } from './run-keys.js'
import { checkAccess, requireLayout, requireRun } from './runs.js'
import type { Access } from '../auth/keys.js'
import { MARKER_MISSING } from './scripts.js'
import type { BatchResult, BatchStep, ReconcileDeps, ResourceIn } from './types.js'

type Kind = 'created' | 'updated' | 'unchanged'

interface Item {
  id: string
  /** The NDJSON line it came as, and its place in the request (for errors). */
  line: Buffer | undefined
  index: number
  /**
   * The canonical JSON of its content (what is written), and its hash, 16 hex digits; for an
   * NDJSON line, '' until it is parsed (a line the cache recognises never is).
   */
  content: string
  hash: string
  /** What a batch id's fingerprint takes of it: the content hash, or the line's. */
  print: string
  /** XXH64 of the id (resources.id_digest), and where its member goes in the run's sets. */
  digest: bigint
  placed: Placed
  /**
   * Where the cache keeps the id, and what it holds for the id if its content is unchanged: the
   * line's value for a line whose id leads it (cache.ts), else the content's. `also`: a second
   * value that means unchanged, the content's for such a line once parsed ('' for none).
   */
  slot: CacheSlot
  value: string
  also: string
  /** What the cache held for the id when the batch read it; '' for nothing. */
  cached: string
  /** Relative to the inventory before this run: what the run's stats count this id as. */
  kind: Kind
  /** Its content still has to be written. */
  pending: boolean
  /** The hash Postgres holds for it, as far as this batch knows, to put in the cache; '' for none. */
  fill: string
}

/**
 * A run as ingestion needs it: the row (scope and shard count never change), the layout of its
 * sets and of the scope's cache, and the cache generation (only a completion of the scope changes
 * those, and none but this run's can happen while it takes batches).
 */
interface RunContext {
  run: RunRow
  layout: SetLayout
  cache: CacheLayout
  generation: number
  /**
   * The scope held no live row when this instance first saw the run (a first load): cache
   * misses go straight to the write instead of being looked up first. Only a speed-up: the
   * write leaves equal rows alone and the read-back settles them (this run's own earlier
   * batches, an aborted run's rows).
   */
  loading: boolean
}

type RunCache = LRUCache<number, RunContext>

const POLL_MS = 25
/** How long a batch waits for a run that stopped taking batches but is still open (an abort, or a refused completion reopening it). */
const CLOSED_WAIT_MS = 2000
/** Writes of one batch retried after another writer changed the same rows in between. */
const WRITE_ATTEMPTS = 3

async function runFor (deps: ReconcileDeps, runCache: RunCache, runId: number, access: Access | undefined): Promise<RunContext> {
  const cached = runCache.get(runId)
  if (cached !== undefined) {
    checkAccess(cached.run, runId, access)
    return cached
  }
  const run = await requireRun(deps, runId, access)
  if (run.status !== 'open') throw new TallyError('run_not_open', `Run ${runId} is ${run.status}`)
  const layout = requireLayout(run)
  const [scope, anyLive] = await Promise.all([deps.runs.getScope(run.tenant, run.scope), deps.resources.anyLive(run.tenant, run.scope)])
  const context = {
    run,
    layout,
    cache: cacheLayoutOf(scope, run, layout.bits, deps.settings.CACHE_BUCKET_SIZE),
    generation: scope?.cacheGeneration ?? 0,
    loading: !anyLive
  }
  runCache.set(runId, context)
  return context
}

/** Why the run refused a batch, told from the run's row. */
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

/** What a run's claims on cache fields begin with (scripts.ts readShard); alone, a claim nobody may fill. */
const runClaim = (runId: number) => `c${runId}:`
/** A batch's claim: its run's, and 64 bits of its token. */
const claimOf = (runId: number, token: string) => `${runClaim(runId)}${token.replaceAll('-', '').slice(0, 16)}`

const toWrite = (item: Item): ResourceWrite => ({ id: item.id, content: item.content, hash: item.hash, digest: item.digest.toString() })

/** What a batch id's record holds: the first copy's result, and a fingerprint of its content. */
type BatchRecord = Omit<BatchResult, 'runId' | 'duplicate'> & { fingerprint: string }

/** Ids and content hashes, in order: two copies of a batch agree on it, a different batch does not. */
function fingerprintOf (items: Map<string, Item>): string {
  let text = ''
  for (const [id, item] of items) text += `${id}\u0000${item.print}\n`
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

function itemOf (id: string, resource: ResourceIn | undefined, line: Buffer | undefined, index: number, { layout, cache }: RunContext): Item {
  const digest = idDigest(id)
  const item: Item = {
    id,
    line,
    index,
    content: '',
    hash: '',
    print: '',
    digest,
    placed: place(digest, layout),
    slot: cacheSlot(id, digest, cache),
    value: '',
    also: '',
    cached: '',
    kind: 'created',
    pending: true,
    fill: ''
  }
  if (line !== undefined) {
    item.value = lineValue(digest, line)
    item.print = item.value
  }
  if (resource !== undefined) takeContent(item, resource)
  return item
}

/** Fills in what the resource's content gives: canonical JSON, hash, and its cache value. */
function takeContent (item: Item, resource: ResourceIn): void {
  const { canonical, hash } = contentOf(resource)
  item.content = canonical
  item.hash = hash
  const value = cacheValue(item.digest, hash)
  if (item.line === undefined) {
    item.value = value
    item.print = hash
  } else {
    item.also = value
  }
}

function itemsOf (resources: ResourceIn[], context: RunContext): Map<string, Item> {
  const items = new Map<string, Item>()
  for (const [id, resource] of dedupe(resources)) items.set(id, itemOf(id, resource, undefined, 0, context))
  return items
}

/**
 * NDJSON lines in a lot: parses the lines whose id does not lead them (they cannot be
 * recognised), not the others. The last line of an id wins.
 */
function itemsOfLines ({ lines, first, parse }: LineBatch, context: RunContext): Map<string, Item> {
  const items = new Map<string, Item>()
  lines.forEach((line, i) => {
    const id = leadingId(line)
    const resource = id === undefined ? parse(line, first + i) : undefined
    const item = resource === undefined ? itemOf(id!, undefined, line, first + i, context) : itemOf(resource.id, resource, undefined, first + i, context)
    items.delete(item.id)
    items.set(item.id, item)
  })
  return items
}

/** Parses and checks the lines the cache did not recognise; a line whose id is not the one leading it is not recognised later either. */
function parseRest (items: Map<string, Item>, parse: LineBatch['parse']): void {
  for (const item of items.values()) {
    if (item.hash !== '' || item.cached === item.value) continue
    const resource = parse(item.line!, item.index)
    if (resource.id !== item.id) {
      throw new TallyError('validation_failed', `line ${item.index + 1}: its id ${JSON.stringify(resource.id)} is not the one it begins with (a key given twice?)`)
    }
    takeContent(item, resource)
  }
}

/**
 * A lot of NDJSON lines: the lines, the index of the first in its request, and how to parse and
 * check one (the HTTP layer's rules; throws a 4xx TallyError).
 */
export interface LineBatch {
  lines: Buffer[]
  first: number
  parse: (line: Buffer, index: number) => ResourceIn
}

/**
 * Returns `ingestBatch` and `ingestLines`. A run's scope and shard count never change, so its row is cached for
 * good; whether it still takes batches is never cached: Redis answers that on every batch.
 *
 * With a batch id, a batch applies and counts once: the first copy claims the id, a copy that
 * arrives meanwhile waits for its result, and later copies get that result with
 * `duplicate: true`. A copy whose claim holder died takes the claim over after BATCH_STALE_MS;
 * should both finish, each id still counts once (the seen sets say so), and the batch is
 * recorded by whichever finishes first.
 */
export function createIngest (deps: ReconcileDeps) {
  const runCache: RunCache = new LRUCache<number, RunContext>({ max: 10_000 })
  async function ingest (runId: number, received: number, itemsFor: (context: RunContext) => Map<string, Item>,
    parse: LineBatch['parse'] | undefined, batchId: string | undefined, access: Access | undefined): Promise<BatchResult> {
    try {
      const context = await runFor(deps, runCache, runId, access)
      const items = itemsFor(context)
      const batch = { id: batchId ?? '', fingerprint: batchId === undefined ? '' : fingerprintOf(items), token: randomUUID() }
      const replayed = await timed(deps, 'begin', begin(deps, context.run, batch))
      if (replayed !== undefined) return replayed
      try {
        return await apply(deps, context, items, received, batch, parse)
      } catch (err) {
        await deps.redis.tallyRelease(deps.keys.batches(runId), deps.keys.inflight(runId), batch.id, batch.token).catch(() => {})
        throw err
      }
    } catch (err) {
      if (err instanceof TallyError) runCache.delete(runId)
      throw err
    }
  }
  return {
    ingestBatch: (runId: number, resources: ResourceIn[], batchId?: string, access?: Access) =>
      ingest(runId, resources.length, (context) => itemsOf(resources, context), undefined, batchId, access),
    ingestLines: (runId: number, lot: LineBatch, batchId?: string, access?: Access) =>
      ingest(runId, lot.lines.length, (context) => itemsOfLines(lot, context), lot.parse, batchId, access)
  }
}

interface BatchRef { id: string, fingerprint: string, token: string }

/** What a script that takes one or more scope-shards (tallyRead, tallyApply) is given for some of them. */
interface ShardCall { shards: number[], keys: string[], args: Array<string | number> }

/**
 * The calls that make a batch's per-shard script work: one per shard on a Cluster (a script
 * there touches one slot), one for all of them on a single Redis.
 */
function scriptCalls (redis: ReconcileDeps['redis'], parts: ShardCall[]): ShardCall[] {
  if (redis instanceof Cluster || parts.length <= 1) return parts
  return [{ shards: parts.flatMap((p) => p.shards), keys: parts.flatMap((p) => p.keys), args: parts.flatMap((p) => p.args) }]
}

/** Waits for a step of a batch and tells its duration (deps.onBatchStep), if it succeeds. */
async function timed<T> (deps: ReconcileDeps, step: BatchStep, work: Promise<T>): Promise<T> {
  const started = performance.now()
  const result = await work
  deps.onBatchStep?.(step, (performance.now() - started) / 1000)
  return result
}

/** Registers the batch in flight; or answers it from an earlier copy's result; or refuses it. */
async function begin (deps: ReconcileDeps, run: RunRow, batch: BatchRef): Promise<BatchResult | undefined> {
  const { redis, keys } = deps
  const deadline = Date.now() + CLOSED_WAIT_MS
  for (;;) {
    const [state, stored] = await redis.tallyBegin(keys.counters(run.id), keys.batches(run.id), keys.inflight(run.id),
      batch.id, batch.token, BATCH_STALE_MS, deps.settings.RUN_TTL)
    if (state === 'begun') return undefined
    if (state === 'done') return replayOf(deps, run, batch.id, stored, batch.fingerprint)
    if (state === 'missing') throw await refusal(deps, run, true)
    if (state === 'closed') {
      const current = await requireRun(deps, run.id)
      if (current.status !== 'open' || Date.now() > deadline) {
        throw new TallyError('run_not_open', `Run ${run.id} is ${current.status === 'open' ? 'closing' : current.status}`)
      }
    }
    await sleep(POLL_MS)
  }
}

/**
 * Settles an item against what Postgres holds for it. Equal content is unchanged unless this
 * run itself wrote it already (another batch, or an earlier attempt of this one): the run's
 * stats count what the run changed, whichever of its batches wrote it.
 */
function settle (item: Item, stored: StoredVersion | undefined, runId: number): void {
  if (stored === undefined) { // absent, or soft-deleted: to be inserted or revived
    item.kind = 'created'
    item.pending = true
    item.fill = ''
    return
  }
  const storedHash = stored.contentHash.toString('hex')
  item.fill = storedHash
  if (storedHash !== item.hash && stored.changedRunId <= runId) {
    item.kind = 'updated'
    item.pending = true
    return
  }
  item.pending = false
  item.kind = stored.changedRunId !== runId ? 'unchanged' : stored.firstSeenRunId === runId ? 'created' : 'updated'
}

/**
 * Reads what the cache holds for every id, and the epoch of each cache shard; throws if a marker
 * of the run is not `open`. Every id the cache does not find unchanged is left claimed by the
 * batch (`claim`, scripts.ts readShard): a miss for everyone until this batch's fill. When the
 * run's shards are the cache's (the usual case), marker and cache share a slot and tallyRead
 * reads both (once per shard on a Cluster, once for all on a single Redis: scriptCalls);
 * otherwise they are read apart.
 */
async function readCache (deps: ReconcileDeps, context: RunContext, byCache: Map<number, Item[]>, claim: string) {
  const { redis, keys } = deps
  const { run, cache, generation } = context
  const epochs = new Map<number, string>()
  const markers: Array<number | string | null> = []
  const pairs = (group: Item[]) => {
    const out: string[] = []
    for (const item of group) out.push(item.slot.field, item.value)
    return out
  }
  const take = (shard: number, group: Item[], [epoch, ...values]: Array<string | null>) => {
    epochs.set(shard, epoch ?? '0')
    group.forEach((item, i) => { item.cached = values[i] ?? '' })
  }
  if (cache.shards === run.shardCount) {
    const parts = [...byCache].map(([shard, group]) => ({
      shards: [shard],
      keys: [keys.marker(run, shard, run.id), keys.cache(run, shard), keys.legacyCache(run, shard)],
      args: [group.length, ...pairs(group)]
    }))
    const head = [generation, cache.buckets, cache.bits, claim, runClaim(run.id)]
    await Promise.all(scriptCalls(redis, parts).map(async (call) => {
      const reply = await redis.tallyRead(call.keys.length, ...call.keys, ...head, ...call.args)
      if (typeof reply === 'number') {
        markers.push(reply)
        return
      }
      let at = 0
      for (const shard of call.shards) {
        const group = byCache.get(shard)!
        take(shard, group, reply.slice(at, at + 1 + group.length))
        at += 1 + group.length
      }
    }))
  } else {
    const runShards = [...new Set([...byCache.values()].flat().map((i) => i.placed.shard))]
    await Promise.all([
      ...runShards.map(async (shard) => { markers.push(await redis.get(keys.marker(run, shard, run.id))) }),
      ...[...byCache].map(async ([shard, group]) => take(shard, group,
        await redis.tallyCacheRead(keys.cache(run, shard), keys.legacyCache(run, shard), generation, cache.buckets, cache.bits,
          claim, runClaim(run.id), ...pairs(group))))
    ])
  }
  const refused = markers.filter((m) => m !== 'open')
  if (refused.length > 0) throw await refusal(deps, run, refused.some((m) => m === null || m === MARKER_MISSING))
  return epochs
}

async function apply (deps: ReconcileDeps, context: RunContext, items: Map<string, Item>, received: number,
  batch: BatchRef, parse: LineBatch['parse'] | undefined): Promise<BatchResult> {
  const { redis, keys } = deps
  const { run } = context

  // 2. The markers (a run whose state is lost writes nothing) and the cache, every shard at once.
  const byCache = groupBy(items.values(), (i) => i.slot.shard)
  const claim = claimOf(run.id, batch.token)
  const epochs = await timed(deps, 'read', readCache(deps, context, byCache, claim))
  // NDJSON: what the cache recognised is unchanged, unparsed; the rest is parsed and checked now.
  if (parse !== undefined) parseRest(items, parse)
  for (const item of items.values()) {
    if (item.cached === item.value || (item.also !== '' && item.cached === item.also)) {
      item.kind = 'unchanged'
      item.pending = false
      // Cached as its content, not yet as its line: the line's value goes in, so the next copy is recognised.
      if (item.cached === item.also) item.fill = item.hash
    } else if (item.cached !== '') {
      item.kind = 'updated' // or the entry is wrong: the write finds out, and the read-back repairs it
    }
  }
  const writing = performance.now()
  // A cold cache must not turn into writes: misses are compared against Postgres (but in a
  // first load there is nothing to compare against).
  const misses = [...items.values()].filter((i) => i.cached === '')
  if (misses.length > 0 && !context.loading) {
    const stored = await deps.resources.liveVersions(run.tenant, run.scope, misses.map((i) => i.id))
    for (const item of misses) settle(item, stored.get(item.id), run.id)
  }

  // 3. Write what differs. What the statement neither inserted nor updated was equal after all
  // (a wrong cache entry, or a twin batch wrote it first): read back, and written again only if
  // another writer's content landed in between.
  for (let attempt = 1; ; attempt++) {
    const pending = [...items.values()].filter((i) => i.pending)
    if (pending.length === 0) break
    const written = await deps.resources.writeChanged(run.tenant, run.scope, run.id, batch.token, pending.map(toWrite))
    if (!written.runOpen) throw await refusal(deps, run, false)
    const left: Item[] = []
    for (const item of pending) {
      const id = item.id
      if (written.inserted.has(id) || written.updated.has(id)) {
        item.kind = written.inserted.has(id) || written.revived.has(id) ? 'created' : 'updated'
        item.pending = false
        item.fill = item.hash
      } else {
        left.push(item)
      }
    }
    if (left.length === 0) break
    const stored = await deps.resources.liveVersions(run.tenant, run.scope, left.map((i) => i.id))
    for (const item of left) settle(item, stored.get(item.id), run.id)
    if (attempt === WRITE_ATTEMPTS) {
      // Concurrent batches of this run keep writing other content for these ids: the last one wins.
      for (const item of left.filter((i) => i.pending)) Object.assign(item, { pending: false, kind: 'updated', fill: '' })
    }
  }

  deps.onBatchStep?.('postgres', (performance.now() - writing) / 1000)

  // 4. Into the run's sets and counts, and the cache learns what Postgres holds: tallyApply for
  // each shard-slot (scriptCalls), each set's members created first, then updated, then unchanged.
  // The fills: every field the batch still claims (each id it did not find unchanged in the
  // cache); a claim it has nothing to fill with is given up (its writes are done).
  const bySet = groupPlaced(items.values(), (item) => item.placed)
  const fillsOf = new Map<number, string[]>()
  for (const [shard, group] of byCache) {
    const fills: string[] = []
    for (const i of group) {
      if (i.cached !== i.value) fills.push(i.slot.field, i.fill === '' ? '' : i.fill === i.hash ? i.value : cacheValue(i.digest, i.fill))
    }
    if (fills.length > 0) fillsOf.set(shard, fills)
  }
  const parts = [...new Set([...bySet.keys(), ...fillsOf.keys()])].map((shard) => {
    const sets = bySet.get(shard) ?? new Map<number, Map<string, Item[]>>()
    const setKeys = [...sets.keys()].map((set) => keys.seen(run, shard, run.id, set))
    const fills = fillsOf.get(shard) ?? []
    const args: Array<string | number> = [setKeys.length, epochs.get(shard) ?? '', fills.length, ...fills]
    for (const members of sets.values()) {
      const k: Record<Kind, string[]> = { created: [], updated: [], unchanged: [] }
      for (const [member, same] of members) for (const item of same) k[item.kind].push(member)
      args.push(k.created.length, k.updated.length, k.unchanged.length, ...k.created, ...k.updated, ...k.unchanged)
    }
    return {
      shards: [shard],
      keys: [keys.marker(run, shard, run.id), keys.counts(run, shard, run.id), keys.acks(run, shard, run.id), keys.cache(run, shard), ...setKeys],
      args
    }
  })
  const head = [deps.settings.RUN_TTL, batch.token, 2 * deps.settings.CACHE_BUCKET_SIZE, claim]
  const replies = await timed(deps, 'apply', Promise.all(scriptCalls(redis, parts).map((call) =>
    redis.tallyApply(call.keys.length, ...call.keys, ...head, ...call.args))))
  const refused = replies.filter((r) => r !== 1)
  if (refused.length > 0) throw await refusal(deps, run, refused.includes(MARKER_MISSING))
  // The witness, outside Redis, before the batch is acknowledged: should Redis lose these
  // writes (a failover, a restart from a file missing its last second), the completion finds
  // the token missing from a shard's acks set and deletes nothing.
  await timed(deps, 'witness', deps.runs.recordAck(run.id, batch.token, [...bySet.keys()]))

  const counts = { created: 0, updated: 0, unchanged: 0 }
  for (const item of items.values()) counts[item.kind]++
  const record: BatchRecord = { received, ...counts, fingerprint: batch.fingerprint }
  const [outcome, earlier] = await timed(deps, 'done', redis.tallyDone(keys.batches(run.id), keys.counters(run.id), keys.inflight(run.id),
    batch.id, batch.token, JSON.stringify(record), deps.settings.RUN_TTL))
  if (outcome === 'revoked') {
    throw new TallyError('run_not_open', `Run ${run.id} stopped waiting for this batch (in flight for over ${BATCH_STALE_MS / 1000} s); it was not counted as a batch`)
  }
  if (outcome === 'replay') return replayOf(deps, run, batch.id, earlier, batch.fingerprint)
  return { runId: run.id, received, ...counts, duplicate: false }
}
