/** A private redis-server on a free loopback port, for tests that stop or disturb Redis. */
import getPort from 'get-port'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'

export interface PrivateRedis {
  url: string
  stop (): Promise<void>
}

export async function startRedis (t: { teardown (fn: () => unknown): void }): Promise<PrivateRedis> {
  const port = await getPort({ host: '127.0.0.1' })
  const child: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGKILL')
    await once(child, 'exit')
  }
  t.teardown(stop)
  const url = `redis://127.0.0.1:${port}`
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  probe.on('error', () => {})
  for (const deadline = Date.now() + 5000; ; await sleep(50)) {
    try {
      await probe.connect()
      await probe.ping()
      break
    } catch (err) {
      probe.disconnect()
      if (Date.now() > deadline) throw err
    }
  }
  probe.disconnect()
  return { url, stop }
}
