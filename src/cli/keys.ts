/**
 * `npm run keys -- <command>`: API keys, with the server's own configuration (DATABASE_URL, or
 * the embedded PostgreSQL under DATA_DIR: the running server's, or started for the command).
 *
 *   create --tenant <t> --role <scanner|reader|admin> [--scope <glob>]… [--name <text>]
 *          prints the new key as the last line of its output: it is shown this once
 *   list [--tenant <t>]
 *   revoke <id>
 *
 * Creating and revoking are logged (to stderr, JSON) with the key's id.
 */
import { parseArgs } from 'node:util'
import pg from 'pg'
import { pino } from 'pino'
import { generateKey, roles, type Role } from '../auth/keys.js'
import { loadSettings } from '../config.js'
import { createDb, runMigrations } from '../db/client.js'
import { createKeysRepository, type KeyRow } from '../db/keys-repository.js'
import { embeddedPostgresUrl, startEmbeddedPostgres, type Service } from '../embedded.js'
import { logOptions } from '../log.js'

const USAGE = `usage: npm run keys -- create --tenant <t> --role <${roles.join('|')}> [--scope <glob>]… [--name <text>]
       npm run keys -- list [--tenant <t>]
       npm run keys -- revoke <id>`

function fail (message: string): never {
  console.error(`${message}\n${USAGE}`)
  process.exit(2)
}

const [command, ...rest] = process.argv.slice(2)
let args: ReturnType<typeof parse>
function parse () {
  return parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      tenant: { type: 'string' },
      role: { type: 'string' },
      scope: { type: 'string', multiple: true },
      name: { type: 'string' }
    }
  })
}
try {
  args = parse()
} catch (err) {
  fail((err as Error).message)
}
if (command !== 'create' && command !== 'list' && command !== 'revoke') fail(command === undefined ? 'a command is needed' : `unknown command ${command}`)

let settings
try {
  settings = loadSettings()
} catch (err) {
  console.error((err as Error).message)
  process.exit(1)
}
const log = pino(logOptions(settings.LOG_LEVEL === 'info' ? 'warn' : settings.LOG_LEVEL), pino.destination(2))

// Arguments are checked before any database is reached (or an embedded one started).
let made: ReturnType<typeof generateKey> | undefined
let revokeId: string | undefined
if (command === 'create') {
  const { tenant, role, scope, name } = args.values
  if (tenant === undefined) fail('--tenant is needed')
  if (role === undefined || !(roles as readonly string[]).includes(role)) fail(`--role must be one of ${roles.join(', ')}`)
  try {
    made = generateKey({ tenant, role: role as Role, scopes: scope ?? [], name: name ?? null, createdBy: 'cli' })
  } catch (err) {
    fail((err as Error).message)
  }
} else if (command === 'revoke') {
  revokeId = args.positionals[0]
  if (revokeId === undefined) fail('revoke needs a key id (see list)')
}

let service: Service | undefined
let url = settings.DATABASE_URL
if (url === undefined) {
  // The embedded PostgreSQL: the running server's, else one started for this command.
  url = embeddedPostgresUrl(settings.DATA_DIR)
  if (url === undefined) {
    service = await startEmbeddedPostgres(settings.DATA_DIR, { info: () => {}, debug: () => {} })
    url = service.url
  }
}
const pool = new pg.Pool({ connectionString: url, max: 2 })
const keys = createKeysRepository(createDb(pool))

const show = (k: KeyRow) => [
  k.id, k.tenant, k.role, k.scopes.length === 0 ? '*' : k.scopes.join(','), k.revokedAt === null ? 'active' : `revoked ${k.revokedAt.toISOString()}`,
  k.createdAt.toISOString(), k.name ?? ''
]

let code = 0
try {
  await runMigrations(pool)
  if (made !== undefined) {
    const { id, tenant, role, scopes } = made.row
    await keys.insert(made.row)
    log.warn({ keyId: id, tenant, role, scopes, by: 'cli', action: 'key create' }, 'destructive action: key create')
    console.log(`Created ${role} key ${id} for tenant ${tenant}${scopes.length === 0 ? '' : `, scopes ${scopes.join(', ')}`}.`)
    console.log('The key is shown this once; Tally keeps only its hash. Send it as: Authorization: Bearer <key>')
    console.log(made.key)
  } else if (command === 'list') {
    const rows = await keys.list(args.values.tenant)
    const head = ['id', 'tenant', 'role', 'scopes', 'status', 'created', 'name']
    const table = [head, ...rows.map(show)]
    const widths = head.map((_, c) => Math.max(...table.map((r) => r[c]!.length)))
    for (const r of table) console.log(r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd())
  } else if (revokeId !== undefined) {
    const row = await keys.revoke(revokeId)
    if (row === undefined) {
      console.error(`No key ${revokeId}`)
      code = 1
    } else {
      log.warn({ keyId: revokeId, tenant: row.tenant, by: 'cli', action: 'key revoke' }, 'destructive action: key revoke')
      console.log(`Key ${revokeId} (${row.role}, tenant ${row.tenant}) revoked; every server stops taking it within AUTH_CACHE_TTL seconds (${settings.AUTH_CACHE_TTL}).`)
    }
  }
} finally {
  await pool.end()
  await service?.stop()
}
process.exit(code)
