/**
 * Tally on a real Redis Cluster (3 primaries, 3 replicas, plain redis-server processes): the
 * same scans as on one Redis, a reshard during a scan, and a cluster that lost a slot's every
 * copy answering 503, never 500.
 */
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  adminKey, api, build, listenWs, liveIds, redisClient, resource, rowVersions, sqlClient, subscribeRunCompleted, testEnv, untilSubscribed, waitFor, wsClient,
  type ResourceBody, type TestEnv
} from './helper.js'
import { startCluster, type PrivateCluster } from '../scripts/redis-cluster.js'
import { shardOf } from '../src/reconcile/keys.js'

/** The app on the cluster, with a client on its database and its REST calls. */
async function onCluster (t: { teardown (fn: () => unknown): void }, cluster: PrivateCluster, env?: TestEnv) {
  const { REDIS_URL: _single, ...own } = env ?? await testEnv(t)
  const app = await build(t, { REDIS_CLUSTER_NODES: cluster.seeds, SWEEP_INTERVAL: '0' }, own)
  return { app, db: await sqlClient(t, app), tally: api(app) }
}

const estate = (n: number, from = 0) => Array.from({ length: n }, (_, i) =>
  resource(`arn:aws:ec2:eu-west-1:1:instance/i-${i + from}`, { attributes: { size: 't3.micro', n: i + from } }))

/** The slots in CLUSTER NODES ranges (`0-999`, `5000`). */
const slotSet = (ranges: string[]) => new Set(ranges.flatMap((range) => {
  const [a, b] = range.split('-').map(Number)
  return Array.from({ length: (b ?? a!) - a! + 1 }, (_, i) => a! + i)
}))

/** Posts batches with ids, retrying a 503 with the same id, as a scanner should; every answer's status and time. */
async function postAll (tally: ReturnType<typeof api>, runId: number, resources: ResourceBody[], batch: number) {
  const answers: Array<{ status: number, at: number }> = []
  for (let i = 0; i < resources.length; i += batch) {
    for (let attempt = 1; ; attempt++) {
      const res = await tally.ingest(runId, resources.slice(i, i + batch), { batchId: `b${i}` })
      answers.push({ status: res.status, at: Date.now() })
      if (res.status === 200) break
      if (res.status !== 503 || attempt === 600) throw new Error(`batch ${i}: ${res.status} ${JSON.stringify(res.body)}`)
      await sleep(100)
    }
  }
  return answers
}

t.test('a 3 + 3 cluster', async (t) => {
  const cluster = await startCluster(t)

  t.test('scans diff, delete, count and leave unchanged rows alone as on one Redis', async (t) => {
    const { db, tally } = await onCluster(t, cluster)
    const scope = 'aws/cluster'
    t.equal((await tally.call('GET', '/readyz')).status, 200)
    const first = estate(400)
    t.match(await tally.scan(scope, first, { batch: 100, open: { shardCount: 16 } }), { stats: { seen: 400, created: 400 } })

    // 20 vanish, 30 change, 50 are new; at another shard count.
    const second = [...first.slice(20, 370), ...first.slice(370).map((r) => ({ ...r, name: 'changed' })), ...estate(50, 1000)]
    const done = await tally.scan(scope, second, { batch: 100, open: { shardCount: 8 } })
    t.match(done, { status: 'completed', stats: { seen: 430, created: 50, updated: 30, unchanged: 350, deleted: 20 } })
    t.same(await liveIds(db, scope), second.map((r) => r.id).sort())

    const before = await rowVersions(db, scope)
    t.match(await tally.scan(scope, second, { batch: 100 }), { stats: { seen: 430, unchanged: 430, deleted: 0 } })
    t.same(await rowVersions(db, scope), before, 'an identical rescan wrote and locked no row')
  })

  t.test('a completion on one instance reaches a subscriber on another through the cluster', async (t) => {
    const env = await testEnv(t)
    const a = await onCluster(t, cluster, env)
    const b = await onCluster(t, cluster, env)
    const feed = subscribeRunCompleted(wsClient(t, await listenWs(b.app), adminKey(b.app)), 'aws/cluster-live')
    await untilSubscribed(b.app, [feed])
    const done = await a.tally.scan('aws/cluster-live', estate(10))
    await waitFor(t, 'the completion event', async () => feed.events.length === 1)
    t.equal(feed.events[0]?.data?.runCompleted.id, String(done.id))
    t.same(feed.errors, [])
  })

  t.test('a reshard of 1,000 slots during a scan: every batch 200 or 503, and the scan ends exact', async (t) => {
    const { db, tally } = await onCluster(t, cluster)
    const scope = 'aws/reshard'
    const first = estate(3000)
    await tally.scan(scope, first, { batch: 500, open: { shardCount: 64 } })

    const second = [...first.slice(100), ...estate(100, 5000)]
    const opened = await tally.open(scope)
    const masters = (await cluster.nodes()).filter((n) => n.role === 'master')
    const from = masters[0]!
    const to = masters[1]!
    let reshardEnded = 0
    const [answers] = await Promise.all([
      postAll(tally, opened.body.id, second, 25),
      cluster.cli(from.port, '--cluster', 'reshard', `127.0.0.1:${from.port}`, '--cluster-from', from.id,
        '--cluster-to', to.id, '--cluster-slots', '1000', '--cluster-yes').then(() => { reshardEnded = Date.now() })
    ])
    t.ok(answers.every((a) => a.status === 200 || a.status === 503), `batches answered only 200 or 503 (${answers.length} answers)`)
    t.ok(answers[0]!.at < reshardEnded, 'batches were answered while the reshard ran')
    const before = slotSet(to.slots)
    const moved = [...slotSet((await cluster.nodes()).find((n) => n.id === to.id)!.slots)].filter((s) => !before.has(s))
    t.equal(moved.length, 1000, '1,000 slots moved')
    // The scope's own keys were among those moved (its 64 shards' hash tags).
    const node = redisClient(t, `redis://127.0.0.1:${from.port}`)
    const tags = await Promise.all(Array.from({ length: 64 }, (_, k) => node.cluster('KEYSLOT', `{default/${scope}/${k}}`)))
    t.ok(tags.some((slot) => moved.includes(Number(slot))), "some of the scope's shards moved during the scan")
    const done = await tally.complete(opened.body.id)
    t.match(done.body, { status: 'completed', stats: { seen: 3000, created: 100, unchanged: 2900, deleted: 100 } })
    t.same(await liveIds(db, scope), second.map((r) => r.id).sort())
  })

  t.test('a failover that loses an acknowledged batch: nothing the scan reported is deleted, and abort + rescan is exact', async (t) => {
    const { db, tally } = await onCluster(t, cluster)
    const scope = 'aws/failover'
    const first = estate(400)
    await tally.scan(scope, first, { batch: 100, open: { shardCount: 16 } })

    // The second scan: the same 400 and a new one, NEW; its last batch will be lost.
    const opened = await tally.open(scope)
    const runId = opened.body.id as number
    await postAll(tally, runId, first.slice(0, 300), 100)
    const last = [...first.slice(300), resource('NEW')]

    // The primary that holds NEW's shard, and its replica.
    const node = redisClient(t, `redis://127.0.0.1:${cluster.ports[0]}`)
    const slot = Number(await node.cluster('KEYSLOT', `{default/${scope}/${shardOf('NEW', 16)}}`))
    const nodes = await cluster.nodes()
    const primary = nodes.find((n) => n.role === 'master' && slotSet(n.slots).has(slot))!
    const replica = nodes.find((n) => n.primaryId === primary.id)!
    // Cut the replica off: the primary acknowledges writes the replica never gets.
    await cluster.cli(primary.port, 'config', 'set', 'repl-timeout', '2')
    cluster.signal(replica.port, 'SIGSTOP')
    await waitFor(t, 'the primary lost its replica', async () =>
      (await cluster.cli(primary.port, 'info', 'replication')).includes('connected_slaves:0'), 20_000)
    const acked = await tally.ingest(runId, last, { batchId: 'last' })
    t.equal(acked.status, 200, 'the last batch was acknowledged')
    // The primary dies; the replica, which never received that batch, takes over.
    await cluster.kill(primary.port)
    cluster.signal(replica.port, 'SIGCONT')
    await cluster.cli(replica.port, 'cluster', 'failover', 'takeover').catch(() => '') // it may have taken over on its own
    await waitFor(t, 'the replica is the primary', async () =>
      (await cluster.cli(replica.port, 'info', 'replication').catch(() => '')).includes('role:master'), 20_000)
    await cluster.waitForState('ok')

    // The markers survived (written long before); the last batch's ids did not.
    let done = await tally.complete(runId)
    for (let i = 0; done.status === 503 && i < 600; i++) {
      await sleep(100)
      done = await tally.complete(runId)
    }
    t.equal(done.status, 409)
    t.match(done.body, { code: 'run_state_lost' })
    t.same(await liveIds(db, scope), [...first.map((r) => r.id), 'NEW'].sort(), 'nothing was deleted')

    // Abort and rescan, now without NEW (gone meanwhile): exact, NEW included.
    t.equal((await tally.abort(runId)).status, 200)
    const rescan = await tally.open(scope)
    t.same(new Set((await postAll(tally, rescan.body.id, first, 100)).map((a) => a.status)), new Set([200]))
    const final = await tally.complete(rescan.body.id)
    t.match(final.body, { status: 'completed', stats: { seen: 400, deleted: 1 } })
    t.same(await liveIds(db, scope), first.map((r) => r.id).sort(), 'exact: what the rescan saw, and NEW found stale')
  })

  t.test('a primary killed during a completion: retried, the completion ends exact', async (t) => {
    const { db, tally } = await onCluster(t, cluster)
    const scope = 'aws/killed-mid-completion'
    const first = estate(2000)
    await tally.scan(scope, first, { batch: 500, open: { shardCount: 32 } })
    const second = first.slice(200)
    const opened = await tally.open(scope)
    await postAll(tally, opened.body.id, second, 500)
    // The replicas have it all (each one's offset has reached its primary's): this failover loses nothing.
    // (A node an earlier test killed may still be listed: it answers nothing and is left out.)
    await waitFor(t, 'the replicas caught up', async () => {
      const offsets = (await Promise.all((await cluster.nodes()).map(async (n) =>
        ({ n, info: await cluster.cli(n.port, 'info', 'replication').catch(() => undefined) })))).filter((o) => o.info !== undefined)
      const offset = (info: string | undefined, field: string) => Number(new RegExp(`${field}:(\\d+)`).exec(info ?? '')?.[1] ?? -1)
      return offsets.filter(({ n }) => n.role !== 'master').every(({ n, info }) =>
        offset(info, 'slave_repl_offset') >= offset(offsets.find((p) => p.n.id === n.primaryId)?.info, 'master_repl_offset'))
    })

    const nodes = await cluster.nodes()
    const primary = nodes.find((n) => n.role === 'master' && nodes.some((r) => r.primaryId === n.id))!
    const completing = tally.complete(opened.body.id)
    await sleep(5)
    await cluster.kill(primary.port)
    let done = await completing
    const answers = [done.status]
    for (const deadline = Date.now() + 60_000; done.status === 503 && Date.now() < deadline; answers.push(done.status)) {
      await sleep(200)
      done = await tally.complete(opened.body.id)
    }
    t.ok(answers.every((s) => s === 200 || s === 503), `answers: ${answers.join(' ')}`)
    t.match(done.body, { status: 'completed', stats: { seen: 1800, deleted: 200 } })
    t.same(await liveIds(db, scope), second.map((r) => r.id).sort())
    await cluster.waitForState('ok')
  })

  // Last: it takes a slot range's every copy away.
  t.test('a slot with no primary: /readyz unready, batches 503 unavailable, never 500', async (t) => {
    const { tally } = await onCluster(t, cluster)
    const opened = await tally.open('aws/down', { shardCount: 16 })
    t.equal(opened.status, 201)
    const nodes = await cluster.nodes()
    const victim = nodes.find((n) => n.role === 'master')!
    await Promise.all(nodes.filter((n) => n.id === victim.id || n.primaryId === victim.id).map((n) => cluster.kill(n.port)))
    await cluster.waitForState('fail')
    await waitFor(t, '/readyz unready', async () => (await tally.call('GET', '/readyz')).status === 503)
    const res = await tally.ingest(opened.body.id, estate(200))
    t.equal(res.status, 503)
    t.match(res.body, { code: 'unavailable' })
    t.ok(res.headers['retry-after'], 'with Retry-After')
  })
})
