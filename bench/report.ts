/** Prints a benchmark JSON file (from `npm run bench -- --json FILE`) as Markdown tables for BENCHMARKS.md. */
import { readFile } from 'node:fs/promises'
import type { ScanResult } from './run.js'

const file = process.argv[2]
if (file === undefined) throw new Error('usage: node --import tsx bench/report.ts FILE.json')
const result = JSON.parse(await readFile(file, 'utf8')) as {
  config: { resources: number, scans: number, batch: number, concurrency: number, instances: number }
  tally: ScanResult[]
  naive: ScanResult[]
  ratios: { rowsWritten: number, walBytes: number, resourcesPerSec: number, postgresCpu: number | null, serverCpuPerResource: number, firstScanResourcesPerSec: number } | null
}

const fmt = (n: number) => Math.round(n).toLocaleString('en')
console.log(`${fmt(result.config.resources)} resources, ${result.config.scans} scans, batches of ${result.config.batch}, ` +
  `${result.config.concurrency} in flight, ${result.config.instances ?? 1} server process(es) per design\n`)
console.log('| design | scan | resources/s | p50 / p99 batch ms | complete ms | rows ins / upd / del | WAL MB | xids | dead tuples | Redis B/resource after / during | server CPU µs/resource | Postgres CPU s | Redis CPU s | RSS MB |')
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
for (const design of ['tally', 'naive'] as const) {
  for (const r of result[design]) {
    console.log(`| ${design} | ${r.scan} | ${fmt(r.resourcesPerSec)} | ${r.p50BatchMs} / ${r.p99BatchMs} | ${fmt(r.completeMs)} | ` +
      `${fmt(r.rowsInserted)} / ${fmt(r.rowsUpdated)} / ${fmt(r.rowsDeleted)} | ${(r.walBytes / 1e6).toFixed(1)} | ${fmt(r.xids)} | ` +
      `${fmt(r.deadTuples)} | ${r.redisBytesPerResource ?? '–'} / ${r.redisBytesDuringScan ?? '–'} | ${r.serverCpuUsPerResource} | ${r.postgresCpuSec ?? '–'} | ${r.redisCpuSec} | ${r.serverRssMb} |`)
  }
}
if (result.ratios !== null) {
  console.log(`\nSteady state (scans 2–${result.config.scans}): the naive design writes **${result.ratios.rowsWritten}×** the rows and ` +
    `**${result.ratios.walBytes}×** the WAL and uses **${result.ratios.postgresCpu ?? '–'}×** Postgres's CPU and ` +
    `**${result.ratios.serverCpuPerResource}×** the server CPU per resource; Tally ingests **${result.ratios.resourcesPerSec}×** the resources per second ` +
    `(first scan: **${result.ratios.firstScanResourcesPerSec}×**).`)
}
