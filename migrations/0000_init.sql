CREATE TABLE "resources" (
	"tenant" text DEFAULT 'default' NOT NULL,
	"scope" text NOT NULL,
	"id" text NOT NULL,
	"type" text NOT NULL,
	"name" text,
	"region" text,
	"tags" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"attributes" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"content_hash" "bytea" NOT NULL,
	"first_seen_at" timestamp with time zone DEFAULT now() NOT NULL,
	"first_seen_run_id" bigint NOT NULL,
	"changed_at" timestamp with time zone DEFAULT now() NOT NULL,
	"changed_run_id" bigint NOT NULL,
	"deleted_at" timestamp with time zone,
	"deleted_run_id" bigint,
	CONSTRAINT "resources_tenant_scope_id_pk" PRIMARY KEY("tenant","scope","id")
);
--> statement-breakpoint
CREATE TABLE "runs" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "runs_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"tenant" text DEFAULT 'default' NOT NULL,
	"scope" text NOT NULL,
	"status" text DEFAULT 'open' NOT NULL,
	"shard_count" integer NOT NULL,
	"baseline_run_id" bigint,
	"scanner_name" text,
	"scanner_version" text,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"completed_at" timestamp with time zone,
	"seen" bigint DEFAULT 0 NOT NULL,
	"created" bigint DEFAULT 0 NOT NULL,
	"updated" bigint DEFAULT 0 NOT NULL,
	"unchanged" bigint DEFAULT 0 NOT NULL,
	"deleted" bigint DEFAULT 0 NOT NULL,
	"batches" bigint DEFAULT 0 NOT NULL,
	CONSTRAINT "runs_status_check" CHECK (status in ('open', 'completing', 'completed', 'aborted', 'superseded'))
);
--> statement-breakpoint
CREATE TABLE "scopes" (
	"tenant" text DEFAULT 'default' NOT NULL,
	"scope" text NOT NULL,
	"shard_count" integer NOT NULL,
	"baseline_run_id" bigint,
	"baseline_seen" bigint DEFAULT 0 NOT NULL,
	"resource_count" bigint DEFAULT 0 NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_completed_at" timestamp with time zone,
	CONSTRAINT "scopes_tenant_scope_pk" PRIMARY KEY("tenant","scope")
);
--> statement-breakpoint
CREATE INDEX "resources_live_type_idx" ON "resources" USING btree ("tenant","scope","type","id") WHERE deleted_at is null;--> statement-breakpoint
CREATE INDEX "resources_live_changed_run_idx" ON "resources" USING btree ("tenant","scope","changed_run_id") WHERE deleted_at is null;--> statement-breakpoint
CREATE INDEX "runs_scope_idx" ON "runs" USING btree ("tenant","scope","id");--> statement-breakpoint
CREATE INDEX "runs_status_idx" ON "runs" USING btree ("tenant","status","id");--> statement-breakpoint
CREATE UNIQUE INDEX "runs_one_open_per_scope" ON "runs" USING btree ("tenant","scope") WHERE status in ('open', 'completing');