/**
 * Fault injection against real processes: a private redis-server restarted mid-run and
 * mid-completion, Postgres connections terminated mid-batch and mid-completion, and the server
 * process itself killed during completion and restarted. After every fault: no resource the
 * run saw is ever deleted, and retrying (or aborting and rescanning) ends in the exact inventory.
 */
import t from 'tap'
import pg from 'pg'
import { setTimeout as sleep } from 'node:timers/promises'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { api, build, liveIds, redisClient, resource, sqlClient, testEnv, waitFor, type App } from './helper.js'
import { startRedis } from './redis-server.js'
import { startServer } from './server-process.js'

const ids = (n: number, from = 0) => Array.from({ length: n }, (_, i) => `f-${String(i + from).padStart(6, '0')}`)
const resources = (list: string[], version = 0) => list.map((id) => resource(id, { attributes: { v: version } }))

interface Reply { status: number, body: any }
type Tap = Parameters<typeof waitFor>[0] & { equal: (...args: any[]) => unknown, same: (...args: any[]) => unknown, ok: (...args: any[]) => unknown }

/** Repeats a call while it answers 503 (the documented "retry" answer), for up to 60 s. */
async function retrying (call: () => Promise<Reply>): Promise<Reply> {
  for (const deadline = Date.now() + 60_000; ; await sleep(20)) {
    const res = await call()
    if (res.status !== 503 || Date.now() > deadline) return res
  }
}

/**
 * Repeats a call while it answers 503, with no deadline: for faults that stop by themselves
 * (a bounded number of them), so a correct server always gets through, however slowly.
 */
async function untilNot503 (call: () => Promise<Reply>): Promise<Reply> {
  for (;; await sleep(20)) {
    const res = await call()
    if (res.status !== 503) return res
  }
}

async function loadBaseline (app: App, scope: string, list: string[]) {
  return api(app).scan(scope, resources(list), { batch: 2000 })
}

t.test('Redis restarted mid-run: the run refuses to complete, nothing is deleted, a rescan is exact', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url })
  const tally = api(app)
  const db = await sqlClient(t, app)
  await loadBaseline(app, 'aws/restart-mid-run', ids(300))
  const run = (await tally.open('aws/restart-mid-run')).body.id as number
  t.equal((await tally.ingest(run, resources(ids(100)))).status, 200)
  await redis.restart()
  const batch = await retrying(() => tally.ingest(run, resources(ids(100, 100))))
  t.match(batch.body, { status: 409, code: 'run_state_lost' }, 'a batch after the restart is refused')
  t.match((await retrying(() => tally.complete(run))).body, { status: 409, code: 'run_state_lost' })
  t.equal((await liveIds(db, 'aws/restart-mid-run')).length, 300, 'nothing deleted')
  t.equal((await tally.abort(run)).status, 200)
  // The baseline's sets died with Redis: the rescan's completion diffs against Postgres.
  const rescan = await tally.scan('aws/restart-mid-run', resources(ids(250)))
  t.match(rescan.stats, { seen: 250, deleted: 50 })
  t.same(await liveIds(db, 'aws/restart-mid-run'), ids(250))
})

/** The app on a private Redis that keeps a persistence file, written when `save` is called only. */
async function onPersistentRedis (t: Parameters<typeof build>[0]) {
  const dir = await mkdtemp(join(tmpdir(), 'tally-rdb-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const redis = await startRedis(t, ['--dir', dir, '--dbfilename', 'dump.rdb'])
  const app = await build(t, { REDIS_URL: redis.url })
  const save = async () => { await redisClient(t, redis.url).save() }
  return { redis, app, tally: api(app), db: await sqlClient(t, app), save }
}

t.test('Redis back from a persistence file missing the last acknowledged batch: nothing deleted, abort + rescan exact', async (t) => {
  const { redis, app, tally, db, save } = await onPersistentRedis(t)
  const scope = 'aws/lost-last-second'
  await loadBaseline(app, scope, ids(300))
  const run = (await tally.open(scope)).body.id as number
  t.equal((await tally.ingest(run, resources(ids(200)))).status, 200)
  // The persistence file is written here; the last batch, acknowledged, never reaches it (as
  // with AOF everysec and a crash within the second).
  await save()
  t.equal((await tally.ingest(run, resources([...ids(100, 200), 'f-new']))).status, 200)
  await redis.restart()
  // The markers are back from the file; the last batch's ids are not.
  t.match((await retrying(() => tally.complete(run))).body, { status: 409, code: 'run_state_lost' })
  t.same(await liveIds(db, scope), [...ids(300), 'f-new'].sort(), 'nothing deleted')
  t.equal((await tally.abort(run)).status, 200)
  // The rescan does not see f-new (gone meanwhile): only the aborted run wrote it, and it is found.
  t.match((await tally.scan(scope, resources(ids(300)))).stats, { seen: 300, deleted: 1 })
  t.same(await liveIds(db, scope), ids(300))
})

t.test('Redis back from a persistence file missing a deletion\'s cache invalidation: a resource that comes back is live again', async (t) => {
  const { redis, app, tally, db, save } = await onPersistentRedis(t)
  const scope = 'aws/lost-invalidation'
  await loadBaseline(app, scope, ids(300))
  // The file holds the cache with every hash, before the next completion invalidates any.
  await save()
  t.match((await tally.scan(scope, resources(ids(290)))).stats, { deleted: 10 })
  await redis.restart()
  // The ten come back unchanged; the cache, back from the file, still holds their hashes.
  const back = await retrying(() => tally.open(scope))
  const run = back.body.id as number
  t.match((await retrying(() => tally.ingest(run, resources(ids(300))))).body, { created: 10, unchanged: 290 })
  t.equal((await liveIds(db, scope)).length, 300, 'all 300 live again')
})

t.test('Redis killed and restarted at moments of a completion: never a seen resource deleted', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url })
  const tally = api(app)
  const db = await sqlClient(t, app)
  const outcomes: string[] = []
  for (const delay of [0, 2, 8, 20, 50, 150, 400]) {
    const scope = `aws/redis-dies-${delay}`
    await loadBaseline(app, scope, ids(6000))
    const run = (await tally.open(scope)).body.id as number
    const seen = ids(5000, 1000)
    for (let i = 0; i < seen.length; i += 2500) t.equal((await tally.ingest(run, resources(seen.slice(i, i + 2500)))).status, 200)
    const completing = tally.complete(run)
    await sleep(delay)
    await redis.stop()
    const first = await completing
    await redis.start()
    t.equal((await liveIds(db, scope)).filter((id) => seen.includes(id)).length, 5000, `delay ${delay}: every seen resource is live`)
    const retried = await retrying(() => tally.complete(run))
    outcomes.push(`${delay} ms: ${first.status} then ${retried.status} ${retried.body.code ?? retried.body.status}`)
    if (retried.status === 409) {
      t.equal(retried.body.code, 'run_state_lost')
      t.equal((await liveIds(db, scope)).length, 6000, `delay ${delay}: refused, so nothing deleted`)
      t.equal((await tally.abort(run)).status, 200)
      await tally.scan(scope, resources(seen))
    } else {
      t.match(retried.body, { status: 'completed', stats: { deleted: 1000 } }, `delay ${delay}: completed exactly once`)
    }
    t.same(await liveIds(db, scope), seen, `delay ${delay}: the inventory is exact`)
  }
  t.comment(outcomes.join('; '))
})

t.test('Postgres connections terminated during batches and completion: retries end exact, batches counted once', async (t) => {
  const env = await testEnv(t)
  // The app's connections carry a name, so the killer spares the test's own.
  const app = await build(t, { PG_POOL_MAX: '4', DATABASE_URL: `${env.DATABASE_URL}?application_name=tally_under_fire` }, env)
  const tally = api(app)
  const db = new pg.Client({ connectionString: env.DATABASE_URL })
  await db.connect()
  t.teardown(() => db.end())
  const scope = 'aws/pg-killed'
  await loadBaseline(app, scope, ids(4000))

  // The killer waits until one of the app's connections is running a statement and terminates
  // every app connection: a round. It fires a bounded number of rounds (30 during the batches,
  // then 10 during the completion), so the faults land in the middle of batches and of the
  // completion however loaded the machine is, and after the last round nothing stops the
  // retries from going through: no deadline a correct server could miss.
  const firing = { on: true, rounds: 0, budget: 30 }
  let killed = 0
  const admin = new pg.Client({ connectionString: env.DATABASE_URL })
  await admin.connect()
  t.teardown(() => admin.end())
  const killer = (async () => {
    while (firing.on) {
      if (firing.rounds >= firing.budget) {
        await sleep(5)
        continue
      }
      const { rowCount } = await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity
        where datname = current_database() and application_name = $1
          and exists (select 1 from pg_stat_activity a where a.datname = current_database() and a.application_name = $1 and a.state = 'active')`,
      ['tally_under_fire'])
      if (rowCount) {
        killed += rowCount
        firing.rounds++
      } else {
        await sleep(2)
      }
    }
  })()

  // The next scan: 500 gone, 500 new, 500 changed, all under fire.
  const seen = [...ids(3500, 500).map((id, i) => resource(id, { attributes: { v: i < 500 ? 1 : 0 } })), ...resources(ids(500, 4000))]
  const run = (await untilNot503(() => tally.open(scope))).body.id as number
  const batches = Array.from({ length: 16 }, (_, i) => seen.slice(i * 250, (i + 1) * 250))
  const answers = await Promise.all(batches.map((b, i) => untilNot503(() => tally.ingest(run, b, { batchId: `b${i}` }))))
  t.same(answers.map((a) => a.status), Array(16).fill(200), 'every batch applied once retried')
  const killedInBatches = killed
  const roundsInBatches = firing.rounds
  firing.budget = roundsInBatches + 10
  const done = await untilNot503(() => tally.complete(run, { force: true }))
  firing.on = false
  await killer
  t.ok(killedInBatches > 0, `terminated ${killedInBatches} backends in ${roundsInBatches} rounds during the batches, ${killed - killedInBatches} in ${firing.rounds - roundsInBatches} during the completion`)
  t.match(done.body, { status: 'completed', stats: { seen: 4000, deleted: 500, batches: 16 } })
  t.same(await liveIds(db, scope), [...ids(3500, 500), ...ids(500, 4000)].sort())
  const { rows } = await db.query("select count(*)::int as n from resources where scope = $1 and deleted_at is null and attributes->>'v' = '1'", [scope])
  t.equal(rows[0].n, 500, 'the changed resources carry their new content')
})

t.test('the server process killed during completion and restarted: calling complete again finishes the job', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'tally-faults-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const env = await testEnv(t)
  env.DATA_DIR = dataDir
  // Every server started here lives until this test ends (a subtest's teardown would kill it early).
  const restart = () => startServer(t, env)
  const server = { current: await restart() }
  // The first start made the database's first key and wrote it to DATA_DIR.
  const key = (await readFile(join(dataDir, 'admin.key'), 'utf8')).trim()
  const db = new pg.Client({ connectionString: env.DATABASE_URL })
  await db.connect()
  t.teardown(() => db.end())
  const http = async (path: string, body?: unknown): Promise<Reply> => {
    const res = await fetch(`${server.current.url}${path}`, body === undefined
      ? { method: 'POST', headers: { authorization: `Bearer ${key}` } }
      : { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify(body) })
    return { status: res.status, body: await res.json() }
  }
  const ok = (res: Reply, what: string) => {
    if (res.status >= 300) throw new Error(`${what}: ${res.status} ${JSON.stringify(res.body)}`)
    return res
  }
  const scan = async (scope: string, list: string[]) => {
    const run = ok(await http('/runs', { scope }), 'open').body.id as number
    for (let i = 0; i < list.length; i += 2000) ok(await http(`/runs/${run}/resources`, { resources: resources(list.slice(i, i + 2000)) }), 'batch')
    return run
  }

  // 12,000 stale resources: three delete statements (DELETE_CHUNK is 5,000), so only the
  // transaction around them makes the completion all or nothing.
  await t.test('blocked inside its transaction, after the soft deletes', async (t) => {
    const scope = 'aws/killed-in-txn'
    ok(await http(`/runs/${await scan(scope, ids(16000))}/complete`, {}), 'complete')
    const run = await scan(scope, ids(4000))
    const blocker = new pg.Client({ connectionString: env.DATABASE_URL })
    await blocker.connect()
    await blocker.query('begin')
    await blocker.query('select * from scopes where scope = $1 for update', [scope])
    const completing = http(`/runs/${run}/complete`, { force: true }).catch(() => undefined)
    await waitFor(t, 'the completion waits for the scope row, its deletes done', async () =>
      (await db.query(`select count(*)::int as n from pg_stat_activity
        where datname = current_database() and wait_event_type = 'Lock' and query like 'update "scopes"%'`)).rows[0].n > 0, 30_000)
    const { rows: inTxn } = await db.query('select count(*)::int as n from resources where scope = $1 and deleted_at is null', [scope])
    t.equal(inTxn[0].n, 16000, 'its uncommitted deletes are invisible')
    await server.current.kill('SIGKILL')
    await completing
    await blocker.query('rollback')
    await blocker.end()
    t.equal((await liveIds(db, scope)).length, 16000, 'the killed transaction deleted nothing')
    t.equal((await db.query('select status from runs where id = $1', [run])).rows[0].status, 'completing')
    server.current = await restart()
    const done = await retrying(() => http(`/runs/${run}/complete`, { force: true }))
    t.match(done.body, { status: 'completed', stats: { deleted: 12000, seen: 4000 } })
    t.same(await liveIds(db, scope), ids(4000))
  })

  await t.test('killed at moments of a completion', async (t) => {
    for (const delay of [5, 30, 80]) {
      const scope = `aws/killed-at-${delay}`
      ok(await http(`/runs/${await scan(scope, ids(16000))}/complete`, {}), 'complete')
      const run = await scan(scope, ids(4000, 12000))
      const completing = http(`/runs/${run}/complete`, { force: true }).catch(() => undefined)
      await sleep(delay)
      await server.current.kill('SIGKILL')
      const first = await completing
      const live = await liveIds(db, scope)
      t.ok(live.length === 16000 || live.length === 4000, `delay ${delay}: all or nothing (${live.length} live)`)
      server.current = await restart()
      const done = await retrying(() => http(`/runs/${run}/complete`, { force: true }))
      t.match(done.body, { status: 'completed', stats: { deleted: 12000, seen: 4000 } },
        `delay ${delay}: completed (first answer: ${first === undefined ? 'none, killed' : first.status})`)
      t.same(await liveIds(db, scope), ids(4000, 12000))
    }
  })
})

t.test('batches that die after their write, before the cache learns it: the next scan writes the content back', async (t) => {
  const env = await testEnv(t)
  const dataDir = await mkdtemp(join(tmpdir(), 'tally-faults-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  env.DATA_DIR = dataDir
  const server = { current: await startServer(t, env) }
  const key = (await readFile(join(dataDir, 'admin.key'), 'utf8')).trim()
  const db = new pg.Client({ connectionString: env.DATABASE_URL })
  await db.connect()
  t.teardown(() => db.end())
  const http = async (path: string, body?: unknown): Promise<Reply> => {
    const res = await fetch(`${server.current.url}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })
    return { status: res.status, body: await res.json() }
  }
  const fleet = (state: string) => ids(4000).map((id) => resource(id, { attributes: { state } }))
  const scan = async (t: Tap, scope: string, list: ReturnType<typeof fleet>) => {
    const run = (await http('/runs', { scope })).body.id as number
    const answers = []
    for (let i = 0; i < list.length; i += 1000) answers.push((await http(`/runs/${run}/resources`, { resources: list.slice(i, i + 1000) })).body)
    const done = await http(`/runs/${run}/complete`, {})
    t.equal(done.status, 200, `scan of ${scope} completed`)
    return answers
  }
  const states = async (scope: string) => (await db.query(
    "select attributes->>'state' as state, count(*)::int as n from resources where scope = $1 group by 1 order by 1", [scope])).rows
  const waiting = async () => (await db.query(`select pid from pg_stat_activity where datname = current_database()
    and wait_event_type = 'Lock' and query like 'insert into "run_acks"%'`)).rows.map((r: { pid: number }) => r.pid)

  /**
   * Scan 1 reports every instance running; run 2 reports them stopped in 4 batches at once,
   * which write their rows and then wait for the witness insert (the test holds a lock on
   * run_acks) until `die` ends them; run 2 is aborted; scan 3 reports them running again.
   */
  const scenario = async (t: Tap, scope: string, die: () => Promise<void>) => {
    await scan(t, scope, fleet('running'))
    const run = (await http('/runs', { scope })).body.id as number
    const blocker = new pg.Client({ connectionString: env.DATABASE_URL })
    await blocker.connect()
    await blocker.query('begin')
    await blocker.query('lock table run_acks in share mode')
    const stopped = fleet('stopped')
    const batches = [0, 1, 2, 3].map((i) => http(`/runs/${run}/resources`, { resources: stopped.slice(i * 1000, (i + 1) * 1000) })
      .catch(() => ({ status: 0, body: {} })))
    await waitFor(t, 'the 4 batches wrote their rows and wait for their witness', async () => (await waiting()).length === 4, 30_000)
    t.same(await states(scope), [{ state: 'stopped', n: 4000 }], 'their writes committed')
    await die()
    await blocker.query('rollback')
    await blocker.end()
    const answered = await Promise.all(batches)
    t.ok(answered.every((a) => a.status !== 200), `no batch acknowledged (${answered.map((a) => a.status).join(', ')})`)
    t.equal((await retrying(() => http(`/runs/${run}/abort`))).status, 200, 'run 2 aborted')
    const rescan = await scan(t, scope, fleet('running'))
    t.same(rescan.map((a) => [a.updated, a.unchanged]), [[1000, 0], [1000, 0], [1000, 0], [1000, 0]], 'scan 3 finds every instance changed back')
    t.same(await states(scope), [{ state: 'running', n: 4000 }], 'and writes it')
    t.same((await scan(t, scope, fleet('running'))).map((a) => a.unchanged), [1000, 1000, 1000, 1000], 'scan 4: unchanged')
  }

  await t.test('their Postgres connections terminated: 503, and nothing of theirs is taken for the truth', async (t) => {
    await scenario(t, 'aws/died-after-write-503', async () => {
      await db.query('select pg_terminate_backend(pid) from unnest($1::int[]) as pid', [await waiting()])
    })
  })
  await t.test('the server process SIGKILLed, and started again', async (t) => {
    await scenario(t, 'aws/died-after-write-killed', async () => {
      await server.current.kill('SIGKILL')
      server.current = await startServer(t, env)
    })
  })
})
