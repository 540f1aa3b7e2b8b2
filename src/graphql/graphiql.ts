/**
 * GraphiQL at /graphiql, its scripts and styles served from npm packages (react, react-dom,
 * graphiql) rather than a CDN, so it works offline and under a strict Content-Security-Policy.
 * The packages are development dependencies: a production install (`npm ci --omit=dev`) has
 * none, and GraphiQL is then off (GRAPHIQL=true says so in the log).
 */
import type { FastifyPluginAsync } from 'fastify'
import { assetRoutes, fromPackage, type Assets } from '../assets.js'

/** The files GraphiQL's page loads; undefined when the packages are not installed. */
export function graphiqlAssets (): Assets | undefined {
  try {
    return {
      'react.js': { file: fromPackage('react', 'umd/react.production.min.js'), type: 'text/javascript' },
      'react-dom.js': { file: fromPackage('react-dom', 'umd/react-dom.production.min.js'), type: 'text/javascript' },
      'graphiql.js': { file: fromPackage('graphiql', 'graphiql.min.js'), type: 'text/javascript' },
      'graphiql.css': { file: fromPackage('graphiql', 'graphiql.min.css'), type: 'text/css' }
    }
  } catch {
    return undefined
  }
}

const page = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Tally · GraphiQL</title>
  <link rel="stylesheet" href="/graphiql/assets/graphiql.css">
  <style>body { margin: 0; height: 100vh; } #graphiql { height: 100vh; }</style>
</head>
<body>
  <div id="graphiql">Loading…</div>
  <script src="/graphiql/assets/react.js"></script>
  <script src="/graphiql/assets/react-dom.js"></script>
  <script src="/graphiql/assets/graphiql.js"></script>
  <script src="/graphiql/assets/init.js"></script>
</body>
</html>
`

// In a file, not inline, so that the Content-Security-Policy can forbid inline scripts. The
// API key goes in the Headers tab; the template says where.
const init = `const fetcher = GraphiQL.createFetcher({ url: '/graphql' })
const query = '{\\n  scopes(first: 10) {\\n    edges { node { scope resourceCount lastCompletedAt } }\\n  }\\n}\\n'
const headers = JSON.stringify({ Authorization: 'Bearer <your reader or admin key>' }, null, 2)
ReactDOM.createRoot(document.getElementById('graphiql'))
  .render(React.createElement(GraphiQL, { fetcher, defaultQuery: query, defaultHeaders: headers, defaultEditorToolsVisibility: 'headers' }))
`

const graphiql: FastifyPluginAsync<{ assets: Assets }> = async function (fastify, { assets }) {
  // The page and its assets hold no data: public like /docs. Queries need a key.
  fastify.get('/graphiql', { schema: { hide: true }, config: { auth: 'public' } }, async (_request, reply) => reply.type('text/html; charset=utf-8').send(page))
  assetRoutes(fastify, '/graphiql/assets/', { ...assets, 'init.js': { text: init, type: 'text/javascript' } })
}

export default graphiql
