/**
 * Limits checked while a query is validated, before any resolver (and so any SQL) runs: a
 * depth limit, a cap on `first`, and a cost limit where a list field costs its children
 * times the page size it asks for. Each refusal is a GraphQL error with a `code`.
 */
import { GraphQLError, Kind, type ASTVisitor, type FragmentDefinitionNode, type SelectionSetNode, type ValidationContext } from 'graphql'
import { getComplexity, simpleEstimator, type ComplexityEstimator } from 'graphql-query-complexity'

export const MAX_PAGE = 500

export interface QueryLimits {
  maxDepth: number
  maxCost: number
}

function depthOf (set: SelectionSetNode | undefined, fragments: Record<string, FragmentDefinitionNode>, seen: Set<string>): number {
  if (set === undefined) return 0
  let deepest = 0
  for (const selection of set.selections) {
    if (selection.kind === Kind.FIELD) {
      deepest = Math.max(deepest, selection.selectionSet === undefined ? 1 : 1 + depthOf(selection.selectionSet, fragments, seen))
    } else if (selection.kind === Kind.INLINE_FRAGMENT) {
      deepest = Math.max(deepest, depthOf(selection.selectionSet, fragments, seen))
    } else {
      const name = selection.name.value
      const fragment = fragments[name]
      if (fragment !== undefined && !seen.has(name)) {
        deepest = Math.max(deepest, depthOf(fragment.selectionSet, fragments, new Set([...seen, name])))
      }
    }
  }
  return deepest
}

export function limitsRule (limits: QueryLimits, variables: Record<string, unknown> | undefined, operationName: string | undefined) {
  return function queryLimits (context: ValidationContext): ASTVisitor {
    return {
      Document: {
        leave (document) {
          const fragments = Object.fromEntries(document.definitions
            .filter((d): d is FragmentDefinitionNode => d.kind === Kind.FRAGMENT_DEFINITION)
            .map((d) => [d.name.value, d]))
          for (const op of document.definitions) {
            if (op.kind !== Kind.OPERATION_DEFINITION) continue
            const depth = depthOf(op.selectionSet, fragments, new Set())
            if (depth > limits.maxDepth) {
              context.reportError(new GraphQLError(`Query depth ${depth} exceeds the limit of ${limits.maxDepth}`,
                { extensions: { code: 'QUERY_TOO_DEEP' } }))
              return
            }
          }

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
            })
          } catch {
            return // an invalid query: the standard rules report it
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
