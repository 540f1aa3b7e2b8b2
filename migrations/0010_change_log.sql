CREATE TABLE "changes" (
	"id" bigint GENERATED ALWAYS AS IDENTITY (sequence name "changes_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"run_id" bigint NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL,
	"kind" text NOT NULL,
	"resource_id" text COLLATE "C" NOT NULL,
	"type" text NOT NULL,
	"changed_fields" text[],
	CONSTRAINT "changes_run_id_id_pk" PRIMARY KEY("run_id","id"),
	CONSTRAINT "changes_kind_check" CHECK (kind in ('created', 'updated', 'deleted', 'revived'))
);
--> statement-breakpoint
CREATE INDEX "changes_resource_idx" ON "changes" USING btree ("resource_id","id");
