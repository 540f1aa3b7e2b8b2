/**
 * Model-based: random sequences of open (at a random shard count) / batch (JSON or NDJSON) / replayed batch /
 * batch that fails midway / batch racing a completion / complete (with and without skipped
 * partitions) / abort; a second tenant scanning a scope of the same name, and trying every
 * route on the first tenant's run; and faults: Redis flushed or restarted, the hash cache corrupted or
 * evicted, the app restarted, over a small id space with random churn.
 *
 * Every expectation comes from the model, never from the system under test: after every step
 * the live inventory in Postgres, and the change log, must equal the model's; every completed or aborted run's stats
 * must equal the model's count (each id once, as the run first found it); a batch's answer must
 * agree with the model; and a resource the model calls unchanged keeps its row's xmin, xmax
 * and ctid. Fixed seed in CI; TALLY_MODEL_RUNS and TALLY_MODEL_SEED run more or other sequences,
 * and TALLY_MODEL_CLUSTER=1 runs them against a private Redis Cluster of 3 primaries.
 *
 * The seen sets hold digests of ids, not ids. The sequences run twice: with 64-bit digests, and
 * with 3-bit ones (ID_DIGEST_BITS), where the 24 ids share 8 digests and collide all the time.
 * The model knows the rule (reconcile/members.ts): the run's sets and stats count digests, and
 * an unseen resource whose digest the run saw is kept. So a collision must only ever keep a
 * resource, never delete a live one or hide a change. SEEN_SET_SIZE 2 makes the scopes' runs
 * use 1 to 8 sets per shard, so completions diff across set counts; CACHE_BUCKET_SIZE 1 makes
 * the cache grow its buckets as scopes grow, and the 3-bit digests make cache entries share fields.
 */
import t from 'tap'
import fc from 'fast-check'
import xxhash from 'xxhash-wasm'
import pg from 'pg'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildApp } from '../src/app.js'
import { generateKey } from '../src/auth/keys.js'
import { loadConfig } from '../src/config.js'
import { testEnv } from './helper.js'
import { startRedis } from './redis-server.js'
import { startCluster } from '../scripts/redis-cluster.js'
import { primaries } from '../src/plugins/redis.js'

const RUNS = Number(process.env.TALLY_MODEL_RUNS ?? 100)
const SEED = Number(process.env.TALLY_MODEL_SEED ?? 20261123)
const CLUSTER = process.env.TALLY_MODEL_CLUSTER === '1'
const TINY_DIGEST_BITS = 3
const { h64 } = await xxhash()
/** The id's digest, cut to `bits` as a member is: ids with equal digests are one to the sets. */
const digestOf = (id: string, bits: number) => (BigInt.asUintN(64, h64(id)) >> BigInt(64 - bits)).toString()
const ID_SPACE = 24
const idOf = (n: number) => `arn:aws:model:::r-${String(n).padStart(2, '0')}`
// The type is fixed per id (partitions hold still); two types, so `skip` can spare one.
const typeOf = (n: number) => (n % 2 === 0 ? 'even' : 'odd')

type App = Awaited<ReturnType<typeof buildApp>>
interface Reply { status: number, body: any }
interface Pick { n: number, v: number }
type Kind = 'created' | 'updated' | 'unchanged'
interface Stats { seen: number, created: number, updated: number, unchanged: number, deleted: number, batches: number, skipped: number }

interface Model {
  /** id -> content version of every live resource. */
  live: Map<string, number>
  run: {
    id: number
    /** Each id the run has seen, as it first found it. */
    seen: Map<string, Kind>
    /** Each digest the run's sets hold, counted as the first batch to add it found it (its first kind: created, updated, unchanged). */
    digests: Map<string, Kind>
    /**
     * Each id the run wrote, as the row then says: created (first seen by this run) or updated.
     * A batch that wrote and died before its ids joined the sets leaves the run such rows: sent
     * again unchanged, they count as what the run did to them, not as unchanged.
     */
    wrote: Map<string, 'created' | 'updated'>
    batches: number
    last?: { batchId: string, picks: Pick[], ndjson: boolean }
  } | null
  /** The open run's Redis state is gone: it can only be aborted. */
  lost: boolean
  batches: number
  /** id -> content version of the other tenant's inventory in the scope of the same name. */
  other: Map<string, number>
  /** Bits of the digests the sets hold. */
  bits: number
  /** Ids soft-deleted and not reported since: reported again, they are revived. */
  gone: Set<string>
  /** The change log tenant default's runs of the scope must have written: `run kind id`, one per write. */
  changes: string[]
}

interface Real {
  app: App
  env: Record<string, string>
  redis: RedisUnderTest
  db: pg.Client
  scope: string
  /** Tenant default's admin key. */
  key: string
  /** An admin key of tenant `other`, which scans a scope of the same name. */
  otherKey: string
  /** Faults injected and outcomes seen, for the closing report. */
  tally: Record<string, number>
}

const count = (r: Real, what: string) => { r.tally[what] = (r.tally[what] ?? 0) + 1 }

async function call (r: Real, method: 'GET' | 'POST', url: string, payload?: object, key = r.key): Promise<Reply> {
  for (const deadline = Date.now() + 60_000; ; await sleep(20)) {
    const res = await r.app.inject({ method, url, headers: { authorization: `Bearer ${key}` }, ...(payload === undefined ? {} : { payload }) })
    if (res.statusCode !== 503 || Date.now() > deadline) return { status: res.statusCode, body: res.json() }
  }
}

/** The resources of a batch; a poisoned one makes Postgres refuse the write (see the trigger below). */
const body = (picks: Pick[], poison = false) => picks.map(({ n, v }, i) =>
  ({ id: idOf(n), type: typeOf(n), attributes: poison && i === picks.length - 1 ? { v, poison: true } : { v } }))

/** The batch as the server keeps it: one entry per id, the last one winning. */
const distinct = (picks: Pick[]) => [...new Map(picks.map((p) => [idOf(p.n), p.v]))]

function expect (cond: boolean, what: string, res: Reply) {
  if (!cond) throw new Error(`${what}: got ${res.status} ${JSON.stringify(res.body)}`)
}

function expectStats (actual: Stats, expected: Stats, what: string) {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new Error(`${what}: stats ${JSON.stringify(actual)} but the model says ${JSON.stringify(expected)}`)
  }
}

/** The model's stats of the open run so far: what its sets count, digests. */
function runStats (m: Model, extra: Partial<Stats> = {}): Stats {
  const kinds = [...m.run!.digests.values()]
  const n = (k: Kind) => kinds.filter((x) => x === k).length
  return { seen: kinds.length, created: n('created'), updated: n('updated'), unchanged: n('unchanged'), deleted: 0, batches: m.run!.batches, skipped: 0, ...extra }
}

async function rowVersions (r: Real, ids: string[]): Promise<Map<string, string>> {
  const { rows } = await r.db.query(
    "select id, xmin::text || '/' || xmax::text || '/' || ctid::text as v from resources where tenant = 'default' and scope = $1 and id = any($2)", [r.scope, ids])
  return new Map(rows.map((row: { id: string, v: string }) => [row.id, row.v]))
}

async function assertInventory (m: Model, r: Real, step: string) {
  for (const [tenant, live] of [['default', m.live], ['other', m.other]] as const) {
    const { rows } = await r.db.query(
      "select id, (attributes->>'v')::int as v from resources where tenant = $1 and scope = $2 and deleted_at is null order by id", [tenant, r.scope])
    const actual = Object.fromEntries(rows.map((row: { id: string, v: number }) => [row.id, row.v]))
    const expected = Object.fromEntries([...live].sort(([a], [b]) => a < b ? -1 : 1))
    if (JSON.stringify(actual) !== JSON.stringify(expected)) {
      throw new Error(`after ${step}: ${tenant}'s inventory ${JSON.stringify(actual)} but the model says ${JSON.stringify(expected)}`)
    }
  }
  // The change log: one row per write that committed, none for a failed, refused or replayed batch.
  const { rows } = await r.db.query(`select c.run_id || ' ' || c.kind || ' ' || c.resource_id as change from changes c
    join runs on runs.id = c.run_id where runs.tenant = 'default' and runs.scope = $1`, [r.scope])
  const logged = rows.map((row: { change: string }) => row.change).sort()
  const expected = [...m.changes].sort()
  if (JSON.stringify(logged) !== JSON.stringify(expected)) {
    throw new Error(`after ${step}: the change log ${JSON.stringify(logged)} but the model says ${JSON.stringify(expected)}`)
  }
}

const KIND_ORDER: Kind[] = ['created', 'updated', 'unchanged']
/** A batch adds a set's members created first, then updated, then unchanged: a digest new to the set counts as the first. */
const firstKind = (a: Kind | undefined, b: Kind): Kind => a === undefined || KIND_ORDER.indexOf(b) < KIND_ORDER.indexOf(a) ? b : a

/**
 * Applies a batch to the model; returns what its answer must say, when the model can tell. An
 * acknowledged batch did everything; one that died (DyingBatch) did its write, and its sets and
 * counts only if it died after them, and it is not counted as a batch.
 */
function applyBatch (m: Model, picks: Pick[], done: { sets: boolean, acknowledged: boolean } = { sets: true, acknowledged: true }) {
  const run = m.run!
  const entries = distinct(picks)
  // Ids this run already wrote may be answered from the cache or from Postgres: the answer is
  // then the server's to choose, and only the run's stats are checked.
  const repeat = entries.some(([id]) => run.seen.has(id))
  const answer = { created: 0, updated: 0, unchanged: 0 }
  const added = new Map<string, Kind>()
  for (const [id, v] of entries) {
    const now = m.live.get(id)
    let kind: Kind = now === undefined ? 'created' : now === v ? 'unchanged' : 'updated'
    if (kind !== 'unchanged') {
      const revived = kind === 'created' && m.gone.delete(id)
      m.changes.push(`${run.id} ${revived ? 'revived' : kind} ${id}`)
      // A revived row was first seen by an earlier run: to this run, an update.
      if (!run.wrote.has(id)) run.wrote.set(id, revived ? 'updated' : kind as 'created' | 'updated')
      m.live.set(id, v)
    } else {
      kind = run.wrote.get(id) ?? 'unchanged'
    }
    answer[kind]++
    if (!done.sets) continue
    if (!run.seen.has(id)) run.seen.set(id, kind)
    const digest = digestOf(id, m.bits)
    if (!run.digests.has(digest)) added.set(digest, firstKind(added.get(digest), kind))
  }
  for (const [digest, kind] of added) run.digests.set(digest, kind)
  if (done.acknowledged) run.batches++
  return repeat ? undefined : answer
}

/** A batch as NDJSON, one resource a line (the id first, so an identical line is recognised unparsed). */
async function sendLines (r: Real, runId: number, picks: Pick[], batchId: string): Promise<Reply> {
  const payload = body(picks).map((b) => JSON.stringify(b)).join('\n')
  for (const deadline = Date.now() + 60_000; ; await sleep(20)) {
    const res = await r.app.inject({
      method: 'POST',
      url: `/runs/${runId}/resources`,
      headers: { authorization: `Bearer ${r.key}`, 'content-type': 'application/x-ndjson', 'idempotency-key': batchId },
      payload
    })
    if (res.statusCode !== 503 || Date.now() > deadline) return { status: res.statusCode, body: res.json() }
  }
}

/** Sends a batch (as JSON, or NDJSON) and checks what it must: the answer, and that no unchanged row was touched. */
async function sendBatch (m: Model, r: Real, picks: Pick[], batchId: string, ndjson = false): Promise<Reply> {
  const unchanged = distinct(picks).filter(([id, v]) => m.live.get(id) === v).map(([id]) => id)
  const before = await rowVersions(r, unchanged)
  const res = ndjson
    ? await sendLines(r, m.run!.id, picks, batchId)
    : await call(r, 'POST', `/runs/${m.run!.id}/resources`, { batchId, resources: body(picks) })
  const after = await rowVersions(r, unchanged)
  for (const id of unchanged) {
    if (before.get(id) !== after.get(id)) throw new Error(`batch ${batchId}: unchanged ${id} was written (${before.get(id)} -> ${after.get(id)})`)
  }
  return res
}

class Open implements fc.AsyncCommand<Model, Real> {
  constructor (readonly shardCount: number | undefined) {}
  check = () => true
  async run (m: Model, r: Real) {
    const res = await call(r, 'POST', '/runs', { scope: r.scope, ...(this.shardCount === undefined ? {} : { shardCount: this.shardCount }) })
    if (m.run !== null) return expect(res.status === 409 && res.body.code === 'scope_has_open_run', 'open while a run is open', res)
    expect(res.status === 201, 'open', res)
    m.run = { id: res.body.id, seen: new Map(), digests: new Map(), wrote: new Map(), batches: 0 }
    m.lost = false
  }

  toString = () => `open(${this.shardCount ?? 'default'})`
}

class Batch implements fc.AsyncCommand<Model, Real> {
  constructor (readonly picks: Pick[], readonly ndjson = false) {}
  check = (m: Readonly<Model>) => m.run !== null
  async run (m: Model, r: Real) {
    const batchId = `b${++m.batches}`
    const res = await sendBatch(m, r, this.picks, batchId, this.ndjson)
    if (m.lost) {
      count(r, 'batches refused: run_state_lost')
      return expect(res.status === 409 && res.body.code === 'run_state_lost', 'batch after lost state', res)
    }
    expect(res.status === 200 && res.body.duplicate === false && res.body.received === this.picks.length, 'batch', res)
    count(r, 'batches applied')
    const answer = applyBatch(m, this.picks)
    if (answer !== undefined) expect(res.body.created === answer.created && res.body.updated === answer.updated && res.body.unchanged === answer.unchanged, `batch answer (model: ${JSON.stringify(answer)})`, res)
    m.run!.last = { batchId, picks: this.picks, ndjson: this.ndjson }
    const live = await call(r, 'GET', `/runs/${m.run!.id}`)
    expectStats(live.body.stats, runStats(m), 'stats of the open run')
  }

  toString = () => `batch${this.ndjson ? '-ndjson' : ''}(${this.picks.map((p) => `${p.n}v${p.v}`).join(' ')})`
}

/**
 * A batch of everything live, as it is: what most of a real rescan looks like. Rows then stay
 * unchanged across completions, so a later run's completion can find them vanished only through
 * the diff of the baseline's sets (rows written since the baseline are found by their run id).
 */
class Rescan implements fc.AsyncCommand<Model, Real> {
  constructor (readonly ndjson = false) {}
  check = (m: Readonly<Model>) => m.run !== null && m.live.size > 0
  async run (m: Model, r: Real) {
    await new Batch([...m.live].map(([id, v]) => ({ n: Number(id.slice(-2)), v })), this.ndjson).run(m, r)
  }

  toString = () => `rescan${this.ndjson ? '-ndjson' : ''}`
}

/** A batch whose last resource Postgres refuses: it fails midway (after the cache read) and must leave no trace. */
class FailingBatch implements fc.AsyncCommand<Model, Real> {
  constructor (readonly picks: Pick[]) {}
  check = (m: Readonly<Model>) => m.run !== null && !m.lost
  async run (m: Model, r: Real) {
    const res = await call(r, 'POST', `/runs/${m.run!.id}/resources`, { batchId: `b${++m.batches}`, resources: body(this.picks, true) })
    expect(res.status === 500 && res.body.code === 'internal', 'batch failing in Postgres', res)
    count(r, 'batches failed midway')
    const live = await call(r, 'GET', `/runs/${m.run!.id}`)
    expectStats(live.body.stats, runStats(m), 'stats after a failed batch')
  }

  toString = () => `failing-batch(${this.picks.map((p) => `${p.n}v${p.v}`).join(' ')})`
}

/** Where a DyingBatch's process dies: before this step of the batch (a Redis script, or the witness in Postgres), every earlier one done. */
const DEATHS = {
  // After its write to Postgres, before its ids join the run's sets (and the cache is filled).
  'after-write': ['redis', ['tallyApply']],
  // After its sets, counts and cache fill, before Postgres witnesses the batch.
  'after-apply': ['runs', ['recordAck']],
  // After the witness, before the batch is recorded and counted.
  'after-ack': ['redis', ['tallyDone']]
} as const
type Death = keyof typeof DEATHS

/**
 * A batch whose process dies at a step after its write: every call of that step fails, as if
 * the process were gone (its registration is then released, as a completion would revoke a
 * dead one's). What it wrote stays; the cache must not keep calling its ids unchanged when the
 * next scan reports the content from before, which the model then calls updated.
 */
class DyingBatch implements fc.AsyncCommand<Model, Real> {
  constructor (readonly picks: Pick[], readonly death: Death) {}
  check = (m: Readonly<Model>) => m.run !== null && !m.lost
  async run (m: Model, r: Real) {
    const [where, steps] = DEATHS[this.death]
    const target = (where === 'redis' ? r.app.redis : r.app.db.runs) as unknown as Record<string, unknown>
    const saved = steps.map((step) => ({ step, own: Object.hasOwn(target, step), real: target[step] }))
    for (const step of steps) target[step] = () => Promise.reject(new Error(`the process died before ${step} (test fault)`))
    let res: Reply
    try {
      res = await sendBatch(m, r, this.picks, `b${++m.batches}`)
    } finally {
      for (const { step, own, real } of saved) {
        if (own) target[step] = real
        else delete target[step]
      }
    }
    expect(res.status === 500 && res.body.code === 'internal', `batch dying ${this.death}`, res)
    count(r, `batches dying ${this.death}`)
    applyBatch(m, this.picks, { sets: this.death !== 'after-write', acknowledged: false })
    const live = await call(r, 'GET', `/runs/${m.run!.id}`)
    expectStats(live.body.stats, runStats(m), `stats after a batch dying ${this.death}`)
  }

  toString = () => `dying-batch(${this.death}: ${this.picks.map((p) => `${p.n}v${p.v}`).join(' ')})`
}

class Replay implements fc.AsyncCommand<Model, Real> {
  check = (m: Readonly<Model>) => m.run?.last !== undefined
  async run (m: Model, r: Real) {
    const { batchId, picks, ndjson } = m.run!.last!
    const res = await sendBatch(m, r, picks, batchId, ndjson)
    if (m.lost) return expect(res.status === 409 && res.body.code === 'run_state_lost', 'replay after lost state', res)
    expect(res.status === 200 && res.body.duplicate === true, 'replay', res)
    count(r, 'replays answered as duplicates')
  }

  toString = () => 'replay'
}

/** Expected inventory and stats after a completion: what the run saw stays, and what lies in a skipped partition. */
function completeModel (m: Model, skipType: string | undefined): Stats {
  let deleted = 0
  let skipped = 0
  for (const id of [...m.live.keys()]) {
    // Seen, or sharing its digest with an id the run saw: kept.
    if (m.run!.digests.has(digestOf(id, m.bits))) continue
    if (typeOf(Number(id.slice(-2))) === skipType) skipped++
    else {
      m.live.delete(id)
      m.gone.add(id)
      m.changes.push(`${m.run!.id} deleted ${id}`)
      deleted++
    }
  }
  const stats = runStats(m, { deleted, skipped })
  m.run = null
  return stats
}

class Complete implements fc.AsyncCommand<Model, Real> {
  constructor (readonly skipType: string | undefined) {}
  check = (m: Readonly<Model>) => m.run !== null
  async run (m: Model, r: Real) {
    const res = await call(r, 'POST', `/runs/${m.run!.id}/complete`,
      this.skipType === undefined ? {} : { skip: [{ type: this.skipType }] })
    if (m.lost) {
      count(r, 'completions refused: run_state_lost')
      return expect(res.status === 409 && res.body.code === 'run_state_lost', 'complete after lost state', res)
    }
    expect(res.status === 200 && res.body.status === 'completed', 'complete', res)
    count(r, this.skipType === undefined ? 'completions' : 'completions with skip')
    expectStats(res.body.stats, completeModel(m, this.skipType), 'completed run')
  }

  toString = () => `complete(${this.skipType === undefined ? '' : `skip ${this.skipType}`})`
}

/** A batch and the completion sent at once: the batch is in the completed run (200) or left no trace (409). */
class Race implements fc.AsyncCommand<Model, Real> {
  constructor (readonly picks: Pick[], readonly delayMs: number) {}
  check = (m: Readonly<Model>) => m.run !== null && !m.lost
  async run (m: Model, r: Real) {
    const runId = m.run!.id
    const [done, batch] = await Promise.all([
      call(r, 'POST', `/runs/${runId}/complete`, {}),
      sleep(this.delayMs).then(() => call(r, 'POST', `/runs/${runId}/resources`, { batchId: `b${++m.batches}`, resources: body(this.picks) }))
    ])
    expect(done.status === 200, 'complete racing a batch', done)
    if (batch.status === 200) {
      count(r, 'racing batches counted')
      applyBatch(m, this.picks)
    } else {
      expect(batch.status === 409 && batch.body.code === 'run_not_open', 'batch racing a completion', batch)
      count(r, 'racing batches refused')
    }
    expectStats(done.body.stats, completeModel(m, undefined), 'completed run, raced')
  }

  toString = () => `race(${this.delayMs} ms: ${this.picks.map((p) => `${p.n}v${p.v}`).join(' ')})`
}

class Abort implements fc.AsyncCommand<Model, Real> {
  check = (m: Readonly<Model>) => m.run !== null
  async run (m: Model, r: Real) {
    const res = await call(r, 'POST', `/runs/${m.run!.id}/abort`)
    expect(res.status === 200 && res.body.status === 'aborted', 'abort', res)
    if (!m.lost) expectStats(res.body.stats, runStats(m), 'aborted run')
    m.run = null
    m.lost = false
  }

  toString = () => 'abort'
}

/**
 * Tenant `other` scans its scope of the same name whole (open, one batch, complete): its
 * inventory follows its own model, and tenant default's run in flight and inventory do not
 * move (the inventory is checked after every step, the run by its next batch or completion).
 */
class OtherScan implements fc.AsyncCommand<Model, Real> {
  constructor (readonly picks: Pick[]) {}
  check = () => true
  async run (m: Model, r: Real) {
    const opened = await call(r, 'POST', '/runs', { scope: r.scope }, r.otherKey)
    expect(opened.status === 201, "other tenant's open, beside default's run", opened)
    const entries = distinct(this.picks)
    const expected: Stats = { seen: 0, created: 0, updated: 0, unchanged: 0, deleted: 0, batches: 1, skipped: 0 }
    const digests = new Map<string, Kind>()
    for (const [id, v] of entries) {
      const now = m.other.get(id)
      const digest = digestOf(id, m.bits)
      digests.set(digest, firstKind(digests.get(digest), now === undefined ? 'created' : now === v ? 'unchanged' : 'updated'))
    }
    for (const kind of digests.values()) expected[kind]++
    expected.seen = digests.size
    const batch = await call(r, 'POST', `/runs/${opened.body.id}/resources`, { resources: body(this.picks) }, r.otherKey)
    expect(batch.status === 200, "other tenant's batch", batch)
    const done = await call(r, 'POST', `/runs/${opened.body.id}/complete`, {}, r.otherKey)
    expect(done.status === 200 && done.body.status === 'completed', "other tenant's completion", done)
    const next = new Map(entries)
    // What it did not report is deleted, unless it shares a digest with what it did.
    for (const [id, v] of m.other) {
      if (next.has(id)) continue
      if (digests.has(digestOf(id, m.bits))) next.set(id, v)
      else expected.deleted++
    }
    m.other = next
    expectStats(done.body.stats, expected, "other tenant's completed run")
    count(r, 'other tenant scans')
  }

  toString = () => `other-scan(${this.picks.map((p) => `${p.n}v${p.v}`).join(' ')})`
}

/** Tenant `other`'s admin key on every route of default's run in flight: each a 404, as for a run that does not exist. */
class Intrude implements fc.AsyncCommand<Model, Real> {
  check = (m: Readonly<Model>) => m.run !== null
  async run (m: Model, r: Real) {
    const id = m.run!.id
    for (const [method, url, payload] of [
      ['GET', `/runs/${id}`], ['POST', `/runs/${id}/resources`, { resources: body([{ n: 0, v: 9 }]) }],
      ['POST', `/runs/${id}/complete`, { force: true }], ['POST', `/runs/${id}/abort`]
    ] as const) {
      const res = await call(r, method, url, payload, r.otherKey)
      expect(res.status === 404 && res.body.code === 'run_not_found', `other tenant's ${method} ${url}`, res)
    }
    count(r, 'intrusions refused')
  }

  toString = () => 'intrude'
}

class FlushRedis implements fc.AsyncCommand<Model, Real> {
  check = () => true
  async run (m: Model, r: Real) {
    await Promise.all(primaries(r.app.redis).map((node) => node.flushall()))
    count(r, 'Redis flushes')
    if (m.run !== null) m.lost = true
  }

  toString = () => 'flush-redis'
}

class RestartRedis implements fc.AsyncCommand<Model, Real> {
  check = () => true
  async run (m: Model, r: Real) {
    await r.redis.restart()
    count(r, 'Redis restarts')
    if (m.run !== null) m.lost = true
  }

  toString = () => 'restart-redis'
}

/** The scope's cache buckets, every shard of them. */
async function cacheKeys (r: Real): Promise<string[]> {
  const pattern = `${r.env.REDIS_KEY_PREFIX}{default/${r.scope}/*}:cache:*`
  return (await Promise.all(primaries(r.app.redis).map((node) => node.keys(pattern)))).flat()
}

/** Every cached value of the scope made wrong (the shards' bookkeeping left alone). */
class CorruptCache implements fc.AsyncCommand<Model, Real> {
  check = () => true
  async run (_m: Model, r: Real) {
    for (const key of await cacheKeys(r)) {
      const fields = await r.app.redis.hkeys(key)
      if (fields.length > 0) await r.app.redis.hset(key, ...fields.flatMap((f) => [f, '12345']))
    }
    count(r, 'cache corruptions')
  }

  toString = () => 'corrupt-cache'
}

/** Some of the scope's cached values gone, as under memory pressure. */
class EvictCache implements fc.AsyncCommand<Model, Real> {
  constructor (readonly every: number) {}
  check = () => true
  async run (_m: Model, r: Real) {
    for (const key of await cacheKeys(r)) {
      const fields = (await r.app.redis.hkeys(key)).filter((_f, i) => i % this.every === 0)
      if (fields.length > 0) await r.app.redis.hdel(key, ...fields)
    }
    count(r, 'cache evictions')
  }

  toString = () => `evict-cache(1 in ${this.every})`
}

class RestartApp implements fc.AsyncCommand<Model, Real> {
  check = () => true
  async run (_m: Model, r: Real) {
    await r.app.close()
    r.app = await startApp(r.env)
    count(r, 'app restarts')
  }

  toString = () => 'restart-app'
}

async function startApp (env: Record<string, string>): Promise<App> {
  const app = await buildApp(loadConfig(env))
  await app.ready()
  return app
}

const pick = fc.record({ n: fc.integer({ min: 0, max: ID_SPACE - 1 }), v: fc.integer({ min: 0, max: 2 }) })
const batch = fc.array(pick, { minLength: 1, maxLength: 12 })
// Weighted by repetition: scans mostly, faults now and then.
const times = <T>(n: number, arb: fc.Arbitrary<T>) => Array.from({ length: n }, () => arb)
const shardCount = fc.option(fc.constantFrom(1, 3, 4, 16), { nil: undefined, freq: 2 })
const commands = [
  ...times(3, shardCount.map((s) => new Open(s))),
  ...times(5, batch.map((p) => new Batch(p))),
  ...times(3, batch.map((p) => new Batch(p, true))),
  fc.constant(new Rescan()),
  fc.constant(new Rescan(true)),
  batch.map((p) => new FailingBatch(p)),
  ...times(2, fc.tuple(batch, fc.constantFrom(...Object.keys(DEATHS) as Death[])).map(([p, d]) => new DyingBatch(p, d))),
  ...times(2, fc.constant(new Replay())),
  ...times(3, fc.option(fc.constantFrom('even', 'odd'), { nil: undefined, freq: 3 }).map((s) => new Complete(s))),
  ...times(2, fc.tuple(batch, fc.integer({ min: 0, max: 6 })).map(([p, d]) => new Race(p, d))),
  fc.constant(new Abort()),
  // Another tenant, same scope name.
  batch.map((p) => new OtherScan(p)),
  fc.constant(new Intrude()),
  // Faults: Redis state lost, the cache wrong or partly gone, the app restarted.
  fc.oneof(fc.constant(new FlushRedis()), fc.constant(new RestartRedis())),
  fc.oneof(fc.constant(new CorruptCache()), fc.integer({ min: 1, max: 3 }).map((e) => new EvictCache(e))),
  fc.constant(new RestartApp())
]

/** Redis as the model test restarts it: one private redis-server, or (TALLY_MODEL_CLUSTER=1) a private cluster of 3 primaries. */
interface RedisUnderTest {
  env: Record<string, string>
  restart (): Promise<void>
}

async function redisUnderTest (t: Parameters<typeof startRedis>[0]): Promise<RedisUnderTest> {
  if (CLUSTER) {
    const cluster = await startCluster(t, { primaries: 3, replicas: 0 })
    return { env: { REDIS_CLUSTER_NODES: cluster.seeds }, restart: cluster.restart }
  }
  const redis = await startRedis(t)
  return { env: { REDIS_URL: redis.url }, restart: redis.restart }
}

for (const bits of [64, TINY_DIGEST_BITS]) {
  t.test(`model-based: ${RUNS} random sequences (seed ${SEED}, ${bits}-bit digests${CLUSTER ? ', Redis Cluster' : ''}) keep inventory and stats equal to the model`, async (t) => {
    const redis = await redisUnderTest(t)
    const { REDIS_URL: _machineRedis, ...base } = await testEnv(t)
    const env: Record<string, string> = {
      ...base,
      ...redis.env,
      // Small scopes: the guard would refuse most completions; it has tests of its own.
      GUARD_MIN_BASELINE: '1000000',
      // Each sequence is a scope of its own, and may end with its run still open.
      MAX_OPEN_RUNS: '1000000',
      DEFAULT_SHARD_COUNT: '4',
      ID_DIGEST_BITS: String(bits),
      SEEN_SET_SIZE: '2',
      // Buckets of one entry: the cache grows its buckets as scopes grow (reads move entries).
      CACHE_BUCKET_SIZE: '1',
      SWEEP_INTERVAL: '0'
    }
    const db = new pg.Client({ connectionString: env.DATABASE_URL })
    await db.connect()
    t.teardown(() => db.end())
    const app = await startApp(env)
    const key = generateKey({ tenant: 'default', role: 'admin', createdBy: 'test' })
    await app.db.keys.insert(key.row)
    const other = generateKey({ tenant: 'other', role: 'admin', createdBy: 'test' })
    await app.db.keys.insert(other.row)
    const real: Real = { app, env, redis, db, scope: '', key: key.key, otherKey: other.key, tally: {} }
    t.teardown(() => real.app.close())
    // A batch whose write Postgres refuses, as a constraint or an outage mid-statement would.
    await db.query(`
    create function tally_test_poison() returns trigger language plpgsql as $$
    begin
      if new.attributes ? 'poison' then raise exception 'poisoned resource %', new.id; end if;
      return new;
    end $$;
    create trigger tally_test_poison before insert or update on resources for each row execute function tally_test_poison();`)
    let sequences = 0
    let steps = 0

    await fc.assert(fc.asyncProperty(fc.commands(commands, { maxCommands: 40, size: 'max' }), async (cmds) => {
      real.scope = `aws/model-${++sequences}`
      const model: Model = { live: new Map(), run: null, lost: false, batches: 0, other: new Map(), bits, gone: new Set(), changes: [] }
      // Each command, then the check of the whole inventory against the model.
      await fc.asyncModelRun(() => ({ model, real }), [...cmds].map((c) => ({
        check: (m: Readonly<Model>) => c.check(m),
        run: async (m: Model, r: Real) => {
          await c.run(m, r)
          steps++
          await assertInventory(m, r, String(c))
        },
        toString: () => String(c)
      })))
    }), { numRuns: RUNS, seed: SEED, endOnFailure: true })

    t.pass(`${sequences} sequences, ${steps} steps, every step checked`)
    t.comment(`faults and outcomes: ${JSON.stringify(real.tally)}`)
  })
}
