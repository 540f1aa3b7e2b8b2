/** Runs the naive design's server for the benchmark: DATABASE_URL, PORT, HOST, NAIVE_INDEXES (1, the default: a dashboard's indexes; 0: the primary key only). */
import { buildNaiveApp } from './app.js'

const app = await buildNaiveApp(process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/tally_bench', undefined, process.env.NAIVE_INDEXES !== '0')
process.on('SIGTERM', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
await app.listen({ port: Number(process.env.PORT ?? 3001), host: process.env.HOST ?? '127.0.0.1' })
