/** The shapes reconcile works on, independent of HTTP: those clients send are the contract's (contract.ts). */
import type { Static } from '@sinclair/typebox'
import type { Cluster, Redis } from 'ioredis'
import type { Settings } from '../config.js'
import type { BatchResultSchema, ResourceSchema } from '../contract.js'
import type { Tx } from '../db/client.js'
import type { ResourcesRepository } from '../db/resources-repository.js'
import type { RunCounts, RunRow, RunsRepository } from '../db/runs-repository.js'
import type { Keys } from './keys.js'

/** A resource as a scanner sends it, checked against the contract. */
export type ResourceIn = Static<typeof ResourceSchema>

export interface Logger {
  info (obj: object, msg?: string): void
  warn (obj: object, msg?: string): void
  error (obj: object, msg?: string): void
}

/** The configuration reconcile reads (config.ts says what each setting means). */
export type ReconcileSettings = Pick<Settings, 'RUN_TTL' | 'DEFAULT_SHARD_COUNT' | 'SEEN_SET_SIZE' | 'CACHE_BUCKET_SIZE' | 'ID_DIGEST_BITS' |
  'GUARD_MIN_BASELINE' | 'MAX_DELETE_RATIO' | 'MAX_OPEN_RUNS' | 'DELETED_RETENTION' | 'CHANGES_RETENTION'>

/** What reconcile needs, and nothing more: no Fastify, no HTTP. */
export interface ReconcileDeps {
  runs: RunsRepository
  resources: ResourcesRepository
  transaction: <T>(fn: (tx: Tx) => Promise<T>) => Promise<T>
  redis: Redis | Cluster
  keys: Keys
  log: Logger
  settings: ReconcileSettings
  /** Told once per run this instance finished (committed), not for a retried completion's answer. */
  onFinished?: (run: RunRow) => void
  /** Told how long each step of an applied batch took (metrics): one call a step, not one a Redis command. */
  onBatchStep?: (step: BatchStep, seconds: number) => void
}

/** The steps of a batch (ingest.ts): registering it, the cache read, Postgres, the sets and cache fill, the witness, recording it. */
export type BatchStep = 'begin' | 'read' | 'postgres' | 'apply' | 'witness' | 'done'

/** A run with its counters: live from Redis while it is in flight, from its row afterwards. */
export interface RunState {
  run: RunRow
  stats: RunCounts
}

export type BatchResult = Static<typeof BatchResultSchema>
