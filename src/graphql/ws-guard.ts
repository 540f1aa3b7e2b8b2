/**
 * What stands between a WebSocket on /graphql and mercurius's subscription server, which takes a
 * socket without a key, parses documents without a token bound, and keeps every refused
 * subscription in memory until the socket closes. Each socket's incoming messages pass here first
 * (its `emit('message')` is wrapped as the socket is accepted, before mercurius listens), with
 * graphql-ws's close codes:
 *
 * - `connection_init` must come within INIT_TIMEOUT_MS of the upgrade (else 4408) and carry a key, in its payload
 *   (`authorization`) or in the upgrade request's `Authorization` header (else 4401). The key is
 *   checked here, before mercurius sees the message: refused, 4403; too many refused from the
 *   address, 4429; a dependency down, 1013 (try again later); one key holds at most `maxSocketsPerKey` sockets on this instance (else 4429).
 *   Anything but a ping sent before that is 4401, as graphql-ws's own server does; a second init 4429.
 * - `subscribe` (`start` in the older protocol): a document of more than MAX_TOKENS tokens is
 *   refused with an error for its id, unparsed by mercurius; at most `maxSubscriptions` at once
 *   (an error for the one past it); an id in use closes the socket (4409).
 * - When mercurius ends a subscription with an error (a refusal), the guard tells it the client
 *   stopped it, so mercurius drops what it kept for it.
 *
 * Messages above GRAPHQL_WS_MAX_MESSAGE bytes never get here: the WebSocket server closes the
 * socket (1009). Sockets per key are counted per instance.
 */
import type { IncomingMessage } from 'node:http'
import type { FastifyBaseLogger } from 'fastify'
import { GraphQLError, parse } from 'graphql'
import type { WebSocket, WebSocketServer } from 'ws'
import type { Access } from '../auth/keys.js'
import { isTallyError, isUnavailable, type GraphQLCode } from '../errors.js'
import { MAX_TOKENS } from './limits.js'

/** As graphql-ws's server (connectionInitWaitTimeout). */
export const INIT_TIMEOUT_MS = 3000

export interface GuardOptions {
  maxSubscriptions: number
  maxSocketsPerKey: number
  /** The access of an `Authorization` value sent from `address`; throws a TallyError when refused. */
  authenticate: (authorization: string, address: string | undefined) => Promise<Access>
  log: FastifyBaseLogger
}

/** The message types of both protocols mercurius speaks (graphql-transport-ws, and the older graphql-ws). */
const SUBSCRIBE = new Set(['subscribe', 'start'])
const STOP = new Set(['complete', 'stop'])
const KEEP_ALIVE = new Set(['ping', 'pong'])

interface Message { type?: unknown, id?: unknown, payload?: { query?: unknown, authorization?: unknown } | null }

function read (data: unknown): Message | undefined {
  try {
    const message: unknown = JSON.parse(String(data))
    return typeof message === 'object' && message !== null ? message as Message : undefined
  } catch {
    return undefined // mercurius answers it
  }
}

/** Why a document may not even be parsed, or undefined. */
function tooLarge (query: unknown): string | undefined {
  if (typeof query !== 'string') return undefined
  try {
    parse(query, { maxTokens: MAX_TOKENS })
    return undefined
  } catch (err) {
    return err instanceof GraphQLError && err.message.includes('tokens') ? err.message : undefined
  }
}

/** Guards every socket `wss` accepts from now on. */
export function guardSockets (wss: WebSocketServer, options: GuardOptions): void {
  const socketsByKey = new Map<string, number>()
  wss.on('connection', (socket: WebSocket, request: IncomingMessage) => guard(socket, request, options, socketsByKey))
}

function guard (socket: WebSocket, request: IncomingMessage, options: GuardOptions, socketsByKey: Map<string, number>): void {
  const deliver = socket.emit.bind(socket) as (event: string, ...args: unknown[]) => boolean
  const stopType = socket.protocol === 'graphql-ws' ? 'stop' : 'complete'
  let state: 'new' | 'checking' | 'ready' | 'closed' = 'new'
  let keyId: string | undefined
  const queued: unknown[][] = []
  const active = new Set<string>()

  const close = (code: number, reason: string) => {
    if (state === 'closed') return
    state = 'closed'
    socket.close(code, reason)
  }
  const timer = setTimeout(() => close(4408, 'Connection initialisation timeout'), INIT_TIMEOUT_MS)
  socket.once('close', () => {
    state = 'closed'
    clearTimeout(timer)
    if (keyId === undefined) return
    const left = (socketsByKey.get(keyId) ?? 1) - 1
    if (left > 0) socketsByKey.set(keyId, left)
    else socketsByKey.delete(keyId)
  })
  const refuse = (id: string, message: string, code: GraphQLCode) => {
    socket.send(JSON.stringify({ type: 'error', id, payload: [{ message, extensions: { code } }] }))
  }

  /** Checks the key of the connection_init `args` carry, then lets it and what came meanwhile through. */
  const init = (message: Message, args: unknown[]) => {
    const fromPayload = message.payload?.authorization
    const authorization = typeof fromPayload === 'string' ? fromPayload : request.headers.authorization
    if (authorization === undefined) return close(4401, 'Unauthorized: send an API key, { authorization: "Bearer tally_…" }')
    // The client did its part in time; the check takes what Postgres takes.
    clearTimeout(timer)
    state = 'checking'
    options.authenticate(authorization, request.socket.remoteAddress).then((access) => {
      if (state === 'closed') return
      const held = socketsByKey.get(access.keyId) ?? 0
      if (held >= options.maxSocketsPerKey) return close(4429, `Too many WebSockets for this key (${options.maxSocketsPerKey})`)
      socketsByKey.set(access.keyId, held + 1)
      keyId = access.keyId
      state = 'ready'
      deliver('message', ...args)
      for (const next of queued.splice(0)) socket.emit('message', ...next)
    }, (err: unknown) => {
      if (isTallyError(err) && err.code === 'rate_limited') return close(4429, err.message.slice(0, 120))
      if (isTallyError(err)) return close(4403, `Forbidden: ${err.message}`.slice(0, 120))
      if (isUnavailable(err)) return close(1013, 'Try again later')
      options.log.error({ err }, 'graphql-ws: key check failed')
      close(1011, 'Internal error')
    })
  }

  const onMessage = (args: unknown[]): boolean => {
    if (state === 'closed') return false
    if (state === 'checking') {
      queued.push(args)
      return true
    }
    const message = read(args[0])
    const type = message?.type
    if (state === 'new') {
      if (type === 'connection_init') {
        init(message!, args)
        return true
      }
      if (typeof type === 'string' && KEEP_ALIVE.has(type)) return deliver('message', ...args)
      close(4401, 'Unauthorized: connection_init first')
      return false
    }
    if (type === 'connection_init') {
      close(4429, 'Too many initialisation requests')
      return false
    }
    if (typeof type === 'string' && SUBSCRIBE.has(type)) {
      const id = String(message!.id)
      if (active.has(id)) {
        close(4409, `Subscriber for ${id.slice(0, 64)} already exists`)
        return false
      }
      if (active.size >= options.maxSubscriptions) {
        refuse(id, `A WebSocket holds at most ${options.maxSubscriptions} subscriptions (GRAPHQL_WS_MAX_SUBSCRIPTIONS)`, 'TOO_MANY_SUBSCRIPTIONS')
        return true
      }
      const refusal = tooLarge(message!.payload?.query)
      if (refusal !== undefined) {
        refuse(id, refusal, 'GRAPHQL_PARSE_FAILED')
        return true
      }
      active.add(id)
    } else if (typeof type === 'string' && STOP.has(type)) {
      active.delete(String(message!.id))
    }
    return deliver('message', ...args)
  }

  socket.emit = function (event: string | symbol, ...args: unknown[]): boolean {
    return event === 'message' ? onMessage(args) : deliver(event as string, ...args)
  } as WebSocket['emit']

  // What mercurius sends: a subscription that ended (complete) or was refused (error) frees its
  // place; for a refused one, mercurius is told the client stopped it, and drops what it kept.
  const send = socket.send.bind(socket) as (data: unknown, ...rest: unknown[]) => void
  socket.send = function (data: unknown, ...rest: unknown[]): void {
    if (typeof data === 'string' && (data.startsWith('{"type":"error","id":') || data.startsWith('{"type":"complete","id":'))) {
      const id = read(data)?.id
      if (id !== undefined && id !== null && active.delete(String(id)) && data.startsWith('{"type":"error"')) {
        deliver('message', Buffer.from(JSON.stringify({ type: stopType, id })), false)
      }
    }
    send(data, ...rest)
  } as WebSocket['send']
}
