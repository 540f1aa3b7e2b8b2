/** The GraphQL inventory API, on rows ingested through the REST API. */
import { getIntrospectionQuery } from 'graphql'
import t from 'tap'
import { api, bearer, build, countStatements, gql, resource, sqlClient } from './helper.js'

const SCOPE = 'aws/graphql'
const TYPES = ['aws::s3::bucket', 'aws::ec2::instance', 'aws::iam::role']
const REGIONS = ['eu-west-1', 'us-east-1']

t.test('graphql', async (t) => {
  const app = await build(t, { GRAPHQL_MAX_COST: '20000' })
  const db = await sqlClient(t, app)
  const tally = api(app)
  const all = Array.from({ length: 3000 }, (_, i) => resource(`arn:aws:x:::r-${String(i).padStart(5, '0')}`, {
    type: TYPES[i % 3]!, region: REGIONS[i % 2]!, tags: { team: i % 5 === 0 ? 'data' : 'web' }
  }))
  await tally.scan(SCOPE, all, { batch: 1000 })
  const second = await tally.scan(SCOPE, all.slice(0, 2900), { batch: 1000 })
  for (let i = 0; i < 3; i++) await tally.scan('aws/other', [resource(`o${i}`)])

  const walk = async (filter: string) => {
    const ids: string[] = []
    let after: string | null = null
    for (let pages = 0; pages < 100; pages++) {
      const res = await gql(app, `query ($after: String) { resources(scope: "${SCOPE}", ${filter} first: 500, after: $after) {
        edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }`, { after })
      if (res.errors) throw new Error(JSON.stringify(res.errors))
      const conn = res.data.resources
      ids.push(...conn.edges.map((e: { node: { id: string } }) => e.node.id))
      if (!conn.pageInfo.hasNextPage) break
      after = conn.pageInfo.endCursor
    }
    return ids
  }
  const truth = async (where: string, params: unknown[] = []) =>
    (await db.query(`select id from resources where scope = '${SCOPE}' and ${where} order by id`, params)).rows.map((r: { id: string }) => r.id)

  t.test('walking every page returns each live row once, with every filter', async (t) => {
    t.same(await walk(''), await truth('deleted_at is null'))
    t.equal((await walk('')).length, 2900)
    t.same(await walk('type: "aws::ec2::instance",'), await truth("deleted_at is null and type = 'aws::ec2::instance'"))
    t.same(await walk('region: "us-east-1",'), await truth("deleted_at is null and region = 'us-east-1'"))
    t.same(await walk('tag: { key: "team", value: "data" },'), await truth("deleted_at is null and tags->>'team' = 'data'"))
    t.same(await walk('idPrefix: "arn:aws:x:::r-001",'), await truth("deleted_at is null and id like 'arn:aws:x:::r-001%'"))
    t.equal((await walk('idPrefix: "arn:aws:x:::r-001",')).length, 100)
    t.same(await walk('type: "aws::s3::bucket", region: "eu-west-1", tag: { key: "team", value: "web" },'),
      await truth("deleted_at is null and type = 'aws::s3::bucket' and region = 'eu-west-1' and tags->>'team' = 'web'"))
    t.same(await walk('includeDeleted: true,'), await truth('true'))
    t.equal((await walk('includeDeleted: true,')).length, 3000)
    const since = (await db.query("select max(changed_at) - interval '1 microsecond' as s from resources")).rows[0].s.toISOString()
    t.same(await walk(`changedSince: "${since}",`), await truth('deleted_at is null and changed_at > $1', [since]))
  })

  t.test('a resource with its runs, deleted ones included; totalCount; summary', async (t) => {
    const res = await gql(app, `{ resource(scope: "${SCOPE}", id: "arn:aws:x:::r-02950") {
      id type deletedAt deletedRun { id status } firstSeenRun { id } lastChangedRun { id } tags attributes } }`)
    t.match(res.data.resource, { id: 'arn:aws:x:::r-02950', deletedAt: String, deletedRun: { id: String(second.id), status: 'completed' }, tags: { team: 'data' }, attributes: { size: 't3.micro' } })
    const count = await gql(app, `{ resources(scope: "${SCOPE}", type: "aws::iam::role", first: 1) { totalCount } }`)
    t.equal(count.data.resources.totalCount, (await truth("deleted_at is null and type = 'aws::iam::role'")).length)
    const summary = await gql(app, `{ summary(scope: "${SCOPE}") { total byType { type count } byRegion { region count } } }`)
    const byType = (await db.query(`select type, count(*)::int as count from resources where scope = '${SCOPE}' and deleted_at is null group by type order by type`)).rows
    t.equal(summary.data.summary.total, 2900)
    t.same([...summary.data.summary.byType].sort((a: any, b: any) => a.type.localeCompare(b.type)), byType)
    t.equal(summary.data.summary.byRegion.reduce((n: number, r: { count: number }) => n + r.count, 0), 2900)
  })

  t.test('runs and scopes, with durations and baselines', async (t) => {
    const runs = await gql(app, `{ runs(scope: "${SCOPE}") { edges { node { id status durationMs baselineRun { id } stats { seen deleted } } } } }`)
    t.match(runs.data.runs.edges[0].node, { id: String(second.id), status: 'completed', durationMs: Number, stats: { seen: 2900, deleted: 100 } })
    t.equal(runs.data.runs.edges[0].node.baselineRun.id, runs.data.runs.edges[1].node.id)
    const scopes = await gql(app, '{ scopes { edges { node { scope resourceCount baselineRun { id } lastCompletedAt } } } }')
    t.match(scopes.data.scopes.edges.map((e: any) => e.node), [
      { scope: 'aws/graphql', resourceCount: 2900, baselineRun: { id: String(second.id) } },
      { scope: 'aws/other', resourceCount: 1 }
    ])
  })

  t.test('loaders: a page costs the same number of statements for 2 rows or 100', async (t) => {
    for (let i = 0; i < 100; i++) await tally.scan(`aws/many-${i}`, [resource('x')])
    const query = (n: number) => `{ runs(first: ${n}) { edges { node { id baselineRun { id baselineRun { id } } } } }
      resources(scope: "${SCOPE}", first: ${n}) { edges { node { id firstSeenRun { id } lastChangedRun { id } deletedRun { id } } } } }`
    const small = await countStatements(app, () => gql(app, query(2)))
    const large = await countStatements(app, () => gql(app, query(100)))
    t.notOk(large.result.errors)
    t.equal(large.result.data.runs.edges.length, 100)
    t.equal(large.statements.length, small.statements.length)
    t.ok(large.statements.length <= 7, `${large.statements.length} statements`)
  })

  t.test('refused before running: too deep, too costly, first too big', async (t) => {
    const deep = '{ runs { edges { node { baselineRun { baselineRun { baselineRun { baselineRun { baselineRun { baselineRun { id } } } } } } } } } }'
    const cases: Array<[string, string]> = [
      [deep, 'QUERY_TOO_DEEP'],
      [`{ ${['a', 'b', 'c', 'd'].map((alias) => `${alias}: resources(scope: "${SCOPE}", first: 500) {
          edges { node { id type tags firstSeenRun { id scope } lastChangedRun { id scope } deletedRun { id } } } }`).join(' ')} }`, 'QUERY_TOO_COSTLY'],
      [`{ resources(scope: "${SCOPE}", first: 501) { edges { node { id } } } }`, 'FIRST_TOO_LARGE']
    ]
    for (const [query, code] of cases) {
      const { result, statements } = await countStatements(app, () => gql(app, query))
      t.equal(result.errors?.[0]?.extensions?.code, code, code)
      t.equal(result.data ?? null, null)
      t.equal(statements.length, 0, `${code}: no SQL ran`)
    }
    const variable = await countStatements(app, () => gql(app, 'query ($n: Int) { runs(first: $n) { edges { node { id } } } }', { n: 1000 }))
    t.equal(variable.result.errors?.[0]?.extensions?.code, 'FIRST_TOO_LARGE', 'first from a variable')
    t.equal(variable.statements.length, 0)
    const badCursor = await gql(app, `{ resources(scope: "${SCOPE}", after: "nope") { edges { cursor } } }`)
    t.equal(badCursor.errors?.[0]?.extensions?.code, 'BAD_CURSOR')
  })

  t.test('introspection: the standard query is answered, within the limits; a cycle or a deeper one is refused', async (t) => {
    // What GraphiQL, Apollo, graphql-codegen and Postman send first: 15 levels deep, past the depth limit of 8.
    const standard = await countStatements(app, () => gql(app, getIntrospectionQuery({
      descriptions: true, specifiedByUrl: true, directiveIsRepeatable: true, schemaDescription: true, inputValueDeprecation: true, oneOf: true
    })))
    t.notOk(standard.result.errors, JSON.stringify(standard.result.errors))
    t.ok(standard.result.data.__schema.types.some((type: { name: string }) => type.name === 'Resource'))
    t.equal(standard.statements.length, 0, 'no SQL')
    t.equal((await gql(app, '{ __type(name: "Resource") { fields { name } } }')).data.__type.fields.length > 5, true)
    const cases: Array<[string, string]> = [
      // Grows with the schema at each level: graphql's MaxIntrospectionDepthRule.
      ['{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }', 'GRAPHQL_VALIDATION_FAILED'],
      [`{ __schema { queryType { ${'ofType { '.repeat(20)}name${' }'.repeat(20)} } } }`, 'QUERY_TOO_DEEP'],
      // Introspection does not open a way past the limits for data.
      [`{ __schema { queryType { name } } runs { edges { node { ${'baselineRun { '.repeat(8)}id${' }'.repeat(8)} } } } }`, 'QUERY_TOO_DEEP']
    ]
    for (const [query, code] of cases) {
      const { result, statements } = await countStatements(app, () => gql(app, query))
      t.equal(result.errors?.[0]?.extensions?.code, code, query.slice(0, 40))
      t.equal(result.data ?? null, null)
      t.equal(statements.length, 0)
    }
  })

  t.test('GraphiQL is served from this server, with no external host', async (t) => {
    const page = await app.inject({ url: '/graphiql' })
    t.equal(page.statusCode, 200)
    t.notMatch(page.body, /https?:\/\//)
    const srcs = [...page.body.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!)
    t.equal(srcs.length, 5)
    for (const src of srcs) {
      const asset = await app.inject({ url: src })
      t.equal(asset.statusCode, 200, src)
      t.ok(asset.body.length > 200, `${src} has content`)
    }
  })

  t.test('GET /graphql for simple queries', async (t) => {
    const res = await app.inject({ headers: bearer(app), url: `/graphql?query=${encodeURIComponent(`{ summary(scope: "${SCOPE}") { total } }`)}` })
    t.equal(res.json().data.summary.total, 2900)
  })

  // Last: it leaves the rows of an aborted run behind.
  t.test('a walk while a run ingests sees every row that stays live exactly once', async (t) => {
    const before = await truth('deleted_at is null')
    const run = await tally.open(SCOPE)
    const seen: string[] = []
    let after: string | null = null
    for (let page = 0; page < 100; page++) {
      const res = await gql(app, `query ($after: String) { resources(scope: "${SCOPE}", first: 200, after: $after) {
        edges { node { id } } pageInfo { hasNextPage endCursor } } }`, { after })
      seen.push(...res.data.resources.edges.map((e: { node: { id: string } }) => e.node.id))
      // Between pages: rewrite rows on both sides of the cursor and add new ones.
      const changed = [before[page * 97 % before.length]!, before[(page * 211 + 1500) % before.length]!]
      await tally.ingest(run.body.id, [...changed.map((id) => resource(id, { name: `page-${page}` })), resource(`arn:aws:x:::new-${page}`)])
      if (!res.data.resources.pageInfo.hasNextPage) break
      after = res.data.resources.pageInfo.endCursor
    }
    t.equal(new Set(seen).size, seen.length, 'no row twice')
    t.same(seen.filter((id) => !id.includes(':new-')), before, 'every row live throughout, once, in order')
    await tally.abort(run.body.id)
  })
})

t.test('the main page query is an index scan on 200k rows, first page and deep page', async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  await db.query(`insert into resources (scope, id, type, region, tags, content_hash, first_seen_run_id, changed_run_id)
    select 'aws/big', 'arn:aws:x:::r-' || lpad(g::text, 7, '0'), 'type-' || (g % 40), 'region-' || (g % 12),
           jsonb_build_object('team', 'team-' || (g % 8)), '\\x00', 1, 1
    from generate_series(1, 200000) g`)
  await db.query("insert into resources (scope, id, type, content_hash, first_seen_run_id, changed_run_id) select 'aws/other', 'o-' || g, 't', '\\x00', 1, 1 from generate_series(1, 20000) g")
  await db.query('analyze resources')

  const plans: string[] = []
  for (const after of [null, Buffer.from(JSON.stringify(['arn:aws:x:::r-0150000'])).toString('base64url')]) {
    for (const filter of ['type: "type-7"', 'region: "region-3"', 'tag: { key: "team", value: "team-2" }', '']) {
      const { result, statements } = await countStatements(app, () => gql(app,
        `query ($after: String) { resources(scope: "aws/big", ${filter} first: 100, after: $after) { edges { node { id } } } }`, { after }))
      t.notOk(result.errors, filter)
      t.equal(statements.length, 1)
      const { text, values } = statements[0]!
      const { rows } = await db.query(`explain (format json) ${text}`, values)
      const plan = JSON.stringify(rows[0]['QUERY PLAN'])
      plans.push(plan)
      t.notMatch(plan, /"Node Type":"Seq Scan"/, `${filter || 'no filter'}, ${after === null ? 'first' : 'deep'} page: no sequential scan`)
      t.match(plan, /"Node Type":"(Index Scan|Index Only Scan|Bitmap Index Scan)"/, 'an index is used')
    }
  }
  t.equal(plans.length, 8)

  // idPrefix is a range of the primary key: ids compare byte by byte (COLLATE "C"), so LIKE 'p%' can use the btree.
  const { result, statements } = await countStatements(app, () => gql(app,
    'query { resources(scope: "aws/big", idPrefix: "arn:aws:x:::r-01234", first: 100) { edges { node { id } } } }'))
  t.notOk(result.errors)
  t.equal(result.data.resources.edges.length, 100, 'r-0123400 … r-0123499')
  const { rows } = await db.query(`explain (format json) ${statements[0]!.text}`, statements[0]!.values)
  const plan = JSON.stringify(rows[0]['QUERY PLAN'])
  t.match(plan, /"Index Cond":"[^"]*\(id >= 'arn:aws:x:::r-01234'::text\) AND \(id < 'arn:aws:x:::r-01235'::text\)/,
    'the prefix is an index range, not a filter over the scope')
})
