/** The only file that listens: load config, build the app, start, and shut down gracefully. */
import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { loadConfig } from './config.js'

let config
try {
  config = loadConfig()
} catch (err) {
  console.error((err as Error).message)
  process.exit(1)
}

const app = await buildApp(config)
closeWithGrace({ delay: 10_000 }, async ({ err }) => {
  if (err !== undefined) app.log.error({ err }, 'shutting down after an error')
  await app.close()
})
await app.listen({ port: config.PORT, host: config.HOST })
