"""Custom domains per org: schema in sql/009, queries, DNS checks, the state machine, the job."""
