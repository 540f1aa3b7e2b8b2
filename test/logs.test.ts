/**
 * The server's log as an operator reads it (a real server process, LOG_LEVEL=info): one line a
 * request; a client's mistake (a 400, a refused GraphQL query) is an info line without a stack
 * trace, never an error; LOG_FORMAT=pretty gives readable lines, JSON stays the default off a terminal.
 */
import t from 'tap'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { testEnv } from './helper.js'
import { startServer } from './server-process.js'

t.test('a client\'s mistakes are info lines without a stack; one line a request', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'tally-logs-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const env = { ...await testEnv(t), DATA_DIR: dataDir, LOG_LEVEL: 'info' }
  const server = await startServer(t, env)
  const key = (await readFile(join(dataDir, 'admin.key'), 'utf8')).trim()
  const post = (path: string, body: string) => fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body })

  t.equal((await post('/runs', '{"scope": "has space"}')).status, 400)
  t.equal((await post('/graphql', JSON.stringify({ query: '{ runs { edges { node { nope } } } }' }))).status, 400)
  t.equal((await post('/graphql', JSON.stringify({ query: `{ runs { edges { node { ${'baselineRun { '.repeat(9)}id${' }'.repeat(9)} } } } }` }))).status, 400)
  t.equal((await post('/runs', '{"scope": "aws/logs"}')).status, 201)
  await fetch(`${server.url}/readyz`)
  await server.kill('SIGTERM')

  // The log's JSON lines (Node may write a warning of its own to stderr).
  const lines = server.output().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Record<string, any>)
  const requests = lines.filter((l) => typeof l.status === 'number' && typeof l.method === 'string')
  t.same(requests.map((l) => `${l.method} ${l.url} ${l.status}`), ['POST /runs 400', 'POST /graphql 400', 'POST /graphql 400', 'POST /runs 201'],
    'one line a request; the readiness probe only at debug')
  t.same(lines.filter((l) => l.level >= 50), [], 'no error line')
  t.notMatch(server.output(), /"stack"/, 'no stack trace')
  const graphql = lines.filter((l) => l.msg === 'graphql: errors in the answer')
  t.same(graphql.map((l) => l.errors[0].code), ['GRAPHQL_VALIDATION_FAILED', 'QUERY_TOO_DEEP'], 'a refused query: its code and message')
})

t.test('LOG_FORMAT=pretty: readable lines', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'tally-logs-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const server = await startServer(t, { ...await testEnv(t), DATA_DIR: dataDir, LOG_LEVEL: 'info', LOG_FORMAT: 'pretty' })
  await server.kill('SIGTERM')
  t.match(server.output(), /^\[\d\d:\d\d:\d\d\.\d{3}\] (INFO|WARN)/m, 'time and level first, as pino-pretty writes them')
  t.match(server.output(), /Tally is listening on http:\/\/127\.0\.0\.1:\d+/)
  t.notMatch(server.output(), /^\{"level"/m, 'no JSON line')
})
