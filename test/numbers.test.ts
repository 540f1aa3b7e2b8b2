/**
 * findAlteredNumber against a model: random JSON documents whose numbers are written as random
 * decimal texts (up to 30 digits, exponents up to ±999), among strings full of digits, quotes,
 * escapes and keys holding `/` and `~`. The model knows each number's place, and decides whether
 * JSON.parse alters it with BigInt arithmetic: the text's value against the value of what
 * JavaScript writes back for it (the shortest decimal that reads as the same double).
 */
import t from 'tap'
import fc from 'fast-check'
import { findAlteredNumber } from '../src/reconcile/numbers.js'

/** A decimal text as an exact rational m × 10^e (m a BigInt), or undefined for Infinity/NaN. */
function exact (text: string): { m: bigint, e: number } | undefined {
  const match = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text)
  if (match === null) return undefined
  const frac = match[3] ?? ''
  return { m: BigInt(`${match[1]}${match[2]}${frac}`), e: Number(match[4] ?? 0) - frac.length }
}

function sameValue (a: string, b: string): boolean {
  const x = exact(a)
  const y = exact(b)
  if (x === undefined || y === undefined) return false
  const e = Math.min(x.e, y.e)
  return x.m * 10n ** BigInt(x.e - e) === y.m * 10n ** BigInt(y.e - e)
}

const altered = (token: string) => !Number.isFinite(Number(token)) || !sameValue(token, String(Number(token)))

type Tree = { number: string } | { string: string } | { array: Tree[] } | { object: Array<[string, Tree]> }

const digits = (min: number, max: number) => fc.string({ unit: fc.constantFrom(...'0123456789'), minLength: min, maxLength: max })
const numberText = fc.tuple(fc.boolean(), fc.oneof(fc.constant('0'), fc.tuple(fc.constantFrom(...'123456789'), digits(0, 29)).map(([a, b]) => a + b)),
  fc.option(digits(1, 30)), fc.option(fc.tuple(fc.constantFrom('e', 'E'), fc.constantFrom('', '+', '-'), fc.integer({ min: 0, max: 999 }))))
  .map(([neg, int, frac, exp]) => `${neg ? '-' : ''}${int}${frac === null ? '' : `.${frac}`}${exp === null ? '' : `${exp[0]}${exp[1]}${exp[2]}`}`)
const text = fc.string({ unit: fc.constantFrom(...'0123456789.eE-+"\\/~:,[]{} ab'), maxLength: 40 })

const tree: fc.Arbitrary<Tree> = fc.letrec<{ tree: Tree }>((tie) => ({
  tree: fc.oneof({ depthSize: 'small', withCrossShrink: true },
    numberText.map((n) => ({ number: n })),
    text.map((s) => ({ string: s })),
    fc.array(tie('tree'), { maxLength: 4 }).map((array) => ({ array })),
    fc.uniqueArray(fc.tuple(text, tie('tree')), { maxLength: 4, selector: ([k]) => k }).map((object) => ({ object })))
})).tree

/** The document as text, and the place of its first altered number (JSON pointer), if any. */
function write (node: Tree, path: string, found: { first?: string }): string {
  if ('number' in node) {
    if (found.first === undefined && altered(node.number)) found.first = path
    return node.number
  }
  if ('string' in node) return JSON.stringify(node.string)
  if ('array' in node) return `[ ${node.array.map((n, i) => write(n, `${path}/${i}`, found)).join(' , ')} ]`
  return `{${node.object.map(([k, n]) => `${JSON.stringify(k)} :${write(n, `${path}/${k.replaceAll('~', '~0').replaceAll('/', '~1')}`, found)}`).join(',')}}`
}

t.test('findAlteredNumber finds the first number JSON.parse alters, at its place, and no other', async (t) => {
  let withAltered = 0
  fc.assert(fc.property(tree, (doc) => {
    const found: { first?: string } = {}
    const json = write(doc, '', found)
    JSON.parse(json) // valid JSON, as the parser hands it over
    const result = findAlteredNumber(json)
    if (found.first !== undefined) withAltered++
    if (result?.path !== found.first) throw new Error(`${json}: found ${JSON.stringify(result)}, the model says ${found.first}`)
  }), { numRuns: 3000, seed: 20261203 })
  t.ok(withAltered > 300, `${withAltered} of 3,000 documents held an altered number`)
})
