/**
 * The production start: `npm start` runs the compiled JavaScript (dist/, built by
 * scripts/build-if-needed.mjs before it), without tsx, and GraphiQL is off with
 * NODE_ENV=production; the keys command runs compiled too.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { testEnv } from './helper.js'
import { startServer } from './server-process.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))

t.test('the compiled server starts and serves; the compiled keys command runs', async (t) => {
  const built = spawnSync(process.execPath, ['scripts/build-if-needed.mjs'], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 })
  t.equal(built.status, 0, `build: ${built.stdout}${built.stderr}`)

  const dataDir = await mkdtemp(join(tmpdir(), 'tally-production-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const env = { ...await testEnv(t), DATA_DIR: dataDir, NODE_ENV: 'production' }
  const server = await startServer(t, env, undefined, ['dist/server.js'])
  const key = (await readFile(join(dataDir, 'admin.key'), 'utf8')).trim()
  t.equal((await fetch(`${server.url}/readyz`)).status, 200)
  const opened = await fetch(`${server.url}/runs`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: '{"scope": "aws/production"}' })
  t.equal(opened.status, 201)
  t.equal((await fetch(`${server.url}/graphiql`)).status, 404, 'no GraphiQL in production')
  t.equal((await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${key}` } })).status, 200)

  const keys = spawnSync(process.execPath, ['dist/cli/keys.js', 'list'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8', timeout: 60_000 })
  t.equal(keys.status, 0, keys.stderr)
  t.match(keys.stdout, /default\s+admin/, 'the admin key the first start made')
  await server.kill('SIGTERM')
  t.equal(server.child.exitCode, 0, 'a graceful stop')
})
