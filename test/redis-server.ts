/** A private redis-server on a free loopback port, for tests that stop, restart or flush Redis. */
import getPort from 'get-port'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { waitForRedis } from '../src/embedded.js'

export interface PrivateRedis {
  url: string
  port: number
  /** SIGKILLs the server: everything in it is lost (no persistence). */
  stop (): Promise<void>
  /** A new empty server on the same port, as after a crash and restart. */
  start (): Promise<void>
  restart (): Promise<void>
}

/** `args`: more redis-server options (`['--maxmemory-policy', 'allkeys-lru']`). */
export async function startRedis (t: { teardown (fn: () => unknown): void }, args: string[] = []): Promise<PrivateRedis> {
  const port = await getPort({ host: '127.0.0.1' })
  const url = `redis://127.0.0.1:${port}`
  let child: ChildProcess | undefined
  const stop = async () => {
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
  }
  const start = async () => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...args], { stdio: 'ignore' })
    await waitForRedis(url, 5000)
  }
  t.teardown(stop)
  await start()
  return { url, port, stop, start, restart: async () => { await stop(); await start() } }
}
