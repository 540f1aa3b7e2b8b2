/**
 * GraphiQL in a real browser (Debian's chromium, driven by playwright-core): the page loads
 * from this server alone, the schema loads once the key is in the Headers tab (the standard
 * introspection query passes the limits), the docs explorer lists the fields, and a query runs.
 * Without chromium the test is skipped, but not under .ci/run (TALLY_CI=1), which installs it.
 */
import t from 'tap'
import { existsSync } from 'node:fs'
import { chromium } from 'playwright-core'
import { api, adminKey, build, resource } from './helper.js'

const CHROMIUM = '/usr/bin/chromium'

t.test('GraphiQL opens with its schema and runs a query', { skip: !existsSync(CHROMIUM) && process.env.TALLY_CI === undefined ? `no ${CHROMIUM} (apt-get install chromium)` : false }, async (t) => {
  const app = await build(t)
  await api(app).scan('aws/graphiql', ['a', 'b', 'c'].map((id) => resource(id)))
  const base = await app.listen({ host: '127.0.0.1', port: 0 })

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  const elsewhere: string[] = []
  page.on('request', (request) => { if (!request.url().startsWith(base)) elsewhere.push(request.url()) })
  const pageErrors: string[] = []
  page.on('pageerror', (err) => pageErrors.push(err.message))

  await page.goto(`${base}/graphiql`)
  await page.locator('.graphiql-container').waitFor()
  // A person pastes the key into the Headers tab, then reloads the schema.
  // The shown CodeMirror editor under `selector` (the Variables editor is there too, in a `hidden` one).
  const setEditor = (selector: string, text: string) => page.evaluate(([selector, text]) => {
    // In the page: the DOM, which this project's TypeScript (Node's types only) does not describe.
    interface Editor { parentElement: { classList: { contains (c: string): boolean } } | null, CodeMirror?: { setValue (v: string): void } }
    const { document } = globalThis as unknown as { document: { querySelectorAll (s: string): Iterable<Editor> } }
    const element = [...document.querySelectorAll(selector)].find((e) => e.parentElement?.classList.contains('hidden') === false)
    if (element?.CodeMirror === undefined) throw new Error(`no editor ${selector}`)
    element.CodeMirror.setValue(text)
  }, [selector, text] as const)
  await setEditor('.graphiql-editor-tool .CodeMirror', JSON.stringify({ Authorization: `Bearer ${adminKey(app)}` }))
  await page.getByRole('button', { name: /show documentation explorer/i }).click()
  const docs = page.locator('.graphiql-doc-explorer')
  // GraphiQL takes an edited header in after a debounce (~500 ms): until then a re-fetch still
  // sends the placeholder. Re-fetch as a person would, until the schema is there (10 s at most).
  const types = docs.locator('a:text-is("Resource")')
  for (let attempt = 1; !await types.isVisible(); attempt++) {
    if (attempt > 10) throw new Error(`no schema after 10 re-fetches: ${await docs.innerText()}`)
    await page.getByRole('button', { name: /re-fetch graphql schema/i }).click()
    await types.waitFor({ timeout: 1_000 }).catch(() => {})
  }
  t.pass('the docs explorer lists the schema\'s types')
  await docs.locator('a:text-is("Query")').first().click()
  await docs.locator('a:text-is("resources")').first().waitFor({ timeout: 10_000 })
  t.pass('and the fields of Query')

  await setEditor('.graphiql-query-editor .CodeMirror', '{ summary(scope: "aws/graphiql") { total } }')
  const result = page.locator('.result-window')
  const total = result.getByText('"total"')
  for (let attempt = 1; !await total.isVisible(); attempt++) {
    if (attempt > 10) throw new Error(`no result after 10 runs: ${await result.innerText()}`)
    await page.locator('.graphiql-execute-button').click()
    await total.waitFor({ timeout: 1_000 }).catch(() => {})
  }
  t.match(await result.innerText(), /"total": 3/, 'the query ran')
  // GRAPHIQL_SCREENSHOT=file.png keeps a picture of the page as it is now.
  if (process.env.GRAPHIQL_SCREENSHOT !== undefined) await page.screenshot({ path: process.env.GRAPHIQL_SCREENSHOT })
  t.same(elsewhere, [], 'nothing loaded from another host')
  t.same(pageErrors, [], 'no script error')
})
