/**
 * The contract: TypeBox schemas of what clients send and get back, free of Fastify. The REST
 * routes validate and document with them, and the types of reconcile and the tests are their
 * `Static<>`, so a shape is written once. The shared ones carry an `$id`: they are registered
 * once (`sharedSchemas`), referenced with `Type.Ref`, and become named components of the
 * OpenAPI document.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { problemCodes, type ProblemCode } from './errors.js'
import { runStatuses } from './db/schema.js'

// 1–256 bytes (checked in bytes by findOversize), no whitespace, control characters, `{` or `}` (they would break Redis hash tags).
const SCOPE_PATTERN = '^[^\\s{}\\u0000-\\u001f\\u007f]+$'
const ID_PATTERN = '^[^\\u0000-\\u001f\\u007f]+$'
const CURSOR_PATTERN = '^[A-Za-z0-9_-]{1,32}$'
const BATCH_ID_PATTERN = '^[\\x21-\\x7e]+$'

/** What each pattern asks for, in words: a validation error says this, not the regular expression. */
export const patternWords: Record<string, string> = {
  [SCOPE_PATTERN]: 'must be a scope name without whitespace, braces ({ }) or control characters, e.g. aws/123456789012',
  [ID_PATTERN]: 'must not hold control characters (U+0000–U+001F, U+007F)',
  [CURSOR_PATTERN]: "must be a cursor as a previous page's nextCursor gave it",
  [BATCH_ID_PATTERN]: 'must be printable ASCII without spaces'
}

export const ScopeNameSchema = Type.String({ minLength: 1, maxLength: 256, pattern: SCOPE_PATTERN })

export const RunIdSchema = Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER })
/** A run id as it may appear in a path: decimal digits, no sign, exponent, point or leading zero. */
export const RUN_ID_TEXT = /^[1-9][0-9]{0,15}$/

export const RunStatusSchema = Type.Union(runStatuses.map((s) => Type.Literal(s)))

export const ProblemSchema = Type.Object({
  type: Type.String({ description: 'urn:tally:problem:<code>' }),
  title: Type.String(),
  status: Type.Integer(),
  detail: Type.String(),
  code: Type.Unsafe<ProblemCode>({ type: 'string', enum: Object.keys(problemCodes), description: 'stable, for programs' })
}, { $id: 'Problem', additionalProperties: true, description: 'RFC 9457 problem details; some codes add fields (openRunId; seen, expected; validation_failed: errors [{path, message}], the first 20, and errorCount; mass_deletion_guard: stale, baseline, byType [{type, count}] over the first `described` held-back ids, sample ids)' })

export const RunStatsSchema = Type.Object({
  seen: Type.Integer(),
  created: Type.Integer(),
  updated: Type.Integer(),
  unchanged: Type.Integer(),
  deleted: Type.Integer(),
  batches: Type.Integer(),
  skipped: Type.Integer({ description: 'resources not seen but kept because they lie in a skipped partition' })
}, { $id: 'RunStats' })

export const SkipPartitionSchema = Type.Object({
  type: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  region: Type.Optional(Type.String({ minLength: 1, maxLength: 64 }))
}, {
  $id: 'SkipPartition',
  additionalProperties: false,
  minProperties: 1,
  description: 'A partition the scanner failed to enumerate: every resource of this type and/or region'
})

const ScannerSchema = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 256 }),
  version: Type.Optional(Type.String({ maxLength: 256 }))
}, { additionalProperties: false })

export const RunSchema = Type.Object({
  id: Type.Integer(),
  scope: Type.String(),
  status: RunStatusSchema,
  shardCount: Type.Integer(),
  baselineRunId: Type.Union([Type.Integer(), Type.Null()]),
  scanner: Type.Union([ScannerSchema, Type.Null()]),
  startedAt: Type.String({ format: 'date-time' }),
  completedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  skip: Type.Array(Type.Ref(SkipPartitionSchema), { description: 'partitions the completion was told to leave alone' }),
  stats: Type.Ref(RunStatsSchema)
}, { $id: 'Run' })

export const RunListSchema = Type.Object({
  items: Type.Array(Type.Ref(RunSchema)),
  nextCursor: Type.Union([Type.String(), Type.Null()])
})

export const CreateRunBodySchema = Type.Object({
  scope: ScopeNameSchema,
  shardCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 1024, description: 'at most MAX_SHARD_COUNT (default 256)' })),
  scanner: Type.Optional(ScannerSchema),
  supersede: Type.Optional(Type.Boolean({ description: 'abort the scope\'s open run first; admin keys only' }))
}, { additionalProperties: false })

export const ListRunsQuerySchema = Type.Object({
  scope: Type.Optional(ScopeNameSchema),
  status: Type.Optional(RunStatusSchema),
  limit: Type.Integer({ minimum: 1, maximum: 500, default: 50 }),
  cursor: Type.Optional(Type.String({ pattern: CURSOR_PATTERN }))
}, { additionalProperties: false })

export const ResourceSchema = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 1024, pattern: ID_PATTERN, description: 'at most 1,024 bytes in UTF-8' }),
  type: Type.String({ minLength: 1, maxLength: 256, description: 'at most 256 bytes in UTF-8' }),
  name: Type.Optional(Type.String({ maxLength: 1024 })),
  region: Type.Optional(Type.String({ maxLength: 64, description: 'at most 64 bytes in UTF-8' })),
  tags: Type.Optional(Type.Record(Type.String({ maxLength: 512 }), Type.String({ maxLength: 4096 }), { maxProperties: 256 })),
  attributes: Type.Optional(Type.Record(Type.String(), Type.Unknown()))
}, { $id: 'Resource', additionalProperties: false })

export const BatchIdSchema = Type.String({
  minLength: 1,
  maxLength: 128,
  pattern: BATCH_ID_PATTERN,
  description: 'Names the batch so that a retried copy applies and counts once; unique per batch within a run'
})

export const IngestBodySchema = Type.Object({
  batchId: Type.Optional(BatchIdSchema),
  resources: Type.Array(Type.Ref(ResourceSchema), { minItems: 1 })
}, { additionalProperties: false })

export type IngestBody = Static<typeof IngestBodySchema>

export const NdjsonBodySchema = Type.String({
  description: 'One Resource per line (NDJSON), streamed: read MAX_BATCH lines at a time, each lot applied before the next ' +
    'is read. A line that begins `{"id":"<id>"` (no escapes in the id) and is byte for byte what this scope was last sent ' +
    'for that id is recognised without being parsed. With a batch id (Idempotency-Key), lot k is the batch `<id>#k`. ' +
    'A line refused refuses the request; the lots before it stay applied (`appliedLines`).'
})

export const IngestHeadersSchema = Type.Object({
  'idempotency-key': Type.Optional(BatchIdSchema)
})

export const BatchResultSchema = Type.Object({
  runId: Type.Integer(),
  received: Type.Integer(),
  created: Type.Integer(),
  updated: Type.Integer(),
  unchanged: Type.Integer(),
  duplicate: Type.Boolean({ description: 'true when this batch id was applied before: the counts are those of the first copy' })
}, { $id: 'BatchResult' })

export const CompleteBodySchema = Type.Object({
  expectedResources: Type.Optional(Type.Integer({ minimum: 0 })),
  maxDeleteRatio: Type.Optional(Type.Number({ minimum: 0, maximum: 1, description: 'above the server\'s MAX_DELETE_RATIO: admin keys only' })),
  force: Type.Optional(Type.Boolean({ description: 'complete past the mass-deletion guard; admin keys only' })),
  skip: Type.Optional(Type.Array(Type.Ref(SkipPartitionSchema), {
    maxItems: 1000,
    description: 'partitions the scanner failed to enumerate: nothing in them is deleted'
  }))
}, { additionalProperties: false })

export const RunParamsSchema = Type.Object({ id: RunIdSchema })

export const HealthSchema = Type.Object({ status: Type.Literal('ok') })

export const sharedSchemas: TSchema[] = [ProblemSchema, RunStatsSchema, SkipPartitionSchema, RunSchema, ResourceSchema, BatchResultSchema]

/**
 * Problem responses for the given statuses, always with 500 and 503: each sent as
 * application/problem+json, which the OpenAPI document then says too.
 */
export function problems (...statuses: number[]) {
  const problem = {
    description: 'A problem (RFC 9457); `code` says which',
    content: { 'application/problem+json': { schema: Type.Ref(ProblemSchema) } }
  }
  return Object.fromEntries([...statuses, 500, 503].map((s) => [s, problem]))
}

export type Run = Static<typeof RunSchema>
