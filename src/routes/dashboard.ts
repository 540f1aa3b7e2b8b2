/**
 * The dashboard at `/`: a page of plain HTML and JavaScript in `public/` (no build step), with
 * Chart.js for the chart of scans and graphql-ws for the live feed, both served from their npm
 * packages. It reads everything through the GraphQL API with the key the person gives it once
 * per browser session; the page itself holds no data and is public.
 */
import { readFile } from 'node:fs/promises'
import type { FastifyPluginAsync } from 'fastify'
import { assetRoutes, fromPackage, fromPublic } from '../assets.js'

const dashboard: FastifyPluginAsync = async function (fastify) {
  const page = await readFile(fromPublic('dashboard.html'), 'utf8')
  fastify.get('/', { schema: { hide: true }, config: { auth: 'public' } }, async (_request, reply) =>
    reply.type('text/html; charset=utf-8').send(page))
  assetRoutes(fastify, '/dashboard/', {
    'app.js': { file: fromPublic('dashboard.js'), type: 'text/javascript' },
    'app.css': { file: fromPublic('dashboard.css'), type: 'text/css' },
    'chart.js': { file: fromPackage('chart.js', 'dist/chart.umd.min.js'), type: 'text/javascript' },
    'graphql-ws.js': { file: fromPackage('graphql-ws', 'umd/graphql-ws.min.js'), type: 'text/javascript' }
  })
}

export default dashboard
