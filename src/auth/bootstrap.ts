/**
 * The zero-config start's first key: when the database holds no key at all, an admin key for
 * tenant `default` is created and written to `<DATA_DIR>/admin.key` (mode 0600), so that
 * `npm start` then `npm run demo` work with nothing configured. Instances starting together
 * create one key between them (see KeysRepository.insertIfNone).
 */
import { chmod, mkdir, writeFile } from 'node:fs/promises'
import { resolve } from 'node:path'
import type { DbDecorator } from '../plugins/db.js'
import { generateKey } from './keys.js'

export const adminKeyFile = (dataDir: string) => resolve(dataDir, 'admin.key')

/** The file the new key was written to, or undefined when keys existed already. */
export async function bootstrapAdminKey (db: DbDecorator, dataDir: string): Promise<{ id: string, file: string } | undefined> {
  const made = generateKey({ tenant: 'default', role: 'admin', name: 'first admin key (npm start)', createdBy: 'bootstrap' })
  const row = await db.transaction((tx) => db.keys.insertIfNone(made.row, tx))
  if (row === undefined) return undefined
  const file = adminKeyFile(dataDir)
  await mkdir(resolve(dataDir), { recursive: true })
  await writeFile(file, `${made.key}\n`, { mode: 0o600 })
  // writeFile's mode applies only to a new file: an old admin.key keeps its own otherwise.
  await chmod(file, 0o600)
  return { id: row.id, file }
}
