/**
 * Runs before `npm start`, `npm run keys` and `npm run db:migrate`: compiles src/ to dist/ when
 * TypeScript is installed (a development install: dist/ then always matches src/). A production
 * install (`npm ci --omit=dev`) has no TypeScript and runs the dist/ its image was built with.
 * Plain JavaScript: it must run where tsx is not installed.
 */
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
let tsc
try {
  tsc = require.resolve('typescript/bin/tsc')
} catch {
  if (existsSync(new URL('../dist/server.js', import.meta.url))) process.exit(0)
  console.error('dist/ is not built and TypeScript is not installed: run `npm ci` (with dev dependencies) and `npm run build`')
  process.exit(1)
}
const { status } = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { stdio: 'inherit', cwd: new URL('..', import.meta.url) })
process.exit(status ?? 1)
