CREATE TABLE "run_writes" (
	"run_id" bigint NOT NULL,
	"token" text NOT NULL,
	CONSTRAINT "run_writes_run_id_token_pk" PRIMARY KEY("run_id","token")
);
