/**
 * The reconciler: everything Tally does to runs and resources, as plain functions over narrow
 * dependencies. Routes, tests and benchmarks all call these; none of them knows about HTTP.
 */
import type { Access } from '../auth/keys.js'
import { completeRun, type CompleteOptions } from './complete.js'
import { createIngest } from './ingest.js'
import { abortRun, getRun, listRuns, openRun, type OpenRunInput } from './runs.js'
import { sweep } from './sweep.js'
import type { ReconcileDeps } from './types.js'

export function createReconciler (deps: ReconcileDeps) {
  const { ingestBatch, ingestLines } = createIngest(deps)
  return {
    openRun: (input: OpenRunInput) => openRun(deps, input),
    getRun: (id: number, access?: Access) => getRun(deps, id, access),
    listRuns: (filter: Parameters<typeof listRuns>[1]) => listRuns(deps, filter),
    ingestBatch,
    ingestLines,
    completeRun: (id: number, opts?: CompleteOptions, access?: Access) => completeRun(deps, id, opts, access),
    abortRun: (id: number, access?: Access) => abortRun(deps, id, access),
    sweep: (now?: number) => sweep(deps, now)
  }
}

export type Reconciler = ReturnType<typeof createReconciler>
export type { BatchResult, ReconcileDeps, ResourceIn, RunState } from './types.js'
export type { LineBatch } from './ingest.js'
