/**
 * The GraphQL inventory API for dashboards (mercurius): POST and GET /graphql, read-only from
 * Postgres, with loaders for nested runs and limits checked before execution.
 */
import type { FastifyPluginAsync } from 'fastify'
import { GraphQLError, GraphQLScalarType, valueFromASTUntyped } from 'graphql'
import { isUnavailable } from '../errors.js'
import mercurius from 'mercurius'
import { createInventoryRepository } from '../db/inventory-repository.js'
import graphiql from './graphiql.js'
import { limitsRule } from './limits.js'
import { createResolvers } from './resolvers.js'
import { schema } from './schema.js'

const JSONScalar = new GraphQLScalarType({
  name: 'JSON',
  serialize: (value) => value,
  parseValue: (value) => value,
  parseLiteral: (ast) => valueFromASTUntyped(ast)
})

const graphql: FastifyPluginAsync = async function (fastify) {
  const { config } = fastify
  const { resolvers, loaders } = createResolvers(createInventoryRepository(fastify.db.drizzle))
  const limits = { maxDepth: config.GRAPHQL_MAX_DEPTH, maxCost: config.GRAPHQL_MAX_COST }
  await fastify.register(mercurius, {
    schema,
    resolvers: { ...resolvers, JSON: JSONScalar },
    loaders,
    graphiql: false,
    // The limits need the request's variables, which a cached validation would not see.
    cache: false,
    path: '/graphql',
    validationRules: ({ variables, operationName }) => [limitsRule(limits, variables, operationName)],
    errorFormatter: (execution, context) => {
      // A resolver failing with anything but ErrorWithProps is a bug or an outage: log it,
      // and answer without its details.
      let outage = false
      const errors = execution.errors?.map((e) => {
        // Only execution errors have a path; parse and validation errors go out as they are.
        if (e.path === undefined || e.originalError == null || e.originalError instanceof mercurius.ErrorWithProps) return e
        if (isUnavailable(e.originalError)) {
          // An outage, not a bug: 503 like the REST API, so clients retry.
          outage = true
          context.reply.log.warn({ err: e.originalError }, 'graphql: dependency unavailable')
          context.reply.header('retry-after', '1')
          return new GraphQLError('Postgres is unreachable; retry the request', { nodes: e.nodes, path: e.path, extensions: { code: 'UNAVAILABLE' } })
        }
        context.reply.log.error({ err: e.originalError }, 'graphql resolver failed')
        return new GraphQLError('Internal error', { nodes: e.nodes, path: e.path, extensions: { code: 'INTERNAL' } })
      })
      const formatted = mercurius.defaultErrorFormatter({ ...execution, ...(errors === undefined ? {} : { errors }) }, context)
      return outage ? { ...formatted, statusCode: 503 } : formatted
    }
  })
  if (config.GRAPHIQL ?? config.NODE_ENV !== 'production') await fastify.register(graphiql)
}

export default graphql
