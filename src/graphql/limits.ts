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
 * Introspection (`__schema`, `__type`: what GraphiQL, Apollo, graphql-codegen and Postman send
 * first) reads the schema, never a row, so its subtree is exempt from the depth limit, which the
 * standard introspection query's type references exceed (15 levels). It is bounded by what it
 * is instead: no deeper than that standard query asks with every option on, no cycle through
 * the schema's lists (graphql's own MaxIntrospectionDepthRule, among its standard rules since
 * 16.9: `fields { type { fields … } }` would grow with the schema at each level), and its fields
 * count towards the field limit.
 *
 * Each refusal is a GraphQL error with a `code`.
 */
import {
  getIntrospectionQuery, GraphQLError, Kind, parse, type ASTVisitor, type DocumentNode, type FragmentDefinitionNode,
  type SelectionSetNode, type ValidationContext
} from 'graphql'
import { getComplexity, simpleEstimator, type ComplexityEstimator } from 'graphql-query-complexity'
import type { GraphQLCode } from '../errors.js'

export const MAX_PAGE = 500

/** Tokens a GraphQL document may hold: parsing stops there, over HTTP and over WebSocket alike. */
export const MAX_TOKENS = 20_000

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

/** Fields that read the schema rather than the data: only at an operation's root. */
const INTROSPECTION_ROOTS = new Set(['__schema', '__type'])

/** Depth (the root field included), field count, scans, and the depth of any introspection subtree. */
interface Shape { depth: number, fields: number, scans: number, introspection: number }
const EMPTY: Shape = { depth: 0, fields: 0, scans: 0, introspection: 0 }

/** Depth, field count and scans of every operation, fragments expanded, each fragment measured once. */
function measure (document: DocumentNode): Shape[] {
  const fragments = new Map(document.definitions
    .filter((d): d is FragmentDefinitionNode => d.kind === Kind.FRAGMENT_DEFINITION)
    .map((d) => [d.name.value, d]))
  const memo = new Map<string, Shape>()
  const inProgress = new Set<string>()
  const ofSet = (set: SelectionSetNode | undefined): Shape => {
    const shape = { ...EMPTY }
    for (const selection of set?.selections ?? []) {
      let inner: Shape
      if (selection.kind === Kind.FIELD && INTROSPECTION_ROOTS.has(selection.name.value)) {
        const child = ofSet(selection.selectionSet)
        inner = { depth: 1, fields: 1 + child.fields, scans: 0, introspection: 1 + Math.max(child.depth, child.introspection) }
      } else if (selection.kind === Kind.FIELD) {
        const child = ofSet(selection.selectionSet)
        const scan = SCAN_FIELDS.has(selection.name.value) ? 1 : 0
        inner = { depth: 1 + child.depth, fields: 1 + child.fields, scans: scan + child.scans, introspection: child.introspection }
      } else if (selection.kind === Kind.INLINE_FRAGMENT) {
        inner = ofSet(selection.selectionSet)
      } else {
        inner = ofFragment(selection.name.value)
      }
      shape.depth = Math.max(shape.depth, inner.depth)
      shape.fields += inner.fields
      shape.scans += inner.scans
      shape.introspection = Math.max(shape.introspection, inner.introspection)
    }
    return shape
  }
  const ofFragment = (name: string): Shape => {
    const known = memo.get(name)
    if (known !== undefined) return known
    const fragment = fragments.get(name)
    // Unknown fragments and cycles are validation errors; they add nothing here.
    if (fragment === undefined || inProgress.has(name)) return EMPTY
    inProgress.add(name)
    const shape = ofSet(fragment.selectionSet)
    inProgress.delete(name)
    memo.set(name, shape)
    return shape
  }
  return document.definitions.filter((d) => d.kind === Kind.OPERATION_DEFINITION).map((op) => ofSet(op.selectionSet))
}

/** How deep the standard introspection query reaches, every option on: the deepest introspection let through. */
export const INTROSPECTION_MAX_DEPTH = measure(parse(getIntrospectionQuery({
  descriptions: true, specifiedByUrl: true, directiveIsRepeatable: true, schemaDescription: true, inputValueDeprecation: true, oneOf: true
})))[0]!.introspection

/** Errors for a document too deep or too wide; empty when it is within the limits. */
export function checkShape (document: DocumentNode, limits: QueryLimits): GraphQLError[] {
  for (const { depth, fields, introspection } of measure(document)) {
    if (depth > limits.maxDepth) {
      return [new GraphQLError(`Query depth ${depth} exceeds the limit of ${limits.maxDepth}`, { extensions: { code: 'QUERY_TOO_DEEP' satisfies GraphQLCode } })]
    }
    if (introspection > INTROSPECTION_MAX_DEPTH) {
      return [new GraphQLError(`Introspection depth ${introspection} exceeds the standard introspection query's ${INTROSPECTION_MAX_DEPTH}`,
        { extensions: { code: 'QUERY_TOO_DEEP' satisfies GraphQLCode } })]
    }
    if (fields > limits.maxFields) {
      return [new GraphQLError(`Query selects ${fields} fields (fragments expanded); the limit is ${limits.maxFields}`,
        { extensions: { code: 'QUERY_TOO_LARGE' satisfies GraphQLCode, fields, maxFields: limits.maxFields } })]
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
              context.reportError(new GraphQLError('Query is too large to price', { extensions: { code: 'QUERY_TOO_LARGE' satisfies GraphQLCode } }))
            }
            return
          }
          if (tooLarge !== undefined) {
            context.reportError(new GraphQLError(`first is ${tooLarge}; a page holds at most ${MAX_PAGE}`,
              { extensions: { code: 'FIRST_TOO_LARGE' satisfies GraphQLCode } }))
          } else if (cost > limits.maxCost) {
            context.reportError(new GraphQLError(`Query cost ${cost} exceeds the limit of ${limits.maxCost}`,
              { extensions: { code: 'QUERY_TOO_COSTLY' satisfies GraphQLCode, cost, maxCost: limits.maxCost } }))
          }
        }
      }
    }
  }
}
