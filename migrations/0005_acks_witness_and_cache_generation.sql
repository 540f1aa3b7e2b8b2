CREATE TABLE "run_acks" (
	"run_id" bigint NOT NULL,
	"token" text NOT NULL,
	"shards" integer[] NOT NULL,
	CONSTRAINT "run_acks_run_id_token_pk" PRIMARY KEY("run_id","token")
);
--> statement-breakpoint
ALTER TABLE "scopes" ADD COLUMN "cache_generation" bigint DEFAULT 0 NOT NULL;