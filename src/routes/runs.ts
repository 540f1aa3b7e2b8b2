/** The REST surface of scan runs: thin handlers that validate, call the reconciler and shape the reply. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { TallyError } from '../errors.js'
import { findBadValue, findOversize } from './resource-values.js'
import type { RunState } from '../reconcile/index.js'
import { Type } from '@sinclair/typebox'
import {
  BatchResultSchema, CompleteBodySchema, CreateRunBodySchema, IngestBodySchema, IngestHeadersSchema, ListRunsQuerySchema,
  problems, RunListSchema, RunParamsSchema, RunSchema, type Run
} from './schemas.js'

// Until authentication exists every caller is the default tenant.
const TENANT = 'default'

export function runView ({ run, stats }: RunState): Run {
  return {
    id: run.id,
    scope: run.scope,
    status: run.status,
    shardCount: run.shardCount,
    baselineRunId: run.baselineRunId,
    scanner: run.scannerName === null ? null : { name: run.scannerName, ...(run.scannerVersion === null ? {} : { version: run.scannerVersion }) },
    startedAt: run.startedAt.toISOString(),
    completedAt: run.completedAt?.toISOString() ?? null,
    skip: run.skip,
    stats
  }
}

const encodeCursor = (id: number) => Buffer.from(String(id)).toString('base64url')
function decodeCursor (cursor: string): number {
  const id = Number(Buffer.from(cursor, 'base64url').toString())
  if (!Number.isSafeInteger(id) || id < 1) throw new TallyError('validation_failed', 'cursor is not one this server issued')
  return id
}

const runs: FastifyPluginAsyncTypebox = async function (fastify) {
  const { reconcile } = fastify
  const tags = ['runs']

  fastify.addHook('preHandler', async (request) => {
    const bad = findBadValue(request.body) ?? findOversize(request.body)
    if (bad !== undefined) {
      throw new TallyError('validation_failed', `body${bad.path} ${bad.message}`, { errors: [bad] })
    }
  })

  fastify.post('/runs', {
    schema: {
      tags,
      operationId: 'createRun',
      summary: 'Open a scan run for a scope',
      body: CreateRunBodySchema,
      response: { 201: Type.Ref(RunSchema), ...problems(400, 409, 413, 415) }
    }
  }, async (request, reply) => {
    const state = await reconcile.openRun({ tenant: TENANT, ...request.body })
    return reply.code(201).send(runView(state))
  })

  fastify.get('/runs', {
    schema: {
      tags,
      operationId: 'listRuns',
      summary: 'List runs, newest first',
      querystring: ListRunsQuerySchema,
      response: { 200: RunListSchema, ...problems(400) }
    }
  }, async (request) => {
    const { scope, status, limit, cursor } = request.query
    const states = await reconcile.listRuns({
      tenant: TENANT, scope, status, limit: limit + 1, beforeId: cursor === undefined ? undefined : decodeCursor(cursor)
    })
    const page = states.slice(0, limit)
    const last = page[page.length - 1]
    return {
      items: page.map(runView),
      nextCursor: states.length > limit && last !== undefined ? encodeCursor(last.run.id) : null
    }
  })

  fastify.get('/runs/:id', {
    schema: {
      tags,
      operationId: 'getRun',
      summary: 'Read a run and its counters',
      params: RunParamsSchema,
      response: { 200: Type.Ref(RunSchema), ...problems(400, 404) }
    }
  }, async (request) => runView(await reconcile.getRun(request.params.id)))

  fastify.post('/runs/:id/resources', {
    schema: {
      tags,
      operationId: 'ingestBatch',
      summary: 'Ingest a batch of resources into an open run',
      params: RunParamsSchema,
      headers: IngestHeadersSchema,
      body: IngestBodySchema,
      response: { 200: Type.Ref(BatchResultSchema), ...problems(400, 404, 409, 413, 415, 422) }
    }
  }, async (request) => {
    const { resources, batchId: bodyId } = request.body
    const headerId = request.headers['idempotency-key']
    const max = fastify.config.MAX_BATCH
    if (resources.length > max) {
      throw new TallyError('batch_too_large', `A batch holds at most ${max} resources; this one has ${resources.length}`)
    }
    if (bodyId !== undefined && headerId !== undefined && bodyId !== headerId) {
      throw new TallyError('validation_failed', 'batchId and the Idempotency-Key header differ; send one, or the same in both')
    }
    return reconcile.ingestBatch(request.params.id, resources, bodyId ?? headerId)
  })

  fastify.post('/runs/:id/complete', {
    schema: {
      tags,
      operationId: 'completeRun',
      summary: 'Complete a run: delete what vanished since the baseline, and make it the baseline',
      params: RunParamsSchema,
      body: CompleteBodySchema,
      response: { 200: Type.Ref(RunSchema), ...problems(400, 404, 409, 413, 415, 422) }
    },
    // An empty POST means "no options".
    preValidation: async (request) => { request.body ??= {} }
  }, async (request) => runView(await reconcile.completeRun(request.params.id, request.body)))

  fastify.post('/runs/:id/abort', {
    schema: {
      tags,
      operationId: 'abortRun',
      summary: 'Abort a run; nothing is deleted',
      params: RunParamsSchema,
      response: { 200: Type.Ref(RunSchema), ...problems(400, 404, 409) }
    }
  }, async (request) => runView(await reconcile.abortRun(request.params.id)))
}

export default runs
