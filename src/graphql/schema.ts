/** The GraphQL schema of the inventory: read-only, served from Postgres. */
export const schema = /* GraphQL */ `
  "Any JSON value: tags and attributes as the scanner sent them."
  scalar JSON

  enum RunStatus { open completing completed aborted superseded }

  input TagFilter { key: String!, value: String! }

  type PageInfo { hasNextPage: Boolean!, endCursor: String }

  type Resource {
    id: String!
    scope: String!
    type: String!
    name: String
    region: String
    tags: JSON!
    attributes: JSON!
    firstSeenAt: String!
    firstSeenRun: Run
    lastChangedAt: String!
    lastChangedRun: Run
    deletedAt: String
    deletedRun: Run
    "What happened to it, newest first: created, updated, deleted, revived, by which run, when."
    history(first: Int = 50, after: String): ChangeConnection!
  }
  type ResourceEdge { cursor: String!, node: Resource! }
  type ResourceConnection {
    edges: [ResourceEdge!]!
    pageInfo: PageInfo!
    "Counted only when asked for: a count reads every matching row."
    totalCount: Int!
  }

  type Scanner { name: String!, version: String }
  type RunStats { seen: Int!, created: Int!, updated: Int!, unchanged: Int!, deleted: Int!, batches: Int!, skipped: Int! }
  type Run {
    id: ID!
    scope: String!
    status: RunStatus!
    shardCount: Int!
    baselineRun: Run
    scanner: Scanner
    startedAt: String!
    completedAt: String
    "Milliseconds from start to completion; null while in flight."
    durationMs: Int
    "Stored counters; for a run in flight, see GET /runs/:id."
    stats: RunStats!
    "What this run wrote, newest first: exactly its created, updated, deleted and revived resources."
    changes(kind: ChangeKind, type: String, first: Int = 50, after: String): ChangeConnection!
  }
  type RunEdge { cursor: String!, node: Run! }
  type RunConnection { edges: [RunEdge!]!, pageInfo: PageInfo! }

  type Scope {
    scope: String!
    shardCount: Int!
    resourceCount: Int!
    baselineRun: Run
    lastCompletedAt: String
  }
  type ScopeEdge { cursor: String!, node: Scope! }
  type ScopeConnection { edges: [ScopeEdge!]!, pageInfo: PageInfo! }

  enum ChangeKind {
    CREATED
    UPDATED
    DELETED
    "A deleted resource reported again (counted as created in the run's stats)."
    REVIVED
  }
  "One write to one resource, logged in the same commit as the write."
  type Change {
    kind: ChangeKind!
    resourceId: String!
    type: String!
    "ISO 8601 time of the write."
    at: String!
    run: Run!
    "Updates and revivals: the fields that differ from before (name, region, tags, attributes, type), tags and attributes followed by their first-level keys that differ (tags.env, attributes.policy). Empty for creations and deletions."
    changedFields: [String!]!
  }
  type ChangeEdge { cursor: String!, node: Change! }
  type ChangeConnection {
    edges: [ChangeEdge!]!
    pageInfo: PageInfo!
    "Counted only when asked for: a count reads every matching change."
    totalCount: Int!
  }

  type TypeCount { type: String!, count: Int! }
  type RegionCount { region: String, count: Int! }
  type Summary { total: Int!, byType: [TypeCount!]!, byRegion: [RegionCount!]! }

  type Query {
    resources(
      scope: String!, type: String, region: String, tag: TagFilter, idPrefix: String,
      "ISO 8601 time: only resources changed after it."
      changedSince: String,
      includeDeleted: Boolean = false, first: Int = 50, after: String
    ): ResourceConnection!
    resource(scope: String!, id: String!): Resource
    runs(scope: String, status: RunStatus, first: Int = 50, after: String): RunConnection!
    run(id: ID!): Run
    scopes(first: Int = 50, after: String): ScopeConnection!
    summary(scope: String!): Summary!
    "What changed in a scope, newest first; since: ISO 8601 time."
    changes(scope: String!, since: String, kind: ChangeKind, type: String, first: Int = 50, after: String): ChangeConnection!
  }

  type Subscription {
    "Each run of the scope as it completes, from whichever instance completed it."
    runCompleted(scope: String!): Run!
  }
`
