/**
 * The GraphQL inventory API for dashboards (mercurius): POST and GET /graphql, read-only from
 * Postgres, with loaders for nested runs and limits checked before execution.
 *
 * GraphQL reads go through a pool of their own (`db.readPool`, GRAPHQL_POOL_MAX connections)
 * whose statements stop after GRAPHQL_TIMEOUT ms: dashboards cannot take the connections
 * ingestion and /readyz need, and no query runs for long.
 */
import type { FastifyPluginAsync } from 'fastify'
import {
  GraphQLError, GraphQLScalarType, Kind, specifiedRules, validate, valueFromASTUntyped, type DocumentNode, type GraphQLResolveInfo
} from 'graphql'
import fastifyWebsocket from '@fastify/websocket'
import mercurius from 'mercurius'
import { createDb } from '../db/client.js'
import { createInventoryRepository } from '../db/inventory-repository.js'
import { graphqlCodeOf, isStatementTimeout, isTallyError, isUnavailable, type GraphQLCode } from '../errors.js'
import graphiql, { graphiqlAssets } from './graphiql.js'
import { checkShape, limitsRule, MAX_TOKENS } from './limits.js'
import { guardSockets } from './ws-guard.js'
import { DASHBOARDS } from '../plugins/auth.js'
import { createResolvers, type GraphQLContext } from './resolvers.js'
import { schema } from './schema.js'

const { ErrorWithProps } = mercurius

const JSONScalar = new GraphQLScalarType({
  name: 'JSON',
  serialize: (value) => value,
  parseValue: (value) => value,
  parseLiteral: (ast) => valueFromASTUntyped(ast)
})

const graphql: FastifyPluginAsync = async function (fastify) {
  const { config } = fastify
  const limits = { maxDepth: config.GRAPHQL_MAX_DEPTH, maxCost: config.GRAPHQL_MAX_COST, maxFields: config.GRAPHQL_MAX_FIELDS }
  // A subscription's cost, priced with its variables (which the hook below does not have).
  const priceSubscription = (info: GraphQLResolveInfo) => {
    const document: DocumentNode = { kind: Kind.DOCUMENT, definitions: [info.operation, ...Object.values(info.fragments)] }
    const [error] = validate(info.schema, document, [limitsRule(limits, info.variableValues, undefined)])
    if (error !== undefined) throw new ErrorWithProps(error.message, error.extensions)
  }
  const { resolvers, loaders } = createResolvers(createInventoryRepository(createDb(fastify.db.readPool)),
    { runCompletedTopic: fastify.events.runCompletedTopic, priceSubscription })
  // GraphQL over HTTP: a `null` optional parameter means the same as none. Mercurius's body
  // schema refuses `extensions: null` (graphql/graphql-http#28, a MUST of the spec's audit).
  fastify.addHook('preValidation', async (request) => {
    const body = request.body as { extensions?: unknown } | null
    if (request.routeOptions.url === '/graphql' && request.method === 'POST' && body !== null && typeof body === 'object' && body.extensions === null) delete body.extensions
  })
  // The WebSocket server mercurius would register with 1 MB messages; it takes this one instead.
  await fastify.register(fastifyWebsocket, { options: { maxPayload: config.GRAPHQL_WS_MAX_MESSAGE } })
  guardSockets(fastify.websocketServer, {
    maxSubscriptions: config.GRAPHQL_WS_MAX_SUBSCRIPTIONS,
    maxSocketsPerKey: config.GRAPHQL_WS_MAX_SOCKETS_PER_KEY,
    authenticate: (authorization, address) => fastify.authenticate(authorization, DASHBOARDS, address),
    log: fastify.log
  })
  await fastify.register(mercurius, {
    schema,
    resolvers: { ...resolvers, JSON: JSONScalar },
    loaders,
    graphiql: false,
    // The limits need the request's variables, which a cached validation would not see.
    cache: false,
    path: '/graphql',
    // Bounds parsing: a document of more tokens is refused before it is walked.
    graphql: { parseOptions: { maxTokens: MAX_TOKENS } },
    context: (request, reply): Pick<GraphQLContext, 'access' | 'signal'> => {
      // A client that hangs up stops its query at the next resolver: `signal` says it left.
      const left = new AbortController()
      reply.raw.once('close', () => { if (!reply.raw.writableFinished) left.abort() })
      // The auth hook let nothing through without a key (a WebSocket's comes in connection_init).
      return { access: request.auth, signal: left.signal }
    },
    validationRules: ({ variables, operationName }) => [limitsRule(limits, variables, operationName)],
    // graphql-ws (and the older subscriptions-transport-ws) on GET /graphql. The key comes with
    // the upgrade request's Authorization header, or (browsers cannot set one) in
    // connection_init's payload as `authorization`. The guard (ws-guard.ts) has closed every
    // socket without a good one before mercurius sees its connection_init, and bounds the rest.
    subscription: {
      emitter: fastify.events.emitter,
      // Called at the (one: the guard closes a socket sending another) connection_init.
      context: (socket, request) => {
        const left = new AbortController()
        socket.once('close', () => left.abort())
        const { authorization } = request.headers
        return { access: request.auth, signal: left.signal, ...(request.auth === null ? {} : { recheck: () => fastify.authenticate(authorization, DASHBOARDS) }) }
      },
      // The key of connection_init's payload, as the guard found it (from the key cache).
      onConnect: async ({ payload }) => {
        const authorization = (payload as { authorization?: unknown } | undefined)?.authorization
        if (typeof authorization !== 'string') return true
        const recheck = () => fastify.authenticate(authorization, DASHBOARDS)
        return { access: await recheck(), recheck }
      },
      keepAlive: 30_000
    },
    errorFormatter: (execution, context) => {
      // A resolver failing with anything but ErrorWithProps is a bug or an outage: log it,
      // and answer without its details. A subscription's events come with no reply (and no
      // status or headers to set): they log through the app's logger.
      const reply = context.reply as typeof context.reply | undefined
      const log = reply?.log ?? fastify.log
      let outage = false
      const errors = execution.errors?.map((e) => {
        const original = e.originalError
        // Parse and validation errors, and our own refusals, go out as they are.
        if (original == null || original instanceof ErrorWithProps) return e
        // Refused before execution: no key, wrong role, too many requests.
        if (isTallyError(original)) {
          return new GraphQLError(original.message, { extensions: { code: graphqlCodeOf(original.code) } })
        }
        if (isStatementTimeout(original)) {
          return new GraphQLError(`The query ran longer than ${config.GRAPHQL_TIMEOUT} ms and was stopped; ask for less`,
            { nodes: e.nodes, path: e.path, extensions: { code: 'QUERY_TIMEOUT' satisfies GraphQLCode } })
        }
        if (isUnavailable(original)) {
          // An outage, not a bug: 503 like the REST API, so clients retry.
          outage = true
          log.warn({ err: original }, 'graphql: dependency unavailable')
          reply?.header('retry-after', '1')
          return new GraphQLError('Postgres is unreachable; retry the request', { nodes: e.nodes, path: e.path, extensions: { code: graphqlCodeOf('unavailable') } })
        }
        // Fastify's and mercurius's own 4xx (bad JSON, a body too large, a mutation over GET) say what was wrong.
        const status = (original as { statusCode?: unknown }).statusCode
        if (typeof status === 'number' && status >= 400 && status < 500) return e
        // Anything else is a bug: logged, and answered without its details.
        log.error({ err: original }, 'graphql request failed')
        return new GraphQLError('Internal error', { nodes: e.nodes, path: e.path, extensions: { code: graphqlCodeOf('internal') } })
      })
      // mercurius's formatter logs each error with its stack at info; a client's mistake is one
      // line here instead (outages and bugs were logged above, at warn and error).
      const quietLog = log.child({}, { level: 'warn' })
      const quiet = reply === undefined
        ? { ...context, app: Object.assign(Object.create(fastify) as typeof fastify, { log: quietLog }) }
        : { ...context, reply: Object.assign(Object.create(reply) as typeof reply, { log: quietLog }) }
      const formatted = mercurius.defaultErrorFormatter({ ...execution, ...(errors === undefined ? {} : { errors }) }, quiet)
      const listed = (formatted.response.errors ?? []) as Array<{ message: string, extensions?: Record<string, unknown> }>
      // graphql's own parse and validation errors have no code: they get one a client can branch on.
      for (const error of listed) {
        if (error.extensions?.code === undefined) {
          error.extensions = { ...error.extensions, code: (error.message.startsWith('Syntax Error') ? 'GRAPHQL_PARSE_FAILED' : 'GRAPHQL_VALIDATION_FAILED') satisfies GraphQLCode }
        }
      }
      if (!outage && listed.length > 0) log.info({ errors: listed.slice(0, 10).map((e) => ({ code: e.extensions?.code, message: e.message })) }, 'graphql: errors in the answer')
      const refused = execution.errors?.map((e) => e.originalError).find(isTallyError)
      if (refused !== undefined) return { ...formatted, statusCode: refused.statusCode }
      return outage ? { ...formatted, statusCode: 503 } : formatted
    }
  })
  // Depth and size before graphql's own validation, whose cost grows with both.
  fastify.graphql.addHook('preValidation', async (_schema, document) => {
    const [error] = checkShape(document, limits)
    if (error !== undefined) throw new ErrorWithProps(error.message, error.extensions, 400)
  })
  // Mercurius neither validates a subscription's document nor applies validationRules to it:
  // each event would run whatever it selects. The same checks as a query's, before it starts;
  // the cost, which needs the variables, in the subscribe resolver (priceSubscription).
  fastify.graphql.addHook('preSubscriptionExecution', async (schema, document) => {
    const [error] = [...checkShape(document, limits), ...validate(schema, document, specifiedRules)]
    if (error !== undefined) throw new ErrorWithProps(error.message, error.extensions)
  })
  if (config.GRAPHIQL ?? config.NODE_ENV !== 'production') {
    const assets = graphiqlAssets()
    if (assets !== undefined) await fastify.register(graphiql, { assets })
    else if (config.GRAPHIQL === true) fastify.log.warn('GRAPHIQL is on but its packages (graphiql, react, react-dom) are not installed, as in a production install: /graphiql is off')
  }
}

export default graphql
