/**
 * The content hash is written by the walk that checks a resource (no canonical-JSON library):
 * its bytes must stay those `safe-stable-stringify` wrote before it, or every stored hash would
 * read as changed after an upgrade and the next scan would rewrite the whole inventory.
 */
import fc from 'fast-check'
import { configure } from 'safe-stable-stringify'
import t from 'tap'
import xxhash from 'xxhash-wasm'
import { makeResource } from '../bench/estate.js'
import { canonicalResource } from '../src/reconcile/canonical.js'
import { contentHash, hashResource } from '../src/reconcile/content-hash.js'
import type { ResourceIn } from '../src/reconcile/types.js'

const stable = configure({ deterministic: true, bigint: false, circularValue: Error })
const { h64ToString } = await xxhash()
/** The hash as it was computed up to this change. */
const before = (r: ResourceIn) => h64ToString(stable({
  type: r.type, name: r.name ?? null, region: r.region ?? null, tags: r.tags ?? {}, attributes: r.attributes ?? {}
}) as string)

// Strings of any code points JSON and Postgres can hold: quotes, backslashes, control characters, astral ones.
const text = fc.string({ unit: 'binary', maxLength: 12 }).filter((s) => !s.includes('\u0000'))
// `__proto__` (and `constructor.prototype`) are refused: the routes parse without secure-json-parse's scans.
const key = fc.oneof(text, fc.constantFrom('a', 'B', 'é', '"', '\\', '\n', '😀')).filter((s) => s !== '__proto__' && s !== 'constructor')
const json = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small' }, text, fc.double({ noNaN: true, noDefaultInfinity: true }), fc.integer(), fc.boolean(),
    fc.constant(null), fc.array(tie('value'), { maxLength: 4 }), fc.dictionary(key, tie('value'), { maxKeys: 5 }))
})).value
const resource = fc.record({
  id: fc.string({ minLength: 1 }),
  type: text,
  name: fc.option(text, { nil: undefined }),
  region: fc.option(text, { nil: undefined }),
  tags: fc.option(fc.dictionary(key, text), { nil: undefined }),
  attributes: fc.option(fc.dictionary(key, json), { nil: undefined })
}, { requiredKeys: ['id', 'type'] })

t.test('byte for byte what safe-stable-stringify wrote, on random resources', async (t) => {
  fc.assert(fc.property(resource, (r) => {
    // Parsed from JSON, as the server gets it (-0 becomes 0, as JSON.stringify writes it).
    const sent = JSON.parse(JSON.stringify(r)) as ResourceIn
    const result = canonicalResource(sent, '', Infinity)
    if (!('canonical' in result)) throw new Error(`refused: ${result.path} ${result.message}`)
    const { id: _id, ...content } = sent
    t.equal(result.canonical, stable({ name: null, region: null, tags: {}, attributes: {}, ...content }))
    t.equal(contentHash(sent), before(sent))
  }), { numRuns: 2000, seed: 14 })
})

t.test('and on the benchmark estate', async (t) => {
  let same = 0
  for (let i = 0; i < 5000; i++) {
    const r = JSON.parse(JSON.stringify(makeResource(3, '123456789012', i, 1 + (i % 3)))) as ResourceIn
    if (contentHash(r) === before(r)) same++
  }
  t.equal(same, 5000)
})

t.test('key order and absent optional fields are not changes; anything else is', async (t) => {
  const a = { id: 'x', type: 't', tags: { b: '1', a: '2' }, attributes: { z: [1, { y: 1, x: 2 }], a: 'é' } }
  const b = { id: 'x', attributes: { a: 'é', z: [1, { x: 2, y: 1 }] }, tags: { a: '2', b: '1' }, type: 't', name: undefined }
  t.equal(contentHash(a), contentHash(b))
  t.equal(contentHash({ id: 'x', type: 't' }), contentHash({ id: 'x', type: 't', tags: {}, attributes: {} }))
  t.not(contentHash(a), contentHash({ ...a, attributes: { z: [{ y: 1, x: 2 }, 1], a: 'é' } }), 'array order is content')
  t.not(contentHash(a), contentHash({ ...a, name: '' }), 'an empty name is not an absent one')
})

t.test('the checking walk refuses, with the place', async (t) => {
  const refused = (attributes: unknown) => hashResource({ id: 'x', type: 't', attributes }, '/resources/0', 10)
  t.same(refused({ a: 'x\u0000' }), { path: '/resources/0/attributes/a', message: 'must not contain U+0000 or unpaired surrogates' })
  t.same(refused({ a: ['ok', '\ud800'] }), { path: '/resources/0/attributes/a/1', message: 'must not contain U+0000 or unpaired surrogates' })
  t.match(refused({ a: { 'k\u0000': 1 } }), { path: '/resources/0/attributes/a', message: /keys must not/ })
  t.match(refused(JSON.parse('{"a": {"__proto__": {"x": 1}}}')), { path: '/resources/0/attributes/a', message: /__proto__/ })
  t.match(refused(JSON.parse('{"constructor": {"prototype": {"x": 1}}}')), { path: '/resources/0/attributes', message: /constructor\.prototype/ })
  t.same(refused({ constructor: { name: 'fine' } }), undefined, 'a key named constructor is fine')
  t.match(refused({ n: Infinity }), { path: '/resources/0/attributes/n', message: /1e309/ })
  t.match(refused(Array.from({ length: 11 }, () => 1)), { path: '/resources/0', message: /MAX_RESOURCE_KEYS/ })
  let deep: unknown = 1
  for (let i = 0; i < 100_000; i++) deep = [deep]
  t.match(hashResource({ id: 'x', type: 't', attributes: { deep } }, '', 1e6), { message: /nests too deep/ }, 'iteratively deep input is refused at the limit, not by the stack')
  t.same(refused({ a: 'fine', b: [1, 2.5, true, null] }), undefined)
})
