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
CREATE INDEX "changes_resource_idx" ON "changes" USING btree ("resource_id","id");--> statement-breakpoint
-- What an update changed, for the change log: each top-level field that differs, `tags` and
-- `attributes` each followed by their first-level keys that differ (added, removed or changed).
CREATE FUNCTION tally_changed_fields(
	old_type text, old_name text, old_region text, old_tags jsonb, old_attributes jsonb,
	new_type text, new_name text, new_region text, new_tags jsonb, new_attributes jsonb
) RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
	SELECT array_remove(ARRAY[
		CASE WHEN old_type IS DISTINCT FROM new_type THEN 'type' END,
		CASE WHEN old_name IS DISTINCT FROM new_name THEN 'name' END,
		CASE WHEN old_region IS DISTINCT FROM new_region THEN 'region' END
	], NULL)
	|| CASE WHEN old_tags IS DISTINCT FROM new_tags THEN 'tags'::text || ARRAY(
		SELECT 'tags.' || key FROM jsonb_each(old_tags) AS o(key, value) FULL JOIN jsonb_each(new_tags) AS n(key, value) USING (key)
		WHERE o.value IS DISTINCT FROM n.value ORDER BY key) ELSE '{}' END
	|| CASE WHEN old_attributes IS DISTINCT FROM new_attributes THEN 'attributes'::text || ARRAY(
		SELECT 'attributes.' || key FROM jsonb_each(old_attributes) AS o(key, value) FULL JOIN jsonb_each(new_attributes) AS n(key, value) USING (key)
		WHERE o.value IS DISTINCT FROM n.value ORDER BY key) ELSE '{}' END
$$;
