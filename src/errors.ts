/**
 * Every error Tally answers with, declared once: a stable `code`, an HTTP status and a title.
 * Reconcile and repositories throw `TallyError`s; the root error handler renders them as
 * `application/problem+json` (RFC 9457) without knowing one class from another.
 */

export const problemCodes = {
  validation_failed: { status: 400, title: 'The request is not valid' },
  batch_too_large: { status: 413, title: 'The batch is larger than this server accepts' },
  unsupported_media_type: { status: 415, title: 'The body is of a media type this route does not take' },
  not_found: { status: 404, title: 'No such route' },
  run_not_found: { status: 404, title: 'No such run' },
  run_not_open: { status: 409, title: 'The run is not open' },
  batch_id_reused: { status: 422, title: 'The batch id was already used for a different batch' },
  scope_has_open_run: { status: 409, title: 'The scope already has an open run' },
  run_state_lost: { status: 409, title: "The run's Redis state is lost; abort it and rescan" },
  expected_count_mismatch: { status: 422, title: 'The run saw a different number of resources than expected' },
  mass_deletion_guard: { status: 422, title: 'Completion would delete too large a part of the inventory' },
  unauthorized: { status: 401, title: 'Authentication is required' },
  forbidden: { status: 403, title: 'Not allowed' },
  method_not_allowed: { status: 405, title: 'The route does not take this method' },
  not_acceptable: { status: 406, title: 'No acceptable representation' },
  rate_limited: { status: 429, title: 'Too many requests; retry later' },
  too_many_open_runs: { status: 429, title: 'The tenant has as many runs in flight as this server allows' },
  client_error: { status: 400, title: 'The request cannot be served; its status says why' },
  unavailable: { status: 503, title: 'A dependency is unavailable; retry later' },
  internal: { status: 500, title: 'Internal error' }
} as const

export type ProblemCode = keyof typeof problemCodes

/**
 * GraphQL's error codes (`extensions.code`): a problem code uppercased (a refusal before
 * execution: `UNAUTHORIZED`, `RATE_LIMITED`, `UNAVAILABLE`, `INTERNAL`, …), or one of these, which
 * only GraphQL answers with.
 */
export const graphqlCodes = {
  GRAPHQL_PARSE_FAILED: 'the document does not parse',
  GRAPHQL_VALIDATION_FAILED: 'the document does not fit the schema',
  QUERY_TOO_DEEP: 'the query nests deeper than GRAPHQL_MAX_DEPTH',
  QUERY_TOO_LARGE: 'the query selects more than GRAPHQL_MAX_FIELDS fields',
  QUERY_TOO_COSTLY: 'the query may return more than GRAPHQL_MAX_COST objects',
  FIRST_TOO_LARGE: '`first` is outside 0 … the page limit',
  QUERY_TIMEOUT: 'the query ran longer than GRAPHQL_TIMEOUT',
  BAD_CURSOR: '`after` is not a cursor this server issued',
  BAD_USER_INPUT: 'an argument Postgres cannot take (U+0000, a time that is not ISO 8601)',
  CLIENT_CLOSED: 'the client went away before the query ran',
  TOO_MANY_SUBSCRIPTIONS: 'a WebSocket asked for more than GRAPHQL_WS_MAX_SUBSCRIPTIONS subscriptions'
} as const

export type GraphQLCode = keyof typeof graphqlCodes | Uppercase<ProblemCode>

/** The GraphQL code of a problem code. */
export const graphqlCodeOf = (code: ProblemCode): GraphQLCode => code.toUpperCase() as Uppercase<ProblemCode>

export class TallyError extends Error {
  readonly code: ProblemCode
  readonly statusCode: number
  readonly title: string
  readonly extra: Record<string, unknown> | undefined

  constructor (code: ProblemCode, detail: string, extra?: Record<string, unknown>) {
    super(detail)
    this.name = 'TallyError'
    this.code = code
    this.statusCode = problemCodes[code].status
    this.title = problemCodes[code].title
    this.extra = extra
  }
}

export function isTallyError (err: unknown): err is TallyError {
  return err instanceof TallyError
}

const UNAVAILABLE_NET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'EAI_AGAIN'])
const UNAVAILABLE_MESSAGES = [
  'Connection is closed', // ioredis, client disconnected
  "Stream isn't writeable", // ioredis, offline queue off
  'Connection terminated', // pg, server went away
  'timeout exceeded when trying to connect', // pg pool
  'Client has encountered a connection error', // pg
  'Too many Cluster redirections', // ioredis Cluster, topology changing faster than it follows
  'Failed to refresh slots cache', // ioredis Cluster, no node answered
  'None of startup nodes is available' // ioredis Cluster
]

type Cause = { code?: unknown, name?: unknown, message?: unknown, cause?: unknown, previousErrors?: unknown }

/**
 * The error and its `cause`s, five deep (drizzle wraps pg errors), and the errors a Redis
 * transaction was discarded for (ioredis's EXECABORT carries them as `previousErrors`).
 */
function * causes (err: unknown): Generator<Cause> {
  for (let e = err as Cause | undefined, depth = 0; e !== undefined && e !== null && depth < 5; e = e.cause as Cause | undefined, depth++) {
    yield e
    if (Array.isArray(e.previousErrors)) yield * (e.previousErrors as Cause[])
  }
}

/** True when Postgres cancelled the statement (SQLSTATE 57014: statement_timeout). */
export function isStatementTimeout (err: unknown): boolean {
  for (const e of causes(err)) if (e.code === '57014') return true
  return false
}

/**
 * True when an error means Postgres or Redis could not be reached or dropped us: the request
 * can be retried as it is (503).
 */
export function isUnavailable (err: unknown): boolean {
  for (const e of causes(err)) {
    const code = typeof e.code === 'string' ? e.code : ''
    if (UNAVAILABLE_NET_CODES.has(code)) return true
    // SQLSTATE class 08: connection exception; 57P0x: server shutting down or starting up.
    if (/^(08...|57P0[1-4]|53300)$/.test(code)) return true
    if (e.name === 'MaxRetriesPerRequestError' || e.name === 'ClusterAllFailedError') return true
    const message = typeof e.message === 'string' ? e.message : ''
    if (UNAVAILABLE_MESSAGES.some((m) => message.includes(m))) return true
    // Redis Cluster moving or failing over: a redirection ioredis gave up on, a slot in
    // migration, no primary for a slot, a node still loading or demoted to replica. Redis
    // refusing writes: full (OOM, under noeviction), failing to persist (MISCONF), or busy with
    // a script that ran too long (BUSY).
    if (/^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN|NOREPLICAS|MASTERDOWN|LOADING|READONLY|OOM|MISCONF|BUSY) /.test(message)) return true
  }
  return false
}
