/**
 * Model-based: random sequences of open / batch / replayed batch / batch racing a completion /
 * complete (with and without skipped partitions) / abort / Redis flush / Redis restart / app
 * restart over a small id space with random churn. After every step the live inventory in
 * Postgres must equal what a simple model says; a resource the completing run saw is never
 * deleted. Fixed seed in CI; TALLY_MODEL_RUNS and TALLY_MODEL_SEED run more or other sequences.
 */
import t from 'tap'
import fc from 'fast-check'
import pg from 'pg'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { testEnv } from './helper.js'
import { startRedis, type PrivateRedis } from './redis-server.js'

const RUNS = Number(process.env.TALLY_MODEL_RUNS ?? 100)
const SEED = Number(process.env.TALLY_MODEL_SEED ?? 20261122)
const ID_SPACE = 24
const idOf = (n: number) => `arn:aws:model:::r-${String(n).padStart(2, '0')}`
// The type is fixed per id (partitions hold still); two types, so `skip` can spare one.
const typeOf = (n: number) => (n % 2 === 0 ? 'even' : 'odd')

type App = Awaited<ReturnType<typeof buildApp>>
interface Reply { status: number, body: any }
interface Pick { n: number, v: number }

interface Model {
  /** id -> content version of every live resource. */
  live: Map<string, number>
  run: { id: number, seen: Set<string>, last?: { batchId: string, picks: Pick[] } } | null
  /** The open run's Redis state is gone: it can only be aborted. */
  lost: boolean
  batches: number
}

interface Real {
  app: App
  env: Record<string, string>
  redis: PrivateRedis
  db: pg.Client
  scope: string
  /** Faults injected and refusals seen, for the closing report. */
  tally: Record<string, number>
}

const count = (r: Real, what: string) => { r.tally[what] = (r.tally[what] ?? 0) + 1 }

async function call (r: Real, method: 'GET' | 'POST', url: string, payload?: object): Promise<Reply> {
  for (const deadline = Date.now() + 20_000; ; await sleep(20)) {
    const res = await r.app.inject({ method, url, ...(payload === undefined ? {} : { payload }) })
    if (res.statusCode !== 503 || Date.now() > deadline) return { status: res.statusCode, body: res.json() }
  }
}

const body = (picks: Pick[]) => picks.map(({ n, v }) => ({ id: idOf(n), type: typeOf(n), attributes: { v } }))

function applyBatch (m: Model, picks: Pick[]) {
  for (const { n, v } of picks) {
    m.live.set(idOf(n), v)
    m.run!.seen.add(idOf(n))
  }
}

async function assertInventory (m: Model, r: Real, step: string) {
  const { rows } = await r.db.query(
    "select id, (attributes->>'v')::int as v from resources where scope = $1 and deleted_at is null order by id", [r.scope])
  const actual = Object.fromEntries(rows.map((row: { id: string, v: number }) => [row.id, row.v]))
  const expected = Object.fromEntries([...m.live].sort(([a], [b]) => a.localeCompare(b)))
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new Error(`after ${step}: inventory ${JSON.stringify(actual)} but the model says ${JSON.stringify(expected)}`)
  }
}

function expect (cond: boolean, what: string, res: Reply) {
  if (!cond) throw new Error(`${what}: got ${res.status} ${JSON.stringify(res.body)}`)
}

class Open implements fc.AsyncCommand<Model, Real> {
  check = () => true
  async run (m: Model, r: Real) {
    const res = await call(r, 'POST', '/runs', { scope: r.scope })
    if (m.run !== null) return expect(res.status === 409 && res.body.code === 'scope_has_open_run', 'open while a run is open', res)
    expect(res.status === 201, 'open', res)
    m.run = { id: res.body.id, seen: new Set() }
    m.lost = false
  }

  toString = () => 'open'
}

class Batch implements fc.AsyncCommand<Model, Real> {
  constructor (readonly picks: Pick[]) {}
  check = (m: Readonly<Model>) => m.run !== null
  async run (m: Model, r: Real) {
    const batchId = `b${++m.batches}`
    const res = await call(r, 'POST', `/runs/${m.run!.id}/resources`, { batchId, resources: body(this.picks) })
    if (m.lost) {
      count(r, 'batch refused: run_state_lost')
      return expect(res.status === 409 && res.body.code === 'run_state_lost', 'batch after lost state', res)
    }
    expect(res.status === 200 && res.body.duplicate === false, 'batch', res)
    applyBatch(m, this.picks)
    m.run!.last = { batchId, picks: this.picks }
  }

  toString = () => `batch(${this.picks.map((p) => `${p.n}v${p.v}`).join(' ')})`
}

class Replay implements fc.AsyncCommand<Model, Real> {
  check = (m: Readonly<Model>) => m.run?.last !== undefined
  async run (m: Model, r: Real) {
    const { batchId, picks } = m.run!.last!
    const res = await call(r, 'POST', `/runs/${m.run!.id}/resources`, { batchId, resources: body(picks) })
    if (m.lost) return expect(res.status === 409 && res.body.code === 'run_state_lost', 'replay after lost state', res)
    expect(res.status === 200 && res.body.duplicate === true, 'replay', res)
    count(r, 'replays answered as duplicates')
  }

  toString = () => 'replay'
}

/** Expected inventory after a completion: what the run saw, and what lies in a skipped partition. */
function completeModel (m: Model, skipType: string | undefined) {
  for (const id of [...m.live.keys()]) {
    const n = Number(id.slice(-2))
    if (!m.run!.seen.has(id) && typeOf(n) !== skipType) m.live.delete(id)
  }
  m.run = null
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
    completeModel(m, this.skipType)
  }

  toString = () => `complete(${this.skipType === undefined ? '' : `skip ${this.skipType}`})`
}

/** A batch and the completion sent at once: the batch is counted (200) or refused (409), never lost. */
class Race implements fc.AsyncCommand<Model, Real> {
  constructor (readonly picks: Pick[]) {}
  check = (m: Readonly<Model>) => m.run !== null && !m.lost
  async run (m: Model, r: Real) {
    const runId = m.run!.id
    const [batch, done] = await Promise.all([
      call(r, 'POST', `/runs/${runId}/resources`, { batchId: `b${++m.batches}`, resources: body(this.picks) }),
      call(r, 'POST', `/runs/${runId}/complete`, {})
    ])
    expect(done.status === 200, 'complete racing a batch', done)
    if (batch.status === 200) {
      count(r, 'racing batches counted')
      applyBatch(m, this.picks)
      completeModel(m, undefined)
      return
    }
    expect(batch.status === 409 && batch.body.code === 'run_not_open', 'batch racing a completion', batch)
    count(r, 'racing batches refused')
    // Shards that took the batch before their marker closed count its ids as seen: a refused
    // batch may keep a resource alive (never delete one). Its content was not written.
    const maybeKept = new Set(this.picks.map((p) => idOf(p.n)).filter((id) => m.live.has(id) && !m.run!.seen.has(id)))
    const before = new Map(m.live)
    completeModel(m, undefined)
    const { rows } = await r.db.query('select id from resources where scope = $1 and deleted_at is null and id = any($2)', [r.scope, [...maybeKept]])
    for (const { id } of rows as Array<{ id: string }>) m.live.set(id, before.get(id)!)
  }

  toString = () => `race(${this.picks.map((p) => `${p.n}v${p.v}`).join(' ')})`
}

class Abort implements fc.AsyncCommand<Model, Real> {
  check = (m: Readonly<Model>) => m.run !== null
  async run (m: Model, r: Real) {
    const res = await call(r, 'POST', `/runs/${m.run!.id}/abort`)
    expect(res.status === 200 && res.body.status === 'aborted', 'abort', res)
    m.run = null
    m.lost = false
  }

  toString = () => 'abort'
}

class FlushRedis implements fc.AsyncCommand<Model, Real> {
  check = () => true
  async run (m: Model, r: Real) {
    await r.app.redis.flushall()
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
const commands = [
  fc.constant(new Open()),
  fc.constant(new Open()),
  ...Array.from({ length: 4 }, () => batch.map((p) => new Batch(p))),
  fc.constant(new Replay()),
  fc.constant(new Replay()),
  ...Array.from({ length: 2 }, () => fc.option(fc.constantFrom('even', 'odd'), { nil: undefined, freq: 3 }).map((s) => new Complete(s))),
  batch.map((p) => new Race(p)),
  batch.map((p) => new Race(p)),
  fc.constant(new Abort()),
  fc.constant(new FlushRedis()),
  fc.constant(new RestartRedis()),
  fc.constant(new RestartApp())
]

t.test(`model-based: ${RUNS} random sequences (seed ${SEED}) keep the inventory equal to the model`, async (t) => {
  const redis = await startRedis(t)
  const env: Record<string, string> = {
    ...await testEnv(t),
    REDIS_URL: redis.url,
    // Small scopes: the guard would refuse most completions; it has tests of its own.
    GUARD_MIN_BASELINE: '1000000',
    DEFAULT_SHARD_COUNT: '4',
    SWEEP_INTERVAL: '0'
  }
  const db = new pg.Client({ connectionString: env.DATABASE_URL })
  await db.connect()
  t.teardown(() => db.end())
  const real: Real = { app: await startApp(env), env, redis, db, scope: '', tally: {} }
  t.teardown(() => real.app.close())
  let sequences = 0
  let steps = 0

  await fc.assert(fc.asyncProperty(fc.commands(commands, { maxCommands: 40, size: 'max' }), async (cmds) => {
    real.scope = `aws/model-${++sequences}`
    const model: Model = { live: new Map(), run: null, lost: false, batches: 0 }
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
