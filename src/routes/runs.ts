/** The REST surface of scan runs: thin handlers that validate, call the reconciler and shape the reply. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { TallyError } from '../errors.js'
import { accessOf, logDestructive, READERS, requireAdmin, requireScope, SCANNERS } from '../plugins/auth.js'
import { findBadValue, findOversize } from './resource-values.js'
import type { RunState } from '../reconcile/index.js'
import { Type } from '@sinclair/typebox'
import {
  BatchResultSchema, CompleteBodySchema, CreateRunBodySchema, IngestBodySchema, IngestHeadersSchema, ListRunsQuerySchema,
  problems, RUN_ID_TEXT, RunListSchema, RunParamsSchema, RunSchema, type Run
} from './schemas.js'

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
  const { reconcile, config } = fastify
  const tags = ['runs']
  const security = [{ apiKey: [] }]
  const read = { auth: READERS }
  const scan = { auth: SCANNERS }

  // JSON.parse without secure-json-parse's two scans of the whole text for `__proto__` and
  // `constructor`: the value checks below refuse those keys in the walk they make anyway.
  fastify.removeContentTypeParser('application/json')
  fastify.addContentTypeParser('application/json', { parseAs: 'string' }, fastify.getDefaultJsonParser('ignore', 'ignore'))

  // A run id is written as a plain decimal: `0x10`, `1e1` or `1.0` are not 16, 10 and 1.
  fastify.addHook('preValidation', async (request) => {
    const { id } = request.params as { id?: unknown }
    if (typeof id === 'string' && !RUN_ID_TEXT.test(id)) {
      throw new TallyError('validation_failed', `params/id must be a run id (a decimal integer from 1), not ${JSON.stringify(id.slice(0, 32))}`)
    }
  })

  // Before schema validation: Ajv would walk every key of an 800k-key attributes object (1 s)
  // before the count refused it.
  fastify.addHook('preValidation', async (request) => {
    const bad = findBadValue(request.body, config.MAX_RESOURCE_KEYS) ?? findOversize(request.body)
    if (bad !== undefined) {
      throw new TallyError('validation_failed', `body${bad.path} ${bad.message}`, { errors: [bad] })
    }
  })

  fastify.post('/runs', {
    schema: {
      tags,
      operationId: 'createRun',
      summary: 'Open a scan run for a scope',
      security,
      body: CreateRunBodySchema,
      response: { 201: Type.Ref(RunSchema), ...problems(400, 401, 403, 409, 413, 415, 429) }
    },
    config: scan
  }, async (request, reply) => {
    const access = accessOf(request)
    const { scope, shardCount, supersede } = request.body
    requireScope(access, scope)
    if (shardCount !== undefined && shardCount > config.MAX_SHARD_COUNT) {
      throw new TallyError('validation_failed', `shardCount is ${shardCount}; this server allows at most ${config.MAX_SHARD_COUNT} (MAX_SHARD_COUNT)`)
    }
    if (supersede === true) {
      requireAdmin(access, 'supersede')
      logDestructive(request, 'supersede', { scope })
    }
    const state = await reconcile.openRun({ tenant: access.tenant, ...request.body, openedBy: access.keyId })
    return reply.code(201).send(runView(state))
  })

  fastify.get('/runs', {
    schema: {
      tags,
      operationId: 'listRuns',
      summary: 'List runs, newest first',
      security,
      querystring: ListRunsQuerySchema,
      response: { 200: RunListSchema, ...problems(400, 401, 403, 429) }
    },
    config: read
  }, async (request) => {
    const access = accessOf(request)
    const { scope, status, limit, cursor } = request.query
    if (scope !== undefined) requireScope(access, scope)
    const states = await reconcile.listRuns({
      tenant: access.tenant,
      scope,
      status,
      scopeGlobs: access.scopes,
      limit: limit + 1,
      beforeId: cursor === undefined ? undefined : decodeCursor(cursor)
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
      security,
      params: RunParamsSchema,
      response: { 200: Type.Ref(RunSchema), ...problems(400, 401, 403, 404, 429) }
    },
    config: read
  }, async (request) => runView(await reconcile.getRun(request.params.id, accessOf(request))))

  fastify.post('/runs/:id/resources', {
    schema: {
      tags,
      operationId: 'ingestBatch',
      summary: 'Ingest a batch of resources into an open run',
      params: RunParamsSchema,
      security,
      headers: IngestHeadersSchema,
      body: IngestBodySchema,
      response: { 200: Type.Ref(BatchResultSchema), ...problems(400, 401, 403, 404, 409, 413, 415, 422, 429) }
    },
    config: scan
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
    return reconcile.ingestBatch(request.params.id, resources, bodyId ?? headerId, accessOf(request))
  })

  fastify.post('/runs/:id/complete', {
    schema: {
      tags,
      operationId: 'completeRun',
      summary: 'Complete a run: delete what vanished since the baseline, and make it the baseline',
      security,
      params: RunParamsSchema,
      body: CompleteBodySchema,
      response: { 200: Type.Ref(RunSchema), ...problems(400, 401, 403, 404, 409, 413, 415, 422, 429) }
    },
    config: scan,
    // An empty POST means "no options".
    preValidation: async (request) => { request.body ??= {} }
  }, async (request) => {
    const access = accessOf(request)
    const { force, maxDeleteRatio } = request.body
    const destructive = [
      ...(force === true ? ['force'] : []),
      ...(maxDeleteRatio !== undefined && maxDeleteRatio > config.MAX_DELETE_RATIO ? [`maxDeleteRatio above ${config.MAX_DELETE_RATIO}`] : [])
    ]
    if (destructive.length > 0) requireAdmin(access, destructive.join(' and '))
    // Checked before the log line, so that nobody logs an action on a run they may not see.
    const state = await reconcile.completeRun(request.params.id, request.body, access)
    if (destructive.length > 0) {
      logDestructive(request, 'complete', { runId: state.run.id, scope: state.run.scope, force, maxDeleteRatio, deleted: state.stats.deleted })
    }
    return runView(state)
  })

  fastify.post('/runs/:id/abort', {
    schema: {
      tags,
      operationId: 'abortRun',
      summary: 'Abort a run; nothing is deleted',
      security,
      params: RunParamsSchema,
      response: { 200: Type.Ref(RunSchema), ...problems(400, 401, 403, 404, 409, 429) }
    },
    config: scan
  }, async (request) => {
    const access = accessOf(request)
    const state = await reconcile.abortRun(request.params.id, access)
    if (state.run.openedBy !== access.keyId) {
      logDestructive(request, 'abort of a run opened by another key', { runId: state.run.id, scope: state.run.scope, openedBy: state.run.openedBy })
    }
    return runView(state)
  })
}

export default runs
