/**
 * The OpenAPI document: valid, committed as served, and true enough that a client generated
 * from it (openapi-typescript + openapi-fetch) type-checks and works against the server.
 */
import { execFile } from 'node:child_process'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import SwaggerParser from '@apidevtools/swagger-parser'
import openapiTS, { astToString } from 'openapi-typescript'
import t from 'tap'
import { parse } from 'yaml'
import { adminKey, build } from './helper.js'

const run = promisify(execFile)

t.test('openapi', async (t) => {
  const app = await build(t)
  const served = (await app.inject({ url: '/openapi.json' })).json()

  t.test('a valid OpenAPI 3.1 document with an operationId on every route', async (t) => {
    await SwaggerParser.validate(structuredClone(served))
    t.equal(served.openapi, '3.1.0')
    const ops = Object.values(served.paths as Record<string, Record<string, { operationId?: string }>>)
      .flatMap((methods) => Object.values(methods).map((op) => op.operationId))
    t.same(ops.sort(), ['abortRun', 'completeRun', 'createRun', 'getRun', 'healthz', 'ingestBatch', 'listRuns', 'readyz'])
    t.same(Object.keys(served.components.schemas).sort(), ['BatchResult', 'Problem', 'Resource', 'Run', 'RunStats', 'SkipPartition'])
    t.ok(served.components.schemas.Problem.properties.code.enum.includes('mass_deletion_guard'), 'problem codes are an enum')
  })

  t.test('openapi.json at the repository root is what the server serves (npm run openapi)', async (t) => {
    const committed = JSON.parse(await readFile(new URL('../openapi.json', import.meta.url), 'utf8'))
    t.same(committed, served)
    const yaml = await app.inject({ url: '/openapi.yaml' })
    t.same(parse(yaml.body), served)
    t.equal((await app.inject({ url: '/docs/' })).statusCode, 200, 'Swagger UI')
  })

  t.test('a generated client type-checks and runs a scan against the server', async (t) => {
    // Inside the project, so the program resolves openapi-fetch from node_modules.
    const dir = join(process.cwd(), '.tap', `contract-${process.pid}`)
    await mkdir(dir, { recursive: true })
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    await writeFile(join(dir, 'api.d.ts'), astToString(await openapiTS(structuredClone(served))))
    await writeFile(join(dir, 'scanner.ts'), `
import createClient from 'openapi-fetch'
import type { paths } from './api.js'

const client = createClient<paths>({ baseUrl: process.argv[2], headers: { Authorization: 'Bearer ' + process.argv[3] } })
const opened = await client.POST('/runs', { body: { scope: 'aws/contract', scanner: { name: 'contract', version: '1' } } })
if (opened.data === undefined) throw new Error(JSON.stringify(opened.error))
const runId: number = opened.data.id
for (const ids of [['a', 'b'], ['c']]) {
  const batch = await client.POST('/runs/{id}/resources', {
    params: { path: { id: runId } },
    body: { resources: ids.map((id) => ({ id, type: 'aws::s3::bucket', tags: { env: 'prod' } })) }
  })
  if (batch.data === undefined) throw new Error(JSON.stringify(batch.error))
  const created: number = batch.data.created
  console.log('batch', created)
}
const refused = await client.POST('/runs', { body: { scope: 'aws/contract' } })
const code: string | undefined = refused.error?.code
console.log('conflict', refused.response.status, code)
const done = await client.POST('/runs/{id}/complete', { params: { path: { id: runId } }, body: { expectedResources: 3 } })
if (done.data === undefined) throw new Error(JSON.stringify(done.error))
const read = await client.GET('/runs/{id}', { params: { path: { id: runId } } })
const seen: number | undefined = read.data?.stats.seen
console.log('run', read.data?.status, seen)
`)
    await writeFile(join(dir, 'tsconfig.json'), JSON.stringify({
      extends: '../../tsconfig.json', compilerOptions: { noEmit: true, rootDir: '.' }, include: ['*.ts']
    }))
    await run(process.execPath, [join('node_modules', 'typescript', 'bin', 'tsc'), '-p', join(dir, 'tsconfig.json')])
      .catch((err: { stdout?: string }) => { throw new Error(`the scanner does not type-check:\n${err.stdout}`) })

    const base = await app.listen({ port: 0, host: '127.0.0.1' })
    const { stdout } = await run(process.execPath, ['--import', 'tsx', join(dir, 'scanner.ts'), base, adminKey(app)])
    t.same(stdout.trim().split('\n'), ['batch 2', 'batch 1', 'conflict 409 scope_has_open_run', 'run completed 3'])
  })
})
