/* global Chart, graphqlWs, sessionStorage, document, location, fetch, Node */
// The dashboard: plain browser JavaScript, no build step. Everything it shows comes from the
// GraphQL API at /graphql with the key kept in sessionStorage; a subscription to the chosen
// scope's completed runs refreshes the page as scans finish, on whichever instance.
'use strict'

const KEY = 'tally.key'
const SCANS = 20
const CHANGES = 25
const COLOURS = { created: '#2da44e', updated: '#bf8700', unchanged: '#8c959f', deleted: '#cf222e' }

const $ = (id) => document.getElementById(id)
let chart = null
let selected = null
let feed = null
let unsubscribe = null

class KeyRefused extends Error {}

async function gql (query, variables = {}) {
  const res = await fetch('/graphql', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${sessionStorage.getItem(KEY)}` },
    body: JSON.stringify({ query, variables })
  })
  const body = await res.json().catch(() => ({}))
  const code = body.errors?.[0]?.extensions?.code ?? body.code
  if (res.status === 401 || res.status === 403 || code === 'UNAUTHORIZED' || code === 'FORBIDDEN') {
    throw new KeyRefused(body.errors?.[0]?.message ?? body.detail ?? 'The key was refused')
  }
  if (body.errors?.length) throw new Error(body.errors.map((e) => e.message).join('; '))
  if (!res.ok) throw new Error(body.detail ?? `HTTP ${res.status}`)
  return body.data
}

/** A table row of text cells (never HTML: ids and names come from scanners). */
function row (cells, classes = []) {
  const tr = document.createElement('tr')
  cells.forEach((cell, i) => {
    const td = document.createElement('td')
    if (cell instanceof Node) td.append(cell)
    else td.textContent = cell ?? ''
    if (classes[i]) td.className = classes[i]
    tr.append(td)
  })
  return tr
}

const when = (iso) => iso ? new Date(iso).toLocaleString() : '—'
const number = (n) => n.toLocaleString()

function askForKey (message = '') {
  $('main').hidden = true
  $('forget').hidden = true
  $('key-form').hidden = false
  $('key-error').textContent = message
  $('key').focus()
}

async function showScopes () {
  const data = await gql('{ scopes(first: 100) { edges { node { scope resourceCount lastCompletedAt } } } }')
  const scopes = data.scopes.edges.map((e) => e.node)
  const body = $('scopes').tBodies[0]
  body.replaceChildren(...scopes.map((s) => {
    const tr = row([s.scope, number(s.resourceCount), when(s.lastCompletedAt)], ['', 'n', ''])
    tr.dataset.scope = s.scope
    if (s.scope === selected) tr.classList.add('selected')
    tr.addEventListener('click', () => select(s.scope))
    return tr
  }))
  $('no-scopes').hidden = scopes.length > 0
  return scopes
}

async function showScope (scope) {
  const data = await gql(`query ($scope: String!) {
    runs(scope: $scope, first: ${SCANS}) { edges { node { id status startedAt completedAt stats { created updated unchanged deleted } } } }
    changes(scope: $scope, first: ${CHANGES}) { edges { node { kind resourceId type at changedFields run { id } } } }
  }`, { scope })
  if (scope !== selected) return
  $('scope-name').textContent = scope
  const runs = data.runs.edges.map((e) => e.node).filter((r) => r.status === 'completed').reverse()
  const labels = runs.map((r) => `#${r.id} ${new Date(r.completedAt).toLocaleDateString()}`)
  const datasets = Object.entries(COLOURS).map(([status, colour]) => ({
    label: status, backgroundColor: colour, data: runs.map((r) => r.stats[status])
  }))
  if (chart === null) {
    chart = new Chart($('scans-chart'), {
      type: 'bar',
      data: { labels, datasets },
      options: {
        maintainAspectRatio: false,
        animation: false,
        scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: 'resources' } } },
        plugins: { title: { display: true, text: 'Resources per scan by status (revived count as created)' } }
      }
    })
  } else {
    chart.data.labels = labels
    chart.data.datasets = datasets
    chart.update()
  }
  const changes = data.changes.edges.map((e) => e.node)
  $('changes').tBodies[0].replaceChildren(...changes.map((c) => {
    const id = document.createElement('code')
    id.textContent = c.resourceId
    const kind = document.createElement('span')
    kind.className = `kind kind-${c.kind}`
    kind.textContent = c.kind.toLowerCase()
    return row([when(c.at), kind, id, c.type, c.changedFields.join(', '), `#${c.run.id}`], ['', '', '', '', '', 'n'])
  }))
  $('no-changes').hidden = changes.length > 0
  $('scope-view').hidden = false
}

function select (scope) {
  selected = scope
  for (const tr of $('scopes').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.scope === scope)
  location.hash = encodeURIComponent(scope)
  subscribe(scope)
  return refresh(() => showScope(scope))
}

/** Live: each completed run of the scope refreshes the page. */
function subscribe (scope) {
  unsubscribe?.()
  feed ??= graphqlWs.createClient({
    url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql`,
    connectionParams: () => ({ authorization: `Bearer ${sessionStorage.getItem(KEY)}` }),
    on: {
      connected: () => { $('live').hidden = false },
      closed: () => { $('live').hidden = true }
    }
  })
  unsubscribe = feed.subscribe({ query: 'subscription ($scope: String!) { runCompleted(scope: $scope) { id } }', variables: { scope } }, {
    next: () => refresh(async () => { await showScopes(); await showScope(scope) }),
    error: () => { $('live').hidden = true },
    complete: () => {}
  })
}

async function refresh (load) {
  try {
    $('error').textContent = ''
    await load()
  } catch (err) {
    if (err instanceof KeyRefused) askForKey(err.message)
    else $('error').textContent = err.message
  }
}

async function start () {
  if (!sessionStorage.getItem(KEY)) return askForKey()
  $('key-form').hidden = true
  $('main').hidden = false
  $('forget').hidden = false
  await refresh(async () => {
    const scopes = await showScopes()
    const wanted = decodeURIComponent(location.hash.slice(1))
    const scope = scopes.find((s) => s.scope === wanted)?.scope ?? scopes[0]?.scope
    if (scope !== undefined) await select(scope)
  })
}

$('key-form').addEventListener('submit', (event) => {
  event.preventDefault()
  sessionStorage.setItem(KEY, $('key').value.trim())
  $('key').value = ''
  feed?.dispose()
  feed = null
  start()
})
$('forget').addEventListener('click', () => {
  sessionStorage.removeItem(KEY)
  feed?.dispose()
  feed = null
  askForKey()
})
start()
