/**
 * The dashboard at `/` in a real browser (Debian's chromium, driven by playwright-core): it asks
 * for a key once, shows the tenant's scopes with their counts, the chosen scope's scans as a
 * stacked chart and its latest changes, and refreshes when a scan completes (the live feed).
 * Nothing is loaded from another host, and no script fails. Skipped without chromium, but not
 * under .ci/run (TALLY_CI=1), which installs it.
 */
import t from 'tap'
import { existsSync } from 'node:fs'
import { chromium } from 'playwright-core'
import { api, build, createKey, resource, waitFor } from './helper.js'

const CHROMIUM = '/usr/bin/chromium'
const SCOPE = 'aws/123456789012'

t.test('the dashboard shows scopes, the chart of scans and the latest changes, live', { skip: !existsSync(CHROMIUM) && process.env.TALLY_CI === undefined ? `no ${CHROMIUM} (apt-get install chromium)` : false }, async (t) => {
  const app = await build(t, { GUARD_MIN_BASELINE: '1000' })
  const tally = api(app)
  const first = Array.from({ length: 30 }, (_, i) => resource(`arn:aws:s3:::bucket-${i}`, { type: 'aws::s3::bucket' }))
  await tally.scan(SCOPE, first)
  const second = first.slice(0, 27).map((r, i) => i < 4 ? { ...r, tags: { env: 'dev' } } : r)
  await tally.scan(SCOPE, [...second, resource('arn:aws:s3:::bucket-new', { type: 'aws::s3::bucket' })])
  await tally.scan('gcp/project-1', [resource('vm-1')])
  const reader = await createKey(app, { tenant: 'default', role: 'reader' })
  const base = await app.listen({ host: '127.0.0.1', port: 0 })

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1200, height: 1000 } })
  const elsewhere: string[] = []
  page.on('request', (request) => { if (!new URL(request.url()).host.startsWith('127.0.0.1')) elsewhere.push(request.url()) })
  const pageErrors: string[] = []
  page.on('pageerror', (err) => pageErrors.push(err.message))
  page.on('console', (message) => { if (message.type() === 'error') pageErrors.push(message.text()) })

  await page.goto(`${base}/`)
  // A wrong key is refused and asked for again; a reader's key opens the dashboard.
  await page.locator('#key').fill('tally_0123456789abcdef_wrong')
  await page.locator('#key-form button').click()
  await page.locator('#key-error').getByText(/unknown or revoked|not hold/).waitFor({ timeout: 10_000 })
  t.pass('a wrong key is refused')
  pageErrors.length = 0 // the browser logs the refused request's 401 as a console error
  await page.locator('#key').fill(reader)
  await page.locator('#key-form button').click()

  const scopes = page.locator('#scopes tbody tr')
  await scopes.first().waitFor({ timeout: 10_000 })
  t.same(await scopes.evaluateAll((rows) => rows.map((r) => (r as unknown as { innerText: string }).innerText.split('\t').slice(0, 2))),
    [[SCOPE, '28'], ['gcp/project-1', '1']], 'scopes with their live counts')

  // The first scope is chosen: its chart has the two scans, stacked by status.
  await page.locator('#scope-name').getByText(SCOPE).waitFor({ timeout: 10_000 })
  const chartData = () => page.evaluate(() => {
    const { Chart } = globalThis as unknown as { Chart: { getChart (id: string): { config: { options: { scales: { y: { stacked: boolean } } } }, data: { labels: string[], datasets: Array<{ label: string, data: number[] }> } } } }
    const chart = Chart.getChart('scans-chart')
    return { stacked: chart.config.options.scales.y.stacked, labels: chart.data.labels.length, series: Object.fromEntries(chart.data.datasets.map((d) => [d.label, d.data])) }
  })
  t.same(await chartData(), {
    stacked: true,
    labels: 2,
    series: { created: [30, 1], updated: [0, 4], unchanged: [0, 23], deleted: [0, 3] }
  }, 'the chart: created / updated / unchanged / deleted per scan')
  const changes = page.locator('#changes tbody tr')
  t.equal(await changes.count(), 25, 'the latest changes, one page')
  t.match(await changes.first().innerText(), /deleted/)
  t.match(await page.locator('#changes').innerText(), /updated\s+arn:aws:s3:::bucket-0\s+aws::s3::bucket\s+tags, tags\.env/)

  // Live: a scan completed meanwhile appears without a reload.
  await page.locator('#live').waitFor({ timeout: 10_000 })
  // The page's the only subscriber of the scope: once its instance has SUBSCRIBEd, it hears.
  const topic = app.events.runCompletedTopic('default', SCOPE)
  await waitFor(t, 'the page subscribed', async () => Number((await app.redis.pubsub('NUMSUB', topic) as [string, number])[1]) > 0)
  await tally.scan(SCOPE, second)
  await page.waitForFunction(() => {
    const { Chart } = globalThis as unknown as { Chart: { getChart (id: string): { data: { labels: string[] } } } }
    return Chart.getChart('scans-chart').data.labels.length === 3
  }, undefined, { timeout: 10_000 })
  t.match(await scopes.first().innerText(), /\b27\b/, 'the scope\'s count follows')
  t.match(await changes.first().innerText(), /deleted\s+arn:aws:s3:::bucket-new/, 'and its latest change')

  // The key is kept for the session: a reload does not ask again.
  await page.reload()
  await scopes.first().waitFor({ timeout: 10_000 })
  t.ok(await page.locator('#key-form').isHidden(), 'no second prompt in the session')

  // DASHBOARD_SCREENSHOT=file.png keeps a picture of the page.
  if (process.env.DASHBOARD_SCREENSHOT !== undefined) {
    await page.locator('#scans-chart').waitFor()
    await page.screenshot({ path: process.env.DASHBOARD_SCREENSHOT, fullPage: true })
  }
  t.same(elsewhere, [], 'nothing loaded from another host')
  t.same(pageErrors, [], 'no script error')
})
