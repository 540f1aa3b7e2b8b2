/** What a scan costs, read from Postgres, Redis and /proc. */
import { readdir, readFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import { Cluster, type Redis } from 'ioredis'

export interface TableCounters {
  inserted: number
  updated: number
  deleted: number
  dead: number
}

export async function tableCounters (db: pg.Client, table: string): Promise<TableCounters> {
  const { rows } = await db.query(
    `select n_tup_ins::float8 as inserted, n_tup_upd::float8 as updated, n_tup_del::float8 as deleted,
            n_dead_tup::float8 as dead
     from pg_stat_user_tables where relname = $1`, [table])
  return rows[0] ?? { inserted: 0, updated: 0, deleted: 0, dead: 0 }
}

/** Current WAL position in bytes and the next transaction id (reading it consumes none). */
export async function walAndXid (db: pg.Client): Promise<{ wal: number, xid: number }> {
  const { rows } = await db.query(
    `select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 as wal,
            txid_snapshot_xmax(txid_current_snapshot())::float8 as xid`)
  return rows[0]
}

/**
 * Redis used_memory once objects UNLINKed a moment ago have really been freed (lazyfree); on a
 * cluster, summed over the primaries (replicas hold as much again).
 */
export async function redisUsedMemory (redis: Redis | Cluster): Promise<number> {
  if (redis instanceof Cluster) {
    const each = await Promise.all(redis.nodes('master').map((node) => redisUsedMemory(node)))
    return each.reduce((a, b) => a + b, 0)
  }
  for (const deadline = Date.now() + 10_000; ; await sleep(50)) {
    const info = await redis.info('memory')
    const pending = Number(/lazyfree_pending_objects:(\d+)/.exec(info)?.[1] ?? 0)
    if (pending === 0 || Date.now() > deadline) return Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0)
  }
}

/** The fields of /proc/<pid>/stat after the command name (which is in parentheses and may hold spaces): [0] is state, [1] ppid, [11] utime. */
async function procStat (pid: number): Promise<string[]> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
}

const TICKS_PER_SEC = 100

/** CPU seconds (user + system) and resident memory of a process. */
export async function processUsage (pid: number): Promise<{ cpuSec: number, rssMb: number }> {
  const fields = await procStat(pid)
  const ticks = Number(fields[11]) + Number(fields[12])
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
  return { cpuSec: ticks / TICKS_PER_SEC, rssMb: Math.round(rssKb / 1024) }
}

/**
 * CPU seconds PostgreSQL has used so far, all its processes together: the postmaster's own and
 * its reaped children's (cutime, cstime: backends that have exited), plus each living child's
 * (backends, checkpointer, WAL writer, autovacuum). Null when the server is not on this machine.
 */
export async function postgresCpuSec (db: pg.Client): Promise<number | null> {
  try {
    const { rows } = await db.query('select pg_backend_pid() as pid')
    const postmaster = Number((await procStat(rows[0].pid))[1])
    const own = await procStat(postmaster)
    let ticks = Number(own[11]) + Number(own[12]) + Number(own[13]) + Number(own[14])
    for (const entry of await readdir('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      const fields = await procStat(Number(entry)).catch(() => undefined) // it may have exited since readdir
      if (fields !== undefined && Number(fields[1]) === postmaster) ticks += Number(fields[11]) + Number(fields[12])
    }
    return ticks / TICKS_PER_SEC
  } catch {
    return null
  }
}

/** CPU seconds Redis has used so far (INFO cpu, main process); on a cluster, summed over the primaries. */
export async function redisCpuSec (redis: Redis | Cluster): Promise<number> {
  if (redis instanceof Cluster) {
    const each = await Promise.all(redis.nodes('master').map((node) => redisCpuSec(node)))
    return each.reduce((a, b) => a + b, 0)
  }
  const info = await redis.info('cpu')
  return Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? 0) + Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? 0)
}

export function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!
}
