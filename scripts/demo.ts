/**
 * `npm run demo`: a small scanner against a running Tally (TALLY_URL, default
 * http://127.0.0.1:3000), with the key in TALLY_API_KEY, or else the admin key the first
 * `npm start` wrote to <DATA_DIR>/admin.key. It posts three scans of a synthetic AWS account,
 * scope `aws/123456789012` (2,000 resources of 40 types in 12 regions, with realistic ARNs; each
 * later scan changes 8%, adds 2% and loses 3%), and prints what Tally created, updated, left
 * unchanged and deleted in each, beside what the scanner actually changed. Exits 1 if the two
 * disagree. The account's scans are always the same sequence: run again, the demo goes on from
 * the scans the scope has completed (and aborts a run of its own left open), so the README's
 * dashboard queries always have this scope to read.
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
const SEED = 1
const ACCOUNT = '123456789012'
const SCOPE = `aws/${ACCOUNT}`
const SCANS = 3
const headers = { 'content-type': 'application/json', authorization: `Bearer ${KEY}` }

async function post (path: string, body: unknown): Promise<any> {
  const res = await fetch(`${BASE}${path}`, { method: 'POST', headers, body: JSON.stringify(body) })
  const json = await res.json()
  if (!res.ok) throw new Error(`POST ${path}: ${res.status} ${JSON.stringify(json)}`)
  return json
}

/** The scope's runs in a state, oldest first. */
async function runsOf (status: string): Promise<Array<{ id: number }>> {
  const runs: Array<{ id: number }> = []
  for (let cursor: string | null = ''; cursor !== null;) {
    const res = await fetch(`${BASE}/runs?scope=${encodeURIComponent(SCOPE)}&status=${status}&limit=500${cursor === '' ? '' : `&cursor=${cursor}`}`, { headers })
    const page = await res.json() as { items: Array<{ id: number }>, nextCursor: string | null }
    if (!res.ok) throw new Error(`GET /runs: ${res.status} ${JSON.stringify(page)}`)
    runs.push(...page.items)
    cursor = page.nextCursor
  }
  return runs.reverse()
}

try {
  await fetch(`${BASE}/readyz`)
} catch {
  console.error(`No Tally answers at ${BASE}: start it with \`npm start\` (or set TALLY_URL)`)
  process.exit(1)
}

// A run a stopped demo left open would refuse the next one (one open run per scope).
for (const open of await runsOf('open')) {
  console.log(`Aborting run ${open.id}, left open in ${SCOPE} by an earlier demo`)
  await post(`/runs/${open.id}/abort`, {})
}
// Go on from the scans the scope has completed: its baseline is the last of them.
const done = (await runsOf('completed')).length
const simulator = new ScanSimulator(SEED, SIZE, { changed: 0.08, added: 0.02, vanished: 0.03 })
for (let scan = 1; scan <= done; scan++) simulator.nextScan()
console.log(`Scanning account ${ACCOUNT} ${SCANS} times into ${BASE} (scope ${SCOPE}, scans ${done + 1}–${done + SCANS})\n`)
const rows: string[][] = []
let agree = true
for (let scan = done + 1; scan <= done + SCANS; scan++) {
  const view = simulator.nextScan()
  const run = await post('/runs', { scope: SCOPE, scanner: { name: 'tally-demo', version: '1.0' } })
  const resources = Array.from(view.indices, (index, i) => makeResource(SEED, ACCOUNT, index, view.versions[i]!))
  for (let i = 0; i < resources.length; i += BATCH) {
    // A batch id per batch: a retried batch would then be applied and counted once.
    await post(`/runs/${run.id}/resources`, { batchId: `scan-${scan}-batch-${i / BATCH}`, resources: resources.slice(i, i + BATCH) })
  }
  const started = performance.now()
  const completed = await post(`/runs/${run.id}/complete`, { expectedResources: resources.length })
  const ms = Math.round(performance.now() - started)
  const s = completed.stats
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
Next: open the dashboard at ${BASE}/ (paste your key once) for the scans' chart and the latest
changes, or browse the inventory in GraphiQL at ${BASE}/graphiql, e.g.
  { summary(scope: "${SCOPE}") { total byType { type count } } }
(put {"Authorization": "Bearer <key>"} in its Headers tab), or read the runs:
  curl -s -H "Authorization: Bearer $(cat ${KEY_FILE})" '${BASE}/runs?scope=${SCOPE}'`
  : '\nTally and the scanner disagree on a count: that is a bug, please report it.')
process.exit(agree ? 0 : 1)
