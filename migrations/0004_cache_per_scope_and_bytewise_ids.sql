ALTER TABLE "resources" ALTER COLUMN "id" SET DATA TYPE text COLLATE "C";--> statement-breakpoint
ALTER TABLE "scopes" ADD COLUMN "cache_shard_count" integer;--> statement-breakpoint
UPDATE "scopes" SET "cache_shard_count" = "shard_count";--> statement-breakpoint
ALTER TABLE "scopes" ALTER COLUMN "cache_shard_count" SET NOT NULL;
