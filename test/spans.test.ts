/**
 * Splitting a JSON batch into its resources' bytes (src/reconcile/spans.ts): every body it
 * splits is split exactly where JSON.parse sees the resources, and every body of another shape is
 * left whole for the full parse. And the id read from a resource's leading bytes (lines.ts).
 */
import fc from 'fast-check'
import t from 'tap'
import { leadingId } from '../src/reconcile/lines.js'
import { splitBatch } from '../src/reconcile/spans.js'

// Any JSON text, with whitespace of every kind between tokens and every character in strings.
const space = fc.constantFrom('', ' ', '\n', '\t', '\r\n  ')
const text = fc.string({ unit: 'binary', maxLength: 10 })
const json = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small' }, text, fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean(), fc.constant(null),
    fc.array(tie('value'), { maxLength: 4 }), fc.dictionary(text, tie('value'), { maxKeys: 4 }))
})).value
/** JSON.stringify with random whitespace between the tokens. */
function write (value: unknown, gap: () => string): string {
  if (Array.isArray(value)) return `[${gap()}${value.map((v) => write(v, gap)).join(`${gap()},${gap()}`)}${gap()}]`
  if (typeof value === 'object' && value !== null) {
    return `{${gap()}${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}${gap()}:${gap()}${write(v, gap)}`).join(`,${gap()}`)}${gap()}}`
  }
  return JSON.stringify(value)
}
const resource = fc.dictionary(text, json, { maxKeys: 5 })
const batch = fc.record({
  resources: fc.array(resource, { minLength: 1, maxLength: 5 }),
  batchId: fc.option(fc.stringMatching(/^[\x21-\x7e]{1,8}$/).filter((s) => !s.includes('"') && !s.includes('\\')), { nil: undefined }),
  idFirst: fc.boolean()
})

t.test('a body is split where JSON.parse sees its resources', async (t) => {
  fc.assert(fc.property(batch, fc.array(space, { minLength: 1, maxLength: 8 }), ({ resources, batchId, idFirst }, gaps) => {
    let k = 0
    const gap = () => gaps[k++ % gaps.length]!
    const entries: Array<[string, unknown]> = [['resources', resources]]
    if (batchId !== undefined) entries[idFirst ? 'unshift' : 'push'](['batchId', batchId])
    const body = Buffer.from(write(Object.fromEntries(entries), gap))
    const split = splitBatch(body)
    if (split === undefined) throw new Error(`not split: ${body.toString()}`)
    const parsed = JSON.parse(body.toString()) as { resources: unknown[], batchId?: string }
    t.equal(split.batchId, parsed.batchId)
    t.equal(split.spans.length, parsed.resources.length)
    split.spans.forEach((span, i) => t.same(JSON.parse(span.toString()), parsed.resources[i]))
  }), { numRuns: 300 })
})

t.test('a body of another shape is not split', async (t) => {
  const shapes = [
    '', ' ', '[]', '{}', 'null', '{"resources":[]}', '{"resources":{}}', '{"resources":[1]}', '{"resources":[{"id":"a"},]}',
    '{"resources":[{"id":"a"}],}', '{"resources":[{"id":"a"}]} x', '{"resources":[{"id":"a"}]}}', '{"resources":[{"id":"a"}]',
    '{"resources":[{"id":"a"} {"id":"b"}]}', '{"resources":[{"id":"a"}],"resources":[{"id":"b"}]}', '{"resources":[{"id":"a"}],"extra":1}',
    '{"\\u0072esources":[{"id":"a"}]}', '{"resources":[{"id":"a"}],"batchId":1}', '{"resources":[{"id":"a"}],"batchId":"a\\"b"}',
    '{"resources":[{"id":"a"}],"batchId":"x","batchId":"y"}', '{"resources":[{"id":"a}]}', '{"resources":[{"id":"a"]]}',
    '{"resources":[{"id":"a"}]]}', '{"resources":[{"id":"a\\"}]}', '{resources:[{"id":"a"}]}'
  ]
  for (const shape of shapes) t.equal(splitBatch(Buffer.from(shape)), undefined, shape)
  // Strings hide brackets and escaped quotes from the split.
  const split = splitBatch(Buffer.from('{"resources":[{"id":"a","x":"}]\\"{["},\n{"id":"b","y":[{}]}]}'))
  t.same(split?.spans.map(String), ['{"id":"a","x":"}]\\"{["}', '{"id":"b","y":[{}]}'])
})

t.test('the id leading a resource is read from its bytes, whitespace allowed; escaped or later ids are not', async (t) => {
  const id = (s: string) => leadingId(Buffer.from(s))
  t.equal(id('{"id":"a","type":"t"}'), 'a')
  t.equal(id('{ "id" : "arn:aws:s3:::é","type":"t"}'), 'arn:aws:s3:::é')
  t.equal(id('{\n  "id": "a"\n}'), 'a')
  t.equal(id('{"type":"t","id":"a"}'), undefined)
  t.equal(id('{"id":"a\\"b","type":"t"}'), undefined)
  t.equal(id('{"id":"","type":"t"}'), undefined)
  t.equal(id('{"id":1}'), undefined)
  t.equal(id(' {"id":"a"}'), undefined)
  t.equal(id('{"idx":"a"}'), undefined)
})
