/**
 * `npm run openapi`: writes the OpenAPI document the server serves to openapi.json (committed;
 * a test fails when it differs). Builds the app like `npm start`, so it needs DATABASE_URL and
 * REDIS_URL.
 */
import { writeFile } from 'node:fs/promises'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'

const app = await buildApp(loadConfig({ ...process.env, LOG_LEVEL: 'warn', MIGRATE_ON_START: 'false' }))
try {
  await app.ready()
  await writeFile(new URL('../openapi.json', import.meta.url), JSON.stringify(app.swagger(), null, 2) + '\n')
  console.log('openapi.json written')
} finally {
  await app.close()
}
