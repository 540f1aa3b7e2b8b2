/**
 * Limits on a GraphQL query, all checked before any resolver (and so any SQL) runs:
 *
 * - before validation (`checkShape`, a mercurius preValidation hook): depth and the number of
 *   fields with fragments expanded, each computed once per fragment, so a chain of fragments
 *   that each spread the last one twice costs linear time, not 2^n (24 fragments once froze
 *   the server for 8 s inside graphql's own validation);
 * - during validation (`limitsRule`): a cap on `first` and a cost where a list field costs its
 *   children times the page size it asks for, plus what the fields that read a whole scope
 *   (`totalCount`, `summary`) cost, once each wherever they sit.
 *
 * Each refusal is a GraphQL error with a `code`.
 */
import { GraphQLError, Kind, type ASTVisitor, type DocumentNode, type FragmentDefinitionNode, type SelectionSetNode, type ValidationContext } from 'graphql'
import { getComplexity, simpleEstimator, type ComplexityEstimator } from 'graphql-query-complexity'

export const MAX_PAGE = 500

/**
 * What a field that reads every matching row of a scope costs: as much as 100-row pages of 10
 * fields. Added once per occurrence, not multiplied by the page around it (a count is per
 * connection, not per row). Both names are unique to their type in the schema.
 */
export const SCAN_COST = 1000
const SCAN_FIELDS = new Set(['totalCount', 'summary'])

export interface QueryLimits {
  maxDepth: number
  maxCost: number
  maxFields: number
}

interface Shape { depth: number, fields: number, scans: number }

/** Depth, field count and scans of every operation, fragments expanded, each fragment measured once. */
function measure (document: DocumentNode): Shape[] {
  const fragments = new Map(document.definitions
    .filter((d): d is FragmentDefinitionNode => d.kind === Kind.FRAGMENT_DEFINITION)
    .map((d) => [d.name.value, d]))
  const memo = new Map<string, Shape>()
  const inProgress = new Set<string>()
  const ofSet = (set: SelectionSetNode | undefined): Shape => {
    const shape = { depth: 0, fields: 0, scans: 0 }
    for (const selection of set?.selections ?? []) {
      let inner: Shape
      if (selection.kind === Kind.FIELD) {
        const child = ofSet(selection.selectionSet)
        const scan = SCAN_FIELDS.has(selection.name.value) ? 1 : 0
        inner = { depth: 1 + child.depth, fields: 1 + child.fields, scans: scan + child.scans }
      } else if (selection.kind === Kind.INLINE_FRAGMENT) {
        inner = ofSet(selection.selectionSet)
      } else {
        inner = ofFragment(selection.name.value)
      }
      shape.depth = Math.max(shape.depth, inner.depth)
      shape.fields += inner.fields
      shape.scans += inner.scans
    }
    return shape
  }
  const ofFragment = (name: string): Shape => {
    const known = memo.get(name)
    if (known !== undefined) return known
    const fragment = fragments.get(name)
    // Unknown fragments and cycles are validation errors; they add nothing here.
    if (fragment === undefined || inProgress.has(name)) return { depth: 0, fields: 0, scans: 0 }
    inProgress.add(name)
    const shape = ofSet(fragment.selectionSet)
    inProgress.delete(name)
    memo.set(name, shape)
    return shape
  }
  return document.definitions.filter((d) => d.kind === Kind.OPERATION_DEFINITION).map((op) => ofSet(op.selectionSet))
}

/** Errors for a document too deep or too wide; empty when it is within the limits. */
export function checkShape (document: DocumentNode, limits: QueryLimits): GraphQLError[] {
  for (const { depth, fields } of measure(document)) {
    if (depth > limits.maxDepth) {
      return [new GraphQLError(`Query depth ${depth} exceeds the limit of ${limits.maxDepth}`, { extensions: { code: 'QUERY_TOO_DEEP' } })]
    }
    if (fields > limits.maxFields) {
      return [new GraphQLError(`Query selects ${fields} fields (fragments expanded); the limit is ${limits.maxFields}`,
        { extensions: { code: 'QUERY_TOO_LARGE', fields, maxFields: limits.maxFields } })]
    }
  }
  return []
}

export function limitsRule (limits: QueryLimits, variables: Record<string, unknown> | undefined, operationName: string | undefined) {
  return function queryLimits (context: ValidationContext): ASTVisitor {
    return {
      Document: {
        leave (document) {
          let tooLarge: number | undefined
          const pages: ComplexityEstimator = ({ args, childComplexity }) => {
            if (typeof args.first !== 'number') return undefined
            if (args.first > MAX_PAGE) tooLarge = args.first
            return 1 + Math.max(args.first, 0) * Math.max(childComplexity, 1)
          }
          let cost: number
          try {
            cost = getComplexity({
              schema: context.getSchema(),
              query: document,
              variables: variables ?? {},
              ...(operationName === undefined ? {} : { operationName }),
              estimators: [pages, simpleEstimator({ defaultComplexity: 1 })]
            }) + SCAN_COST * Math.max(0, ...measure(document).map((shape) => shape.scans))
          } catch (err) {
            // A document the standard rules reject (they say why), or one the library refuses
            // to walk: refused here too, never let through unpriced.
            if ((err as Error).message.includes('maximum allowed number of nodes')) {
              context.reportError(new GraphQLError('Query is too large to price', { extensions: { code: 'QUERY_TOO_LARGE' } }))
            }
            return
          }
          if (tooLarge !== undefined) {
            context.reportError(new GraphQLError(`first is ${tooLarge}; a page holds at most ${MAX_PAGE}`,
              { extensions: { code: 'FIRST_TOO_LARGE' } }))
          } else if (cost > limits.maxCost) {
            context.reportError(new GraphQLError(`Query cost ${cost} exceeds the limit of ${limits.maxCost}`,
              { extensions: { code: 'QUERY_TOO_COSTLY', cost, maxCost: limits.maxCost } }))
          }
        }
      }
    }
  }
}
