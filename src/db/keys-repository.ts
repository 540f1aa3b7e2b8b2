/** API keys: created, listed, revoked and looked up by id (see schema.apiKeys and auth/keys.ts). */
import { and, asc, eq, isNull, sql } from 'drizzle-orm'
import type { Db, Tx } from './client.js'
import { apiKeys, type Role } from './schema.js'

export type KeyRow = typeof apiKeys.$inferSelect

export interface NewKey {
  id: string
  tenant: string
  role: Role
  scopes: string[]
  name: string | null
  secretHash: Buffer
  createdBy: string
}

// Any constant works; it only has to be the same for every Tally process sharing a database.
const BOOTSTRAP_LOCK = 7_261_002

export function createKeysRepository (db: Db) {
  return {
    async insert (key: NewKey): Promise<KeyRow> {
      const [row] = await db.insert(apiKeys).values(key).returning()
      return row!
    },

    async byId (id: string): Promise<KeyRow | undefined> {
      const [row] = await db.select().from(apiKeys).where(eq(apiKeys.id, id))
      return row
    },

    async list (tenant?: string): Promise<KeyRow[]> {
      return db.select().from(apiKeys)
        .where(tenant === undefined ? undefined : eq(apiKeys.tenant, tenant))
        .orderBy(asc(apiKeys.tenant), asc(apiKeys.createdAt), asc(apiKeys.id))
    },

    /** Revokes the key; undefined when there is no such key, the row as it was when already revoked. */
    async revoke (id: string): Promise<KeyRow | undefined> {
      const [row] = await db.update(apiKeys).set({ revokedAt: sql`now()` })
        .where(and(eq(apiKeys.id, id), isNull(apiKeys.revokedAt))).returning()
      return row ?? await this.byId(id)
    },

    /**
     * Inserts the key only if no key exists at all, under a lock held to the end of `tx`,
     * so that instances starting together create one between them. Undefined when keys existed.
     */
    async insertIfNone (key: NewKey, tx: Tx): Promise<KeyRow | undefined> {
      await tx.execute(sql`select pg_advisory_xact_lock(${BOOTSTRAP_LOCK})`)
      const [any] = await tx.select({ id: apiKeys.id }).from(apiKeys).limit(1)
      if (any !== undefined) return undefined
      const [row] = await tx.insert(apiKeys).values(key).returning()
      return row
    }
  }
}

export type KeysRepository = ReturnType<typeof createKeysRepository>
