/**
 * Numbers JSON.parse cannot keep. A JSON number is a decimal of any length; JavaScript reads it
 * as the nearest double, so `12345678901234567890` becomes 12345678901234567000,
 * `9007199254740993` becomes …992, `0.10000000000000000001` becomes 0.1 and `1e-400` becomes 0:
 * stored, hashed and compared as altered values, and a later change within the lost digits
 * would be "unchanged". Tally refuses such a number, naming its place, rather than alter it.
 *
 * The check needs the text as sent, which JSON.parse does not keep. A number with at most 15
 * significant digits in the double's normal range reads back exactly (DBL_DIG), so the text is
 * first searched for a token that could be another (16 digits or more, or a 3-digit exponent:
 * ~0.5 µs a 375-byte resource), and only a body with one is walked token by token.
 */
import type { BadValue } from './canonical.js'

/**
 * Could the text hold a number JSON.parse reads as another? 16 digits in a row (a dot allowed
 * among them) at the start or after `:`, `[` or `,`, or a 3-digit exponent. Strings may match too: the walk decides.
 */
const CANDIDATE = /(?:^|[:,[])\s*-?\d(?:\.?\d){15}|\d[eE][+-]?\d{3}/

interface Decimal { negative: boolean, digits: string, exponent: number }

/** A decimal number's text as sign, significant digits (no leading or trailing zero) and exponent: 0.<digits> × 10^exponent. */
function decimalOf (text: string): Decimal | undefined {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text)
  if (m === null) return undefined
  const whole = m[2]!
  let digits = whole + (m[3] ?? '')
  let exponent = Number(m[4] ?? 0) + whole.length
  const lead = digits.length - digits.replace(/^0+/, '').length
  digits = digits.slice(lead).replace(/0+$/, '')
  exponent -= lead
  return { negative: m[1] === '-', digits, exponent: digits === '' ? 0 : exponent }
}

/** What JSON.parse makes of a number token, when it is not the same number; undefined when it is. */
export function alteredNumber (token: string): string | undefined {
  const value = Number(token)
  if (!Number.isFinite(value)) return 'null'
  const sent = decimalOf(token)
  const kept = decimalOf(String(value))
  // Zeros are equal whatever their sign or exponent.
  if (sent !== undefined && kept !== undefined && sent.digits === '' && kept.digits === '') return undefined
  if (sent !== undefined && kept !== undefined && sent.negative === kept.negative && sent.digits === kept.digits && sent.exponent === kept.exponent) return undefined
  return String(value)
}

const escapeKey = (key: string) => key.replaceAll('~', '~0').replaceAll('/', '~1')

/** The index of the quote that ends the string starting at `start` (a quote). */
function endOfString (text: string, start: number): number {
  for (let i = text.indexOf('"', start + 1); ; i = text.indexOf('"', i + 1)) {
    let backslashes = 0
    while (text.charCodeAt(i - 1 - backslashes) === 0x5c) backslashes++
    if (backslashes % 2 === 0) return i
  }
}

const isNumberChar = (c: number) => (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x2b || c === 0x2e || c === 0x45 || c === 0x65
const isSpace = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09

/**
 * The first number in `text` (valid JSON: JSON.parse took it) that JSON.parse reads as another,
 * as a JSON pointer below `root` and a reason; undefined when every number is kept as sent.
 */
export function findAlteredNumber (text: string, root = ''): BadValue | undefined {
  if (!CANDIDATE.test(text)) return undefined
  // Where the walk is: for each open object, the key of the member at hand; for each array, the index.
  const at: Array<string | number> = []
  const arrays: boolean[] = []
  for (let i = 0; i < text.length;) {
    const c = text.charCodeAt(i)
    if (c === 0x7b || c === 0x5b) { // { [
      arrays.push(c === 0x5b)
      at.push(c === 0x5b ? 0 : '')
      i++
    } else if (c === 0x7d || c === 0x5d) { // } ]
      arrays.pop()
      at.pop()
      i++
    } else if (c === 0x2c) { // ,
      if (arrays[arrays.length - 1] === true) at[at.length - 1] = (at[at.length - 1] as number) + 1
      i++
    } else if (c === 0x22) { // a string: a key when a colon follows
      const end = endOfString(text, i)
      let next = end + 1
      while (isSpace(text.charCodeAt(next))) next++
      if (text.charCodeAt(next) === 0x3a && arrays[arrays.length - 1] === false) {
        at[at.length - 1] = JSON.parse(text.slice(i, end + 1)) as string
        i = next + 1
      } else {
        i = end + 1
      }
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      let end = i + 1
      while (end < text.length && isNumberChar(text.charCodeAt(end))) end++
      const token = text.slice(i, end)
      const kept = alteredNumber(token)
      if (kept !== undefined) {
        const shown = token.length > 40 ? `${token.slice(0, 40)}…` : token
        return {
          path: root + at.map((k) => `/${escapeKey(String(k))}`).join(''),
          message: `must be a number JSON can keep: ${shown} would be stored as ${kept} (send it as a string)`
        }
      }
      i = end
    } else {
      i++ // whitespace, a colon, the letters of true, false and null
    }
  }
  return undefined
}
