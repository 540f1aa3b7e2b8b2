/** The real server as a child process (`npm start`'s command), for tests that kill and restart it. */
import getPort from 'get-port'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

const ROOT = new URL('..', import.meta.url)

export interface ServerProcess {
  url: string
  child: ChildProcess
  output (): string
  kill (signal?: NodeJS.Signals): Promise<void>
}

export async function waitReady (url: string, timeoutMs = 20_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; ; await sleep(50)) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) return
    } catch {}
    if (Date.now() > deadline) throw new Error(`${url} not ready after ${timeoutMs} ms`)
  }
}

/** Starts `node --import tsx src/server.ts` (or `entry`, e.g. the compiled dist/server.js) with `env` on a free port; killed at teardown. */
export async function startServer (t: { teardown (fn: () => unknown): void }, env: Record<string, string>, port?: number,
  entry: string[] = ['--import', 'tsx', 'src/server.ts']): Promise<ServerProcess> {
  const listen = port ?? await getPort({ host: '127.0.0.1' })
  // Never the project's own .data: the first start writes its admin key to DATA_DIR.
  if (env.DATA_DIR === undefined) {
    const dataDir = mkdtempSync(join(tmpdir(), 'tally-server-'))
    env = { ...env, DATA_DIR: dataDir }
    t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  }
  const child = spawn(process.execPath, entry, {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...env, PORT: String(listen), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout!.on('data', (d) => { output += d })
  child.stderr!.on('data', (d) => { output += d })
  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill(signal)
    await exited
  }
  t.teardown(() => kill())
  const url = `http://127.0.0.1:${listen}`
  try {
    await waitReady(url)
  } catch (err) {
    await kill()
    throw new Error(`${(err as Error).message}; server said:\n${output}`)
  }
  return { url, child, output: () => output, kill }
}
