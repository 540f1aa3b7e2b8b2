/** The REST surface of scan runs: thin handlers that validate, call the reconciler and shape the reply. */
import type { FastifyPluginAsyncTypebox, TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { TallyError } from '../errors.js'
import { accessOf, logDestructive, READERS, requireAdmin, requireScope, SCANNERS } from '../plugins/auth.js'
import { Readable } from 'node:stream'
import { findBadResource, findBadValue, findOversize } from './resource-values.js'
import { splitBatch, SplitBatch } from '../reconcile/spans.js'
import { isUtf8 } from 'node:buffer'
import type { FastifyRequest } from 'fastify'
import type { Access } from '../auth/keys.js'
import type { BatchResult, ResourceIn, RunState } from '../reconcile/index.js'
import { lineBatches } from '../reconcile/lines.js'
import { NDJSON } from '../plugins/validation.js'
import { describe } from '../plugins/problems.js'
import { utf8Parser } from '../plugins/json-body.js'
import { findAlteredNumber } from '../reconcile/numbers.js'
import { decodeCursor, encodeCursor } from '../cursor.js'
import { Type } from '@sinclair/typebox'
import {
  BatchIdSchema, BatchResultSchema, CompleteBodySchema, CreateRunBodySchema, IngestBodySchema, IngestHeadersSchema, ListRunsQuerySchema,
  NdjsonBodySchema, problems, RUN_ID_TEXT, RunListSchema, RunParamsSchema, RunSchema, type IngestBody, type Run
} from '../contract.js'

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

/** The run id a `cursor` (cursor.ts) continues before; refused as bad input when this server did not issue it. */
function beforeRun (cursor: string): number {
  const id = decodeCursor<number>(cursor, 'number')
  if (id === undefined) throw new TallyError('validation_failed', 'cursor is not one this server issued')
  return id
}

const runs: FastifyPluginAsyncTypebox = async function (fastify) {
  const { reconcile, config } = fastify
  const tags = ['runs']
  const security = [{ apiKey: [] }]
  const read = { auth: READERS }
  const scan = { auth: SCANNERS }

  // JSON.parse without secure-json-parse's two scans of the whole text for `__proto__` and
  // `constructor`: the value checks below refuse those keys in the walk they make anyway. A
  // number JSON.parse would read as another is refused with its place (reconcile/numbers.ts).
  const parseJson = fastify.getDefaultJsonParser('ignore', 'ignore')
  const parseBody = utf8Parser((request, text, done) => {
    parseJson(request, text, (err, value) => {
      if (err !== null) return done(err, undefined)
      const altered = findAlteredNumber(text)
      if (altered !== undefined) return done(new TallyError('validation_failed', `body${altered.path} ${altered.message}`, { errors: [altered] }), undefined)
      done(null, value)
    })
  })
  fastify.removeContentTypeParser('application/json')
  fastify.addContentTypeParser('application/json', { parseAs: 'buffer' }, parseBody)
  // NDJSON is not parsed here: the ingest route reads it as a stream, a lot of lines at a time.
  fastify.addContentTypeParser(NDJSON, (_request, payload, done) => { done(null, payload) })

  // A run id is written as a plain decimal: `0x10`, `1e1` or `1.0` are not 16, 10 and 1.
  fastify.addHook('preValidation', async (request) => {
    const { id } = request.params as { id?: unknown }
    if (typeof id === 'string' && !RUN_ID_TEXT.test(id)) {
      throw new TallyError('validation_failed', `params/id must be a run id (a decimal integer from 1), not ${JSON.stringify(id.slice(0, 32))}`)
    }
  })

  // The value checks run before schema validation (every POST route has this hook): Ajv
  // would walk every key of an 800k-key attributes object (1 s) before the count refused it.
  const checkValues = async (request: FastifyRequest) => {
    // NDJSON is checked line by line (parseResource), a split JSON batch resource by resource as it is read.
    if (request.body instanceof Readable || request.body instanceof SplitBatch) return
    const bad = valueRefusal(request.body)
    if (bad !== undefined) throw bad
  }

  // A batch over MAX_BATCH is refused before anything walks it (the ingest route's first hook):
  // 5M empty resources in a 15 MB body held the event loop for 100 s in the walk and validation,
  // against 1.5 s to parse.
  const checkBatchSize = async (request: FastifyRequest) => {
    const { body } = request
    if (body instanceof Readable) return // NDJSON: read MAX_BATCH lines at a time
    tooLarge(body instanceof SplitBatch ? body.spans : (body as { resources?: unknown } | null)?.resources)
  }

  /** What JSON Schema cannot say about a parsed body (resource-values.ts), as a 400; undefined if nothing. */
  function valueRefusal (body: unknown): TallyError | undefined {
    const bad = findBadValue(body, config.MAX_RESOURCE_KEYS) ?? findOversize(body)
    return bad === undefined ? undefined : new TallyError('validation_failed', `body${bad.path} ${bad.message}`, { errors: [bad] })
  }

  fastify.post('/runs', {
    schema: {
      tags,
      operationId: 'createRun',
      summary: 'Open a scan run for a scope',
      security,
      body: CreateRunBodySchema,
      response: { 201: Type.Ref(RunSchema), ...problems(400, 401, 403, 409, 413, 415, 429) }
    },
    preValidation: checkValues,
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
      beforeId: cursor === undefined ? undefined : beforeRun(cursor)
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

  /** A batch of more than MAX_BATCH resources is refused whole (413). */
  function tooLarge (resources: unknown) {
    const max = config.MAX_BATCH
    if (Array.isArray(resources) && resources.length > max) {
      throw new TallyError('batch_too_large', `A batch holds at most ${max} resources; this one has ${resources.length}`)
    }
  }

  /** What a batch (a JSON body, or a lot of an NDJSON one) adds to the metrics, once it is acknowledged. */
  function countBatch (result: BatchResult) {
    const { metrics } = fastify
    metrics.batches.inc({ result: result.duplicate ? 'duplicate' : 'applied' })
    // A retried copy's counts are its first copy's, counted then.
    if (result.duplicate) return
    metrics.resources.inc({ outcome: 'created' }, result.created)
    metrics.resources.inc({ outcome: 'updated' }, result.updated)
    metrics.resources.inc({ outcome: 'unchanged' }, result.unchanged)
  }

  async function ingest (request: FastifyRequest, runId: number, body: unknown, headerId: string | undefined, access: Access): Promise<BatchResult> {
    if (body instanceof Readable) return ingestLines(runId, body, headerId, access)
    if (body instanceof SplitBatch) return ingestSplit(request, runId, body, headerId, access)
    // Validated by its media type's schema: a request with none (no body) is not.
    if (typeof body !== 'object' || body === null) {
      throw new TallyError('validation_failed', 'body must be a JSON object { resources }, or NDJSON (one resource per line)')
    }
    // Its size was checked before the value walk (checkBatchSize).
    const { resources, batchId: bodyId } = body as IngestBody
    const result = await reconcile.ingestBatch(runId, resources, batchIdOf(bodyId, headerId), access)
    countBatch(result)
    return result
  }

  function batchIdOf (bodyId: string | undefined, headerId: string | undefined): string | undefined {
    if (bodyId !== undefined && headerId !== undefined && bodyId !== headerId) {
      throw new TallyError('validation_failed', 'batchId and the Idempotency-Key header differ; send one, or the same in both')
    }
    return bodyId ?? headerId
  }

  /**
   * A JSON batch split into its resources' bytes: ingested as a lot of lines are, so the cache
   * recognises unchanged resources from their bytes and only the rest are parsed and checked.
   * Should one of those be refused, the body is refused as a whole body is (`refusalOf`): the
   * same problem, wherever its resources sit.
   */
  async function ingestSplit (request: FastifyRequest, runId: number, batch: SplitBatch, headerId: string | undefined, access: Access): Promise<BatchResult> {
    if (batch.batchId !== undefined && !request.compileValidationSchema(BatchIdSchema)(batch.batchId)) throw refusalOf(request, batch)
    const parse = (span: Buffer, index: number) => {
      try {
        return parseResource(span, `body /resources/${index}`)
      } catch (err) {
        if (!(err instanceof TallyError)) throw err
        throw refusalOf(request, batch) ?? err
      }
    }
    const result = await reconcile.ingestLines(runId, { lines: batch.spans, first: 0, parse }, batchIdOf(batch.batchId, headerId), access)
    countBatch(result)
    return result
  }

  /** What refuses a split body when it is read whole, as a body that is not split is: parsed, walked, then validated. */
  function refusalOf (request: FastifyRequest, batch: SplitBatch): Error | undefined {
    let refusal: Error | undefined
    let value: unknown
    parseBody(request, batch.body, (err, parsed) => { refusal = err ?? undefined; value = parsed })
    if (refusal !== undefined) return refusal
    const bad = valueRefusal(value)
    if (bad !== undefined) return bad
    const validate = request.compileValidationSchema(IngestBodySchema, 'body')
    if (validate(value)) return undefined
    // As Fastify reports a body its schema refuses (plugins/problems.ts describes it).
    return Object.assign(new Error('body is not a batch'), { statusCode: 400, validation: validate.errors, validationContext: 'body' })
  }

  /** A resource of an NDJSON line or a split JSON body, parsed and checked as a JSON body's resources are; a 400 if it is not one. */
  function parseResource (bytes: Buffer, where: string): ResourceIn {
    const text = bytes.toString('utf8') // UTF-8: lineBatches and the JSON parser checked it
    let value: unknown
    try {
      value = JSON.parse(text)
    } catch {
      throw new TallyError('validation_failed', `${where} is not JSON`)
    }
    const altered = findAlteredNumber(text)
    if (altered !== undefined) throw new TallyError('validation_failed', `${where}: ${altered.path} ${altered.message}`, { errors: [altered] })
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new TallyError('validation_failed', `${where} must be a JSON object, a resource`)
    }
    const bad = findBadResource(value, config.MAX_RESOURCE_KEYS)
    if (bad !== undefined) throw new TallyError('validation_failed', `${where}: ${bad.path} ${bad.message}`, { errors: [bad] })
    if (!fastify.validateResource(value)) {
      const error = fastify.validateResource.errors?.[0]
      const described = error === undefined ? { path: '/', message: 'is not a resource' } : describe(error)
      throw new TallyError('validation_failed', `${where}: ${described.path === '/' ? '' : `${described.path} `}${described.message}`)
    }
    return value as ResourceIn
  }

  const parseLine = (line: Buffer, index: number) => parseResource(line, `line ${index + 1}`)

  /**
   * An NDJSON body: read MAX_BATCH lines at a time, each lot ingested as a batch before the next
   * is read (with a batch id, lot k is the batch `<id>#k`). A lot refused refuses the request;
   * the lots before it stay applied, and the problem says how many lines they held.
   */
  async function ingestLines (runId: number, body: Readable, batchId: string | undefined, access: Access): Promise<BatchResult> {
    const total = { runId, received: 0, created: 0, updated: 0, unchanged: 0, duplicate: true }
    let lot = 0
    try {
      for await (const lines of lineBatches(body, config.MAX_BATCH, config.BODY_LIMIT)) {
        const result = await reconcile.ingestLines(runId, { lines, first: total.received, parse: parseLine },
          batchId === undefined ? undefined : `${batchId}#${lot++}`, access)
        countBatch(result)
        total.received += result.received
        total.created += result.created
        total.updated += result.updated
        total.unchanged += result.unchanged
        total.duplicate &&= result.duplicate
      }
    } catch (err) {
      if (!(err instanceof TallyError) || total.received === 0) throw err
      throw new TallyError(err.code, `${err.message} (the ${total.received} lines before it were applied)`, { ...err.extra, appliedLines: total.received })
    }
    if (total.received === 0) throw new TallyError('validation_failed', 'The body holds no resource: send one JSON object per line')
    return total
  }

  // The ingest route's JSON bodies are split into their resources' bytes where they can be
  // (reconcile/spans.ts): a resource the cache recognises from its bytes is never parsed.
  await fastify.register(async function ingestRoute (context) {
    const scope = context.withTypeProvider<TypeBoxTypeProvider>()
    scope.removeContentTypeParser('application/json')
    scope.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body: Buffer, done) => {
      const split = isUtf8(body) ? splitBatch(body) : undefined
      if (split !== undefined) return done(null, split)
      parseBody(request, body, done)
    })

    scope.post('/runs/:id/resources', {
      schema: {
        tags,
        operationId: 'ingestBatch',
        summary: 'Ingest a batch of resources into an open run',
        params: RunParamsSchema,
        security,
        headers: IngestHeadersSchema,
        body: { content: { 'application/json': { schema: IngestBodySchema }, [NDJSON]: { schema: NdjsonBodySchema } } },
        response: { 200: Type.Ref(BatchResultSchema), ...problems(400, 401, 403, 404, 409, 413, 415, 422, 429) }
      },
      config: scan,
      preValidation: [checkBatchSize, checkValues]
    }, async (request) => {
      const end = fastify.metrics.batchSeconds.startTimer()
      try {
        return await ingest(request, request.params.id, request.body, request.headers['idempotency-key'], accessOf(request))
      } finally {
        end()
      }
    })
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
    // An empty POST means "no options", with `content-type: application/json` too (Fastify's
    // JSON parser would refuse an empty body): no body, no parsing.
    preParsing: async (request, _reply, payload) => {
      const { headers } = request
      if (headers['transfer-encoding'] === undefined && (headers['content-length'] ?? '0') === '0') delete headers['content-type']
      return payload
    },
    preValidation: [async (request) => { request.body ??= {} }, checkValues]
  }, async (request) => {
    const access = accessOf(request)
    const { force, maxDeleteRatio } = request.body
    const destructive = [
      ...(force === true ? ['force'] : []),
      ...(maxDeleteRatio !== undefined && maxDeleteRatio > config.MAX_DELETE_RATIO ? [`maxDeleteRatio above ${config.MAX_DELETE_RATIO}`] : [])
    ]
    if (destructive.length > 0) requireAdmin(access, destructive.join(' and '))
    // Checked before the log line, so that nobody logs an action on a run they may not see.
    const end = fastify.metrics.completionSeconds.startTimer()
    const state = await reconcile.completeRun(request.params.id, request.body, access)
    end()
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
    config: scan,
    // It takes no options, but a body it is sent is checked like every route's.
    preValidation: checkValues
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
