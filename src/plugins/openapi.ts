/**
 * The OpenAPI 3.1 document, generated from the routes' TypeBox schemas by @fastify/swagger:
 * served at /openapi.json and /openapi.yaml, with Swagger UI at /docs. Schemas with an `$id`
 * become named components. Clients are generated from this document, so it must be true:
 * test/openapi.test.ts checks it against every response the test suite sees.
 */
import { createRequire } from 'node:module'
import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import fp from 'fastify-plugin'

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string }

export default fp(async function openapi (fastify) {
  await fastify.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Tally',
        version,
        description: 'Cloud-inventory ingestion: scan runs, batches of resources, and completion that deletes only what vanished.'
      },
      components: {
        securitySchemes: {
          apiKey: { type: 'http', scheme: 'bearer', description: 'A Tally API key: `Authorization: Bearer tally_…` (see `npm run keys`)' }
        }
      },
      tags: [
        { name: 'runs', description: 'Scan runs and their batches' },
        { name: 'health', description: 'Liveness and readiness' }
      ]
    },
    // Keep `$id` names (Run, Problem, …) as component names.
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}` },
    // GraphQL, GraphiQL and the documents themselves are not part of the REST contract.
    hideUntagged: true
  })
  await fastify.register(fastifySwaggerUi, { routePrefix: '/docs' })
  fastify.get('/openapi.json', { schema: { hide: true }, config: { auth: 'public' } }, async () => fastify.swagger())
  fastify.get('/openapi.yaml', { schema: { hide: true }, config: { auth: 'public' } }, async (_request, reply) =>
    reply.type('application/yaml').send(fastify.swagger({ yaml: true })))
}, { name: 'openapi' })
