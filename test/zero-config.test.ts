/**
 * `npm start` with nothing configured: the real server process starts an embedded PostgreSQL and
 * a private redis-server under DATA_DIR, serves a scan, and after a restart (graceful, or after
 * being killed) still has the inventory and the baseline. Without redis-server it says so in one
 * line and exits. The README is followed as a newcomer would: the demo (twice), then the worked
 * example and the NDJSON example as pasted into a shell, then the three dashboard queries.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { chmod, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { startServer, type ServerProcess } from './server-process.js'

/** The key the first start wrote to <DATA_DIR>/admin.key; set once it exists. */
let KEY = ''

async function post (server: ServerProcess, path: string, body: unknown = {}, key = KEY) {
  const res = await fetch(`${server.url}${path}`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify(body)
  })
  return { status: res.status, body: await res.json() as any }
}

/** `npm run keys -- …` with the server's configuration; its output lines. */
function keysCli (env: Record<string, string>, ...args: string[]): string[] {
  const res = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/keys.ts', ...args], {
    cwd: new URL('..', import.meta.url), env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8', timeout: 60_000
  })
  if (res.status !== 0) throw new Error(`keys ${args.join(' ')}: exit ${res.status}\n${res.stderr}`)
  return res.stdout.trim().split('\n')
}

/** This test's own scans: not the demo's account, which the README's dashboard queries read. */
const SCOPE = 'aws/zero-config'

async function scan (server: ServerProcess, ids: string[]) {
  const run = (await post(server, '/runs', { scope: SCOPE })).body.id as number
  await post(server, `/runs/${run}/resources`, { resources: ids.map((id) => ({ id, type: 'aws::s3::bucket' })) })
  return (await post(server, `/runs/${run}/complete`)).body
}

async function inventory (server: ServerProcess): Promise<string[]> {
  const { body } = await post(server, '/graphql', { query: `{ resources(scope: "${SCOPE}") { edges { node { id } } } }` })
  return body.data.resources.edges.map((e: { node: { id: string } }) => e.node.id)
}

/** The embedded Redis's port, from the server's log line. */
function redisPort (server: ServerProcess): number {
  const line = server.output().split('\n').reverse().find((l) => l.includes('embedded Redis ready'))
  return JSON.parse(line!).port
}

t.test('zero-config start, scan, restart: the inventory and the baseline survive', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'tally-zero-'))
  await chmod(dataDir, 0o755) // as root, Postgres runs as the postgres user and must reach its directory
  const env = { DATA_DIR: dataDir, LOG_LEVEL: 'info' }
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))

  let server = await startServer(t, env)
  t.match(server.output(), /embedded PostgreSQL ready/)
  const keyFile = join(dataDir, 'admin.key')
  t.match(server.output(), new RegExp(`created admin key [0-9a-f]{16} for tenant default and wrote it to ${keyFile}`), 'the first start says where its key is')
  t.equal((await stat(keyFile)).mode & 0o777, 0o600, 'admin.key is readable by its owner only')
  KEY = (await readFile(keyFile, 'utf8')).trim()
  t.equal((await post(server, '/runs', { scope: SCOPE }, 'tally_0000000000000000_' + 'x'.repeat(43))).status, 401, 'a made-up key is refused')
  t.match(server.output(), /Tally is listening on http:\/\/127\.0\.0\.1:\d+: API docs at http:\/\/127\.0\.0\.1:\d+\/docs, GraphiQL at http:\/\/127\.0\.0\.1:\d+\/graphiql/)
  const first = await scan(server, ['A', 'B', 'C'])
  t.match(first, { status: 'completed', stats: { created: 3 } })

  // A graceful stop stops both embedded services and leaves their data.
  await server.kill('SIGTERM')
  t.equal(server.child.exitCode, 0, 'exited cleanly')
  t.notOk(existsSync(join(dataDir, 'postgres', 'postmaster.pid')), 'PostgreSQL stopped')
  t.notOk(existsSync(join(dataDir, 'redis', 'redis.pid')), 'Redis stopped')

  server = await startServer(t, env)
  t.notMatch(server.output(), /created admin key/, 'keys existed: no new admin key')
  // A second server on the same DATA_DIR refuses to start, naming the first; the first goes on.
  const twin = spawnSync(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: new URL('..', import.meta.url), env: { PATH: process.env.PATH ?? '', ...env, PORT: '0' }, encoding: 'utf8', timeout: 60_000
  })
  t.equal(twin.status, 1, 'a second server on the same DATA_DIR exits 1')
  t.equal(twin.stderr.trim(), `DATA_DIR ${dataDir} is in use by the Tally process with pid ${server.child.pid}: its embedded PostgreSQL and Redis are its own. Stop it first, or give this one another DATA_DIR`)
  t.notMatch(twin.stdout + server.output(), /stopping a copy left running/, 'and stopped nothing')
  t.equal((await fetch(`${server.url}/readyz`)).status, 200, 'the first server is still ready')
  t.equal((await readFile(keyFile, 'utf8')).trim(), KEY, 'admin.key is left as it was')
  t.same(await inventory(server), ['A', 'B', 'C'], 'the inventory survived')

  // The command line, with the server's own configuration (its embedded PostgreSQL, running).
  const created = keysCli(env, 'create', '--tenant', 'default', '--role', 'reader', '--scope', 'aws/*', '--name', 'dashboard')
  const reader = created.at(-1)!
  t.match(reader, /^tally_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/, 'create prints the key as its last line')
  const readerId = reader.split('_')[1]!
  t.match(keysCli(env, 'list').join('\n'), new RegExp(`${readerId}\\s+default\\s+reader\\s+aws/\\*\\s+active`), 'list shows it, without the secret')
  t.notMatch(keysCli(env, 'list').join('\n'), reader.split('_')[2]!, 'no secret in the list')
  t.equal((await post(server, '/graphql', { query: '{ scopes { edges { node { scope } } } }' }, reader)).status, 200, 'the reader key reads')
  t.equal((await post(server, '/runs', { scope: SCOPE }, reader)).status, 403, 'and may not scan')
  keysCli(env, 'revoke', readerId)
  let status = 200
  for (const deadline = Date.now() + 10_000; status === 200 && Date.now() < deadline; await new Promise((resolve) => setTimeout(resolve, 100))) {
    status = (await post(server, '/graphql', { query: '{ scopes { edges { node { scope } } } }' }, reader)).status
  }
  t.equal(status, 401, 'revoked: refused within seconds')
  const redis = new Redis(redisPort(server))
  t.teardown(() => redis.quit())
  t.ok((await redis.keys(`tally:*:ids:${first.id}:*`)).length > 0, "the baseline's sets survived (AOF)")
  const second = await scan(server, ['A', 'B', 'D'])
  t.match(second, { status: 'completed', baselineRunId: first.id, stats: { created: 1, unchanged: 2, deleted: 1 } })

  // The demo scanner: three scans, and its counts must agree with Tally's; run again, it goes on.
  for (const scans of ['1–3', '4–6']) {
    const demo = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], {
      cwd: new URL('..', import.meta.url), env: { PATH: process.env.PATH ?? '', TALLY_URL: server.url, DATA_DIR: dataDir }, encoding: 'utf8', timeout: 60_000
    })
    t.equal(demo.status, 0, `npm run demo passes (scans ${scans})`)
    t.match(demo.stdout, new RegExp(`scope aws/123456789012, scans ${scans}\\)`))
    t.match(demo.stdout, /scan\s+seen\s+created\s+updated\s+unchanged\s+deleted/)
    t.match(demo.stdout, /Tally agrees with the scanner on every count/)
  }

  // The README's examples, pasted into a shell, answer what the README says they answer.
  const readme = await readFile(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8')
  const shell = (script: string) => {
    const res = spawnSync('bash', ['-e', '-c', script.replaceAll('.data/admin.key', keyFile).replaceAll('localhost:3000', server.url.replace('http://', ''))], {
      env: { PATH: process.env.PATH ?? '' }, encoding: 'utf8', timeout: 60_000
    })
    t.equal(res.status, 0, res.stderr)
    return res.stdout
  }
  const worked = blockAfter(readme, '### Worked example', 'sh')
  const helpers = worked.split('\n').slice(0, 3).join('\n') // KEY, S and json
  t.match(helpers, /^KEY=.*\nS=.*\njson \(\)/)
  const ndjson = blockAfter(readme, '### NDJSON batches', 'sh')
  for (const [name, script] of [['worked example', worked], ['NDJSON example', `${helpers}\n${ndjson}`]] as const) {
    const replies = shell(script).split(/(?<=\})(?=\{)/)
    const documented = [...script.matchAll(/^# → (\{.*\})$/gm)].map((m) => m[1]!)
    t.equal(replies.length, documented.length, `${name}: a reply for each documented one`)
    documented.forEach((doc, i) => {
      // Ids and scopes depend on what ran before; every other field shown must be in the reply.
      for (const [pair, key] of doc.matchAll(/"(\w+)":("[^"]*"|-?\d+|true|false|null)/g)) {
        if (!['id', 'runId', 'baselineRunId', 'scope'].includes(key!)) t.ok(replies[i]?.includes(pair), `${name}, reply ${i + 1}: ${pair}`)
      }
    })
  }
  // The dashboard queries, on what the demo wrote.
  const queries = blockAfter(readme, 'Three queries a dashboard would run', 'graphql').split(/^(?=# \d\.)/m)
  t.equal(queries.length, 3)
  const answers = await Promise.all(queries.map(async (query) => (await post(server, '/graphql', { query })).body))
  for (const answer of answers) t.notOk(answer.errors, JSON.stringify(answer.errors))
  t.ok(answers[0].data.summary.total > 1500 && answers[0].data.summary.byType.length === 40, 'query 1: the account by type and region')
  t.ok(answers[1].data.resources.edges.length > 0 && answers[1].data.resources.totalCount > 0, 'query 2: production EC2 instances')
  t.equal(answers[2].data.runs.edges.length, 6, "query 3: the demo's six scans")
  // The history queries, on the same.
  const history = blockAfter(readme, 'Three questions about history', 'graphql').split(/^(?=# \d\.)/m)
  t.equal(history.length, 3)
  const [deleted, latest, life] = await Promise.all(history.map(async (query) => (await post(server, '/graphql', { query })).body))
  for (const answer of [deleted, latest, life]) t.notOk(answer.errors, JSON.stringify(answer.errors))
  t.ok(deleted.data.changes.totalCount > 0 && deleted.data.changes.edges.length === Math.min(20, deleted.data.changes.totalCount), 'history 1: deletions')
  const run = latest.data.runs.edges[0].node
  t.ok(run.stats.updated > 0, 'the demo\'s last scan updated resources')
  t.equal(run.changes.totalCount, run.stats.updated, 'history 2: the latest scan\'s updates, as many as its stats say')
  t.ok(run.changes.edges.every((e: { node: { changedFields: string[] } }) => e.node.changedFields.length > 0))
  const lived = life.data.resources.edges[0].node.history.edges
  t.equal(lived.at(-1)?.node.kind, 'CREATED', 'history 3: a resource\'s life begins with its creation')

  // Killed outright: its PostgreSQL and Redis outlive it; the next start stops and reuses them.
  await server.kill('SIGKILL')
  server = await startServer(t, env)
  t.match(server.output(), /stopping a copy left running by an earlier server/)
  t.same(await inventory(server), ['A', 'B', 'D'])
  await server.kill('SIGTERM')
})

/** The first fenced block of `lang` after the line holding `heading`. */
function blockAfter (markdown: string, heading: string, lang: string): string {
  const from = markdown.indexOf(heading)
  const match = new RegExp('```' + lang + '\\n([\\s\\S]*?)```').exec(markdown.slice(from))
  if (from < 0 || match === null) throw new Error(`README: no ${lang} block after ${heading}`)
  return match[1]!
}

t.test('without redis-server on the PATH: one line saying what to do, exit code 1', async (t) => {
  const res = spawnSync(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: new URL('..', import.meta.url),
    env: { PATH: '/nonexistent', DATABASE_URL: 'postgres://unused' },
    encoding: 'utf8',
    timeout: 30_000
  })
  t.equal(res.status, 1)
  t.equal(res.stdout, '')
  t.equal(res.stderr.trim().split('\n').length, 1, 'one line')
  t.match(res.stderr, /redis-server is not on the PATH: install it .* or set REDIS_URL/)
})
