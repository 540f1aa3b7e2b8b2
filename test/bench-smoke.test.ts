/**
 * The benchmark, small: its JSON has the promised shape, and the unchanged resources of the
 * second scan wrote no rows. No timing is asserted; times on a shared machine prove nothing.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { PG_ADMIN_URL, REDIS_URL } from './helper.js'

t.test('npm run bench -- --resources 2000 --scans 2', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tally-bench-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const json = join(dir, 'bench.json')
  const chart = join(dir, 'bench.png')
  await promisify(execFile)(process.execPath, [
    '--import', 'tsx', 'bench/run.ts', '--resources', '2000', '--scans', '2', '--batch', '250',
    '--json', json, '--chart', chart, '--database', `tally_bench_smoke_${process.pid}`
  ], {
    timeout: 150_000,
    // The services this test run uses (npm test's embedded ones, or CI's), never a fallback.
    env: { ...process.env, BENCH_PG_ADMIN_URL: PG_ADMIN_URL, BENCH_REDIS_URL: REDIS_URL }
  })
  const result = JSON.parse(await readFile(json, 'utf8'))

  t.same(Object.keys(result).sort(), ['config', 'machine', 'naive', 'ratios', 'tally'])
  t.match(result.config, { resources: 2000, scans: 2, batch: 250, churn: { changed: 0.08, added: 0.01, vanished: 0.01 } })
  t.match(result.machine, { cpus: Number, node: String, postgres: String, redis: String })
  for (const design of ['tally', 'naive']) {
    t.equal(result[design].length, 2, `${design}: one entry per scan`)
    for (const scan of result[design]) {
      t.match(scan, {
        resourcesPerSec: Number,
        rowsWritten: Number,
        walBytes: Number,
        xids: Number,
        completeMs: Number,
        p99BatchMs: Number,
        serverCpuUsPerResource: Number,
        postgresCpuSec: Number,
        redisCpuSec: Number
      })
      t.ok(scan.serverCpuUsPerResource > 0, `${design}: the server's CPU is measured`)
      t.ok(scan.postgresCpuSec > 0, `${design}: Postgres's CPU is measured (its processes are on this machine)`)
    }
  }
  t.ok(result.tally.every((scan: { redisCpuSec: number }) => scan.redisCpuSec > 0), 'Redis\'s CPU is measured for Tally')
  t.match(result.ratios, { rowsWritten: Number, walBytes: Number, resourcesPerSec: Number, postgresCpu: Number, serverCpuPerResource: Number, firstScanResourcesPerSec: Number })

  const [first, second] = result.tally
  t.equal(first.rowsInserted, 2000, 'the first scan inserts the estate')
  t.match(second, { changed: 160, added: 20, vanished: 20 })
  t.equal(second.rowsInserted, second.added, 'only the new resources are inserted')
  t.equal(second.rowsUpdated, second.changed + second.vanished, 'only the changed ones are updated, plus the soft deletes')
  t.equal(second.rowsWritten, second.changed + second.added + second.vanished, 'the unchanged resources wrote no rows')
  t.match(second.stats, { seen: 2000, created: 20, updated: 160, unchanged: 1820, deleted: 20 })
  t.ok(result.naive[1].rowsWritten >= 2000, 'the naive design rewrites the whole scope')

  const png = await readFile(chart)
  t.same([...png.subarray(1, 4)], [...Buffer.from('PNG')], 'the chart is a PNG')
})
