/** TypeBox schemas of the REST contract; every request and response type derives from these. */
import { Type, type Static } from '@sinclair/typebox'
import { problemCodes, type ProblemCode } from '../errors.js'
import { runStatuses } from '../db/schema.js'

// 1–256 chars, no whitespace, control characters, `{` or `}` (they would break Redis hash tags).
export const ScopeNameSchema = Type.String({ minLength: 1, maxLength: 256, pattern: '^[^\\s{}\\u0000-\\u001f\\u007f]+$' })

export const RunIdSchema = Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER })

export const RunStatusSchema = Type.Union(runStatuses.map((s) => Type.Literal(s)))

export const ProblemSchema = Type.Object({
  type: Type.String(),
  title: Type.String(),
  status: Type.Integer(),
  detail: Type.String(),
  code: Type.Union((Object.keys(problemCodes) as ProblemCode[]).map((c) => Type.Literal(c)))
}, { additionalProperties: true })

export const RunStatsSchema = Type.Object({
  seen: Type.Integer(),
  created: Type.Integer(),
  updated: Type.Integer(),
  unchanged: Type.Integer(),
  deleted: Type.Integer(),
  batches: Type.Integer()
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
  stats: RunStatsSchema
})

export const RunListSchema = Type.Object({
  items: Type.Array(RunSchema),
  nextCursor: Type.Union([Type.String(), Type.Null()])
})

export const CreateRunBodySchema = Type.Object({
  scope: ScopeNameSchema,
  shardCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 1024 })),
  scanner: Type.Optional(ScannerSchema),
  supersede: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

export const ListRunsQuerySchema = Type.Object({
  scope: Type.Optional(ScopeNameSchema),
  status: Type.Optional(RunStatusSchema),
  limit: Type.Integer({ minimum: 1, maximum: 500, default: 50 }),
  cursor: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,32}$' }))
}, { additionalProperties: false })

export const ResourceSchema = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 2048, pattern: '^[^\\u0000-\\u001f\\u007f]+$' }),
  type: Type.String({ minLength: 1, maxLength: 256 }),
  name: Type.Optional(Type.String({ maxLength: 1024 })),
  region: Type.Optional(Type.String({ maxLength: 64 })),
  tags: Type.Optional(Type.Record(Type.String({ maxLength: 512 }), Type.String({ maxLength: 4096 }), { maxProperties: 256 })),
  attributes: Type.Optional(Type.Record(Type.String(), Type.Unknown()))
}, { additionalProperties: false })

export const IngestBodySchema = Type.Object({
  batchId: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  resources: Type.Array(ResourceSchema, { minItems: 1 })
}, { additionalProperties: false })

export const BatchResultSchema = Type.Object({
  runId: Type.Integer(),
  received: Type.Integer(),
  created: Type.Integer(),
  updated: Type.Integer(),
  unchanged: Type.Integer(),
  duplicate: Type.Boolean()
})

export const CompleteBodySchema = Type.Object({
  expectedResources: Type.Optional(Type.Integer({ minimum: 0 })),
  maxDeleteRatio: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
  force: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

export const RunParamsSchema = Type.Object({ id: RunIdSchema })

export const HealthSchema = Type.Object({ status: Type.Literal('ok') })

export type Run = Static<typeof RunSchema>
export type CreateRunBody = Static<typeof CreateRunBodySchema>
