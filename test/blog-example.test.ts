import t from 'tap'
import { api, build, liveIds, resource, sqlClient } from './helper.js'

t.test("the blog's example: scan 13 sees A–E, scan 14 sees A B G H, completion deletes C D E", async (t) => {
  const app = await build(t)
  const db = await sqlClient(t, app)
  const tally = api(app)
  const scope = 'aws/123456789012'

  const first = await tally.scan(scope, ['A', 'B', 'C', 'D', 'E'].map((id) => resource(id)))
  t.equal(first.status, 'completed')
  t.match(first.stats, { seen: 5, created: 5, updated: 0, unchanged: 0, deleted: 0, batches: 1 })
  t.same(await liveIds(db, scope), ['A', 'B', 'C', 'D', 'E'])

  const second = await tally.scan(scope, ['A', 'B', 'G', 'H'].map((id) => resource(id)))
  t.equal(second.baselineRunId, first.id)
  t.match(second.stats, { seen: 4, created: 2, updated: 0, unchanged: 2, deleted: 3 })
  t.same(await liveIds(db, scope), ['A', 'B', 'G', 'H'])

  const { rows } = await db.query(
    'select id, deleted_run_id from resources where scope = $1 and deleted_at is not null order by id', [scope])
  t.same(rows, ['C', 'D', 'E'].map((id) => ({ id, deleted_run_id: String(second.id) })), 'soft-deleted by the second run')

  const scopeRow = await db.query('select baseline_run_id, resource_count from scopes where scope = $1', [scope])
  t.same(scopeRow.rows[0], { baseline_run_id: String(second.id), resource_count: '4' })
})
