/**
 * `npm run demo`: a small scanner against a running Tally (TALLY_URL, default
 * http://127.0.0.1:3000), with the key in TALLY_API_KEY, or else the admin key the first
 * `npm start` wrote to <DATA_DIR>/admin.key. It posts three scans of a synthetic AWS account (2,000 resources of 40
 * types in 12 regions, with realistic ARNs; each later scan changes 8%, adds 2% and loses 3%)
 * and prints what Tally created, updated, left unchanged and deleted in each, beside what the
 * scanner actually changed. Exits 1 if the two disagree.
 */
import { readFileSync } from 'node:fs'
import { makeResource, ScanSimulator } from '../bench/estate.js'
import { adminKeyFile } from '../src/auth/bootstrap.js'

const BASE = process.env.TALLY_URL ?? 'http://127.0.0.1:3000'
const KEY_FILE = adminKeyFile(process.env.DATA_DIR ?? '.data')
let KEY = process.env.TALLY_API_KEY
if (KEY === undefined) {
  try {
    KEY = readFileSync(KEY_FILE, 'utf8').trim()
  } catch {
    console.error(`No API key: set TALLY_API_KEY, or start Tally once with \`npm start\` so that it writes ${KEY_FILE}`)
    process.exit(1)
  }
}
const SIZE = 2000
const BATCH = 500
const SEED = Date.now() % 1_000_000
const ACCOUNT = String(100_000_000_000 + (SEED * 7919) % 900_000_000_000)
const SCOPE = `aws/${ACCOUNT}`

async function post (path: string, body: unknown): Promise<any> {
  const res = await fetch(`${BASE}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` }, body: JSON.stringify(body) })
  const json = await res.json()
  if (!res.ok) throw new Error(`POST ${path}: ${res.status} ${JSON.stringify(json)}`)
  return json
}

try {
  await fetch(`${BASE}/readyz`)
} catch {
  console.error(`No Tally answers at ${BASE}: start it with \`npm start\` (or set TALLY_URL)`)
  process.exit(1)
}

console.log(`Scanning account ${ACCOUNT} three times into ${BASE} (scope ${SCOPE})\n`)
const simulator = new ScanSimulator(SEED, SIZE, { changed: 0.08, added: 0.02, vanished: 0.03 })
const rows: string[][] = []
let agree = true
for (let scan = 1; scan <= 3; scan++) {
  const view = simulator.nextScan()
  const run = await post('/runs', { scope: SCOPE, scanner: { name: 'tally-demo', version: '1.0' } })
  const resources = Array.from(view.indices, (index, i) => makeResource(SEED, ACCOUNT, index, view.versions[i]!))
  for (let i = 0; i < resources.length; i += BATCH) {
    // A batch id per batch: a retried batch would then be applied and counted once.
    await post(`/runs/${run.id}/resources`, { batchId: `scan-${scan}-batch-${i / BATCH}`, resources: resources.slice(i, i + BATCH) })
  }
  const started = performance.now()
  const done = await post(`/runs/${run.id}/complete`, { expectedResources: resources.length })
  const ms = Math.round(performance.now() - started)
  const s = done.stats
  const unchangedExpected = resources.length - view.added - (scan === 1 ? 0 : view.changed)
  agree &&= s.created === view.added && s.updated === (scan === 1 ? 0 : view.changed) &&
    s.deleted === view.vanished && s.unchanged === unchangedExpected
  rows.push([`#${scan} (run ${run.id})`, String(s.seen), String(s.created), String(s.updated), String(s.unchanged), String(s.deleted),
    `${view.added} new, ${scan === 1 ? 0 : view.changed} changed, ${view.vanished} gone`, `${ms} ms`])
}

const head = ['scan', 'seen', 'created', 'updated', 'unchanged', 'deleted', 'what the scanner changed', 'complete']
const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)))
const line = (cells: string[]) => cells.map((cell, c) => (c === 0 || c === 6 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ')
console.log(line(head))
console.log(widths.map((w) => '-'.repeat(w)).join('  '))
for (const r of rows) console.log(line(r))
console.log(agree
  ? `\nTally agrees with the scanner on every count. Unchanged resources cost no database write.
Next: browse the inventory in GraphiQL at ${BASE}/graphiql, e.g.
  { summary(scope: "${SCOPE}") { total byType { type count } } }
(put {"Authorization": "Bearer <key>"} in its Headers tab), or read the runs:
  curl -s -H "Authorization: Bearer $(cat ${KEY_FILE})" '${BASE}/runs?scope=${SCOPE}'`
  : '\nTally and the scanner disagree on a count: that is a bug, please report it.')
process.exit(agree ? 0 : 1)
