/** What a scan costs, read from Postgres, Redis and /proc. */
import { readFile } from 'node:fs/promises'
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

/** CPU seconds (user + system) and resident memory of a process. */
export async function processUsage (pid: number): Promise<{ cpuSec: number, rssMb: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(fields[11]) + Number(fields[12])
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
  return { cpuSec: ticks / 100, rssMb: Math.round(rssKb / 1024) }
}

export function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!
}
