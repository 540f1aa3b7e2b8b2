/**
 * The naive design, for comparison only: every resource of every scan is upserted with
 * `last_seen` and `run_id`, then completion deletes the scope's rows whose `run_id` is not the
 * current one — what Tally replaces and what CloudQuery or Cartography still do. It parses and
 * validates the same request bodies as Tally and writes to the same Postgres.
 */
import fastifyPostgres from '@fastify/postgres'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type, type Static } from '@sinclair/typebox'
import type pg from 'pg'
import Fastify from 'fastify'
import { CreateRunBodySchema, IngestBodySchema, ResourceSchema, RunParamsSchema } from '../../src/contract.js'

export const NAIVE_DDL = `
create table if not exists naive_runs (
  id bigint generated always as identity primary key,
  tenant text not null default 'default',
  scope text not null,
  started_at timestamptz not null default now()
);
create table if not exists naive_resources (
  tenant text not null default 'default',
  scope text not null,
  id text not null,
  type text not null,
  name text,
  region text,
  tags jsonb not null,
  attributes jsonb not null,
  last_seen timestamptz not null,
  run_id bigint not null,
  primary key (tenant, scope, id)
);`

/**
 * Unless `--naive-bare`: the indexes a dashboard over the naive table would need, the same
 * filters Tally's GraphQL serves from its own (type, region, recency, tags), so the two designs
 * can be compared paying the same index upkeep per written row.
 */
export const NAIVE_DASHBOARD_INDEXES = `
create index if not exists naive_type_idx on naive_resources (tenant, scope, type, id);
create index if not exists naive_region_idx on naive_resources (tenant, scope, region, id);
create index if not exists naive_last_seen_idx on naive_resources (tenant, scope, last_seen);
create index if not exists naive_tags_idx on naive_resources using gin (tags jsonb_path_ops);`

/** The naive design's write: every resource of the batch upserted, with `last_seen` and `run_id`. */
export async function upsertNaive (db: Pick<pg.Pool, 'query'>, table: string, scope: string, runId: number | string, rows: Static<typeof ResourceSchema>[]) {
  await db.query(`
      insert into ${table} as r (scope, id, type, name, region, tags, attributes, last_seen, run_id)
      select $1, u.id, u.type, u.name, u.region, u.tags, u.attributes, now(), $2
      from unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::jsonb[])
           as u(id, type, name, region, tags, attributes)
      on conflict (tenant, scope, id) do update set
        type = excluded.type, name = excluded.name, region = excluded.region, tags = excluded.tags,
        attributes = excluded.attributes, last_seen = excluded.last_seen, run_id = excluded.run_id`,
  [scope, runId, rows.map((r) => r.id), rows.map((r) => r.type), rows.map((r) => r.name ?? null),
    rows.map((r) => r.region ?? null), rows.map((r) => JSON.stringify(r.tags ?? {})),
    rows.map((r) => JSON.stringify(r.attributes ?? {}))])
}

export async function buildNaiveApp (databaseUrl: string, bodyLimit = 64 * 1024 * 1024, dashboardIndexes = false) {
  const app = Fastify({ logger: { level: 'warn' }, bodyLimit }).withTypeProvider<TypeBoxTypeProvider>()
  await app.register(fastifyPostgres, { connectionString: databaseUrl, max: 10 })
  app.addSchema(ResourceSchema)
  app.addHook('onReady', async () => { await app.pg.query(dashboardIndexes ? NAIVE_DDL + NAIVE_DASHBOARD_INDEXES : NAIVE_DDL) })

  app.post('/runs', { schema: { body: CreateRunBodySchema } }, async (request, reply) => {
    const { rows } = await app.pg.query('insert into naive_runs (scope) values ($1) returning id, scope', [request.body.scope])
    return reply.code(201).send({ id: Number(rows[0].id), scope: rows[0].scope })
  })

  app.post('/runs/:id/resources', { schema: { params: RunParamsSchema, body: IngestBodySchema } }, async (request) => {
    const runId = request.params.id
    const byId = new Map(request.body.resources.map((r) => [r.id, r]))
    const rows = [...byId.values()]
    const { rows: [run] } = await app.pg.query('select scope from naive_runs where id = $1', [runId])
    await upsertNaive(app.pg.pool, 'naive_resources', run.scope, runId, rows)
    return { runId, received: request.body.resources.length }
  })

  app.post('/runs/:id/complete', {
    schema: { params: RunParamsSchema, body: Type.Optional(Type.Object({}, { additionalProperties: true })) }
  }, async (request) => {
    const runId = request.params.id
    const { rows: [run] } = await app.pg.query('select scope from naive_runs where id = $1', [runId])
    const { rowCount } = await app.pg.query('delete from naive_resources where scope = $1 and run_id <> $2', [run.scope, runId])
    return { id: runId, status: 'completed', stats: { deleted: rowCount } }
  })

  app.get('/readyz', async () => {
    await app.pg.query('select 1')
    return { status: 'ok' }
  })
  return app
}
