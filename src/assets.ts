/**
 * Static files of the pages Tally serves (GraphiQL, the dashboard): read from installed
 * packages or from `public/`, never from a CDN, so the pages work offline and under a strict
 * Content-Security-Policy. No data in them: the routes are public, like /docs.
 */
import { createReadStream, existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'

const require = createRequire(import.meta.url)

function isPackageRoot (dir: string, pkg: string): boolean {
  const file = join(dir, 'package.json')
  return existsSync(file) && (JSON.parse(readFileSync(file, 'utf8')) as { name?: string }).name === pkg
}

/**
 * A file of an installed package (the files are not in its exports): under the directory of
 * its package.json, found from the package's entry point when package.json is not exported.
 */
export function fromPackage (pkg: string, file: string): string {
  let dir: string
  try {
    dir = dirname(require.resolve(`${pkg}/package.json`))
  } catch {
    // Up from the entry point to the package.json that names the package (a dist/ may hold a
    // package.json of its own, saying only its module type).
    dir = dirname(require.resolve(pkg))
    while (!isPackageRoot(dir, pkg)) {
      if (dirname(dir) === dir) throw new Error(`no package.json of ${pkg} above ${require.resolve(pkg)}`)
      dir = dirname(dir)
    }
  }
  return join(dir, file)
}

/** A file of `public/` at the project's root (this module is one level under it, in src/ or dist/). */
export const fromPublic = (file: string) => fileURLToPath(new URL(`../public/${file}`, import.meta.url))

/** Name → a file, or a text made here; and its content type. */
export type Assets = Record<string, ({ file: string } | { text: string }) & { type: string }>

/** GET `${prefix}:name` for each asset; anything else is a 404. */
export function assetRoutes (fastify: FastifyInstance, prefix: string, assets: Assets): void {
  fastify.get<{ Params: { name: string } }>(`${prefix}:name`, { schema: { hide: true }, config: { auth: 'public' } }, async (request, reply) => {
    const { name } = request.params
    // Own properties only: `__proto__` is not an asset.
    const asset = Object.hasOwn(assets, name) ? assets[name] : undefined
    if (asset === undefined) return reply.callNotFound()
    reply.type(asset.type)
    if ('text' in asset) return reply.send(asset.text)
    return reply.header('cache-control', 'public, max-age=3600').send(createReadStream(asset.file))
  })
}
