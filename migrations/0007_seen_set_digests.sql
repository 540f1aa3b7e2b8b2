ALTER TABLE "resources" ADD COLUMN "id_digest" bigint;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "seen_sets" integer;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "digest_bits" smallint;--> statement-breakpoint
CREATE INDEX "resources_digest_idx" ON "resources" USING btree ("tenant","scope","id_digest") WHERE id_digest is not null;