ALTER TABLE "runs" ADD COLUMN "skip" jsonb DEFAULT '[]'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "skipped" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX "resources_deleted_at_idx" ON "resources" USING btree ("deleted_at") WHERE deleted_at is not null;