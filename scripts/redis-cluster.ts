/**
 * A private Redis Cluster for tests and the benchmark (`npm run bench -- --cluster`): plain
 * `redis-server` processes on free loopback ports (3 primaries, each with a replica, by
 * default), joined with `redis-cli --cluster create`, stopped by pid and their directories
 * removed at teardown.
 */
import getPort from 'get-port'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { waitForRedis } from '../src/embedded.js'

const run = promisify(execFile)

export interface ClusterNode {
  port: number
  id: string
  role: 'master' | 'slave'
  /** For a replica, the id of its primary. */
  primaryId: string | undefined
  /** Slot ranges a primary serves, as CLUSTER NODES prints them (`0-5460`). */
  slots: string[]
}

export interface PrivateCluster {
  /** `REDIS_CLUSTER_NODES` for the app: every node. */
  seeds: string
  ports: number[]
  /** The nodes as the cluster sees them now, but those it takes for failed. */
  nodes (): Promise<ClusterNode[]>
  /** `redis-cli -p port …`, its output. */
  cli (port: number, ...args: string[]): Promise<string>
  /** SIGKILLs one node. */
  kill (port: number): Promise<void>
  /** Sends a signal to one node (SIGSTOP, SIGCONT). */
  signal (port: number, signal: NodeJS.Signals): void
  /** Every node killed and started again, empty, with its slots, as after a power cut. */
  restart (): Promise<void>
  /** Waits until every node that runs says `cluster_state:<state>`. */
  waitForState (state: 'ok' | 'fail', timeoutMs?: number): Promise<void>
}

export async function startCluster (t: { teardown (fn: () => unknown): void },
  { primaries = 3, replicas = 1 }: { primaries?: number, replicas?: number } = {}): Promise<PrivateCluster> {
  const count = primaries * (1 + replicas)
  const dir = await mkdtemp(join(tmpdir(), 'tally-cluster-'))
  const children = new Map<number, ChildProcess>()
  const kill = async (port: number) => {
    const child = children.get(port)
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
  }
  t.teardown(async () => {
    await Promise.all([...children.keys()].map(kill))
    await rm(dir, { recursive: true, force: true })
  })
  // Should the parent die without its teardown (a crash), the nodes die with it.
  const orphaned = () => { for (const child of children.values()) child.kill('SIGKILL') }
  process.once('exit', orphaned)
  t.teardown(() => process.off('exit', orphaned))

  const ports: number[] = []
  const busPorts = new Map<number, number>()
  // Each node keeps its cluster configuration (nodes-<port>.conf) in dir, so a node started
  // again rejoins with its slots; its data is gone (no persistence).
  const spawnNode = (port: number) => {
    children.set(port, spawn('redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-port', String(busPorts.get(port)),
      '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '2000', '--dir', dir,
      '--save', '', '--appendonly', 'no'
    ], { stdio: 'ignore' }))
  }
  for (let i = 0; i < count; i++) {
    const port = await getPort({ host: '127.0.0.1' })
    // The bus port defaults to port + 10000, which may be taken or out of range.
    busPorts.set(port, await getPort({ host: '127.0.0.1', exclude: [port] }))
    ports.push(port)
    spawnNode(port)
  }
  const cli = async (port: number, ...args: string[]) =>
    (await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 60_000 })).stdout
  const pinged = async () => {
    for (const port of ports) await waitForRedis(`redis://127.0.0.1:${port}`, 5000)
  }
  await pinged()
  await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`),
    '--cluster-replicas', String(replicas), '--cluster-yes'], { timeout: 60_000 })

  const alive = () => ports.filter((p) => { const c = children.get(p)!; return c.exitCode === null && c.signalCode === null })
  const nodes = async () => {
    const text = await cli(alive()[0]!, 'cluster', 'nodes')
    return text.trim().split('\n').filter((line) => !/\bfail\b/.test(line.split(' ')[2]!)).map((line): ClusterNode => {
      const [id, address, flags, primaryId, , , , , ...slots] = line.split(' ')
      return {
        id: id!,
        port: Number(/:(\d+)@/.exec(address!)![1]),
        role: flags!.includes('master') ? 'master' : 'slave',
        primaryId: primaryId === '-' ? undefined : primaryId,
        slots: slots.filter((s) => /^\d/.test(s))
      }
    })
  }
  const waitForState = async (state: 'ok' | 'fail', timeoutMs = 20_000) => waitUntil(`cluster_state:${state}`, timeoutMs, async () => {
    const infos = await Promise.all(alive().map((p) => cli(p, 'cluster', 'info').catch(() => '')))
    return infos.every((info) => info.includes(`cluster_state:${state}`))
  })
  await waitForState('ok')
  // Every replica has its copy link up, so that writes from now on are replicated.
  await waitUntil('replicas in sync', 20_000, async () => {
    const infos = await Promise.all(ports.map((p) => cli(p, 'info', 'replication')))
    const linked = infos.filter((i) => i.includes('role:slave') && i.includes('master_link_status:up'))
    return linked.length === primaries * replicas
  })
  const signal = (port: number, sig: NodeJS.Signals) => { children.get(port)!.kill(sig) }
  const restart = async () => {
    await Promise.all(ports.map(kill))
    ports.forEach(spawnNode)
    await pinged()
    await waitForState('ok')
  }
  return { seeds: ports.map((p) => `127.0.0.1:${p}`).join(','), ports, nodes, cli, kill, signal, restart, waitForState }
}

async function waitUntil (what: string, timeoutMs: number, ok: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(100)
  }
}
