-- What the runtime role (the services' ORDERFLOW_DATABASE_URL) may do: the ONE place.
--
-- `db migrate` runs this file after every migration, as the schema owner, in one transaction,
-- with {runtime} replaced by the runtime role (quoted as an identifier). It first takes every
-- right away, then grants exactly what is listed, so a right removed here is gone after the
-- next deploy.
--
-- EVERY TABLE AND VIEW IN THE SCHEMA NEEDS ITS OWN LINE HERE (a GRANT, or a REVOKE when the
-- runtime role must not touch it at all). If you add a table or view in a migration (003_...,
-- 004_..., ...), add its line below in the same commit, under the migration's name:
-- tests/test_db_rights.py fails for any table or view without an entry. This file describes
-- the schema after the LAST migration: drop the lines of what a migration drops. Give the
-- least the services need:
--   * history / audit tables are append-only: SELECT, INSERT only (never UPDATE or DELETE);
--   * nothing gets DELETE unless a service really deletes rows (say why in a comment); pruning
--     goes through a SECURITY DEFINER function owned by the schema owner instead;
--   * a SECURITY DEFINER function: REVOKE ALL ... FROM PUBLIC in its migration, EXECUTE here.
-- Sequences: USAGE on all of them (nextval for serial ids; no setval) is granted below.
-- One statement per line, "GRANT <rights> ON <name> TO {runtime};", no braces other than
-- {runtime}.

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {runtime};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {runtime};
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {runtime};
GRANT USAGE ON SCHEMA public TO {runtime};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {runtime};

-- Migrations bookkeeping: `doctor` reads it; only the owner writes it.
GRANT SELECT ON schema_migration TO {runtime};

-- 001_core
GRANT SELECT, INSERT, UPDATE ON org TO {runtime};
GRANT SELECT, INSERT, UPDATE ON inbound_message TO {runtime};
-- Status history (written by a trigger as the invoking role): append-only.
GRANT SELECT, INSERT ON inbound_message_event TO {runtime};
-- Re-extraction upserts documents and part decisions (ON CONFLICT DO UPDATE).
GRANT SELECT, INSERT, UPDATE ON document TO {runtime};
GRANT SELECT, INSERT, UPDATE ON inbound_message_part TO {runtime};

-- 002_runtime_rights
GRANT EXECUTE ON FUNCTION orderflow_reprocess(uuid, text) TO {runtime};

-- 004_event_log
-- The event log (written by triggers as the invoking role, and by events.record): append-only.
-- Since 004 inbound_message_event is a view over it (its line above stays).
GRANT SELECT, INSERT ON event TO {runtime};
-- Retention pruning deletes old events only through this function, with the owner's rights.
GRANT EXECUTE ON FUNCTION orderflow_prune_events(interval, integer) TO {runtime};

-- 005_api_keys
-- `key create` inserts, `key revoke` and each request's last_used_at update; never deleted.
GRANT SELECT, INSERT, UPDATE ON api_key TO {runtime};
-- The API reads the link-signing key; only the owner changes it.
GRANT SELECT ON api_link_key TO {runtime};

-- 006_webhooks
-- Endpoints are soft-deleted (deleted_at), deliveries change state: no DELETE.
GRANT SELECT, INSERT, UPDATE ON webhook_endpoint TO {runtime};
GRANT SELECT, INSERT, UPDATE ON webhook_delivery TO {runtime};
-- Every attempt, append-only.
GRANT SELECT, INSERT ON webhook_attempt TO {runtime};
-- The dispatcher's feed position: one row made by the migration, only moved.
GRANT SELECT, UPDATE ON webhook_dispatch_state TO {runtime};
GRANT SELECT, INSERT, UPDATE ON webhook_message_sequence TO {runtime};

-- 007_retention
-- The purge job deletes a message's rows only through this function (owner's rights, terminal
-- messages the caller marked purge_started_at first); org rows are tombstoned by UPDATE above.
GRANT EXECUTE ON FUNCTION orderflow_purge_message(uuid, text) TO {runtime};

-- 008_inbox_users
-- `user add|disable` (CLI) and sign-in's last_sign_in_at; users are disabled, never deleted.
GRANT SELECT, INSERT, UPDATE ON inbox_user TO {runtime};
-- `user add --org slug:role` sets a role (upsert); no DELETE (a role change is an UPDATE).
GRANT SELECT, INSERT, UPDATE ON inbox_membership TO {runtime};
-- Sign-in links: inserted hashed, marked used once; pruned through 010's function.
GRANT SELECT, INSERT, UPDATE ON inbox_login_token TO {runtime};
-- Sessions: created at sign-in, revoked at sign-out (UPDATE); pruned through 010's function.
GRANT SELECT, INSERT, UPDATE ON inbox_session TO {runtime};

-- 009_custom_domains
-- `domain add` inserts, the periodic check updates states, `domain remove` sets removed_at:
-- no DELETE.
GRANT SELECT, INSERT, UPDATE ON custom_domain TO {runtime};
-- What Postfix reads through its own role (orderflow_postfix); the services read it too.
GRANT SELECT ON postfix_custom_domain TO {runtime};

-- 010_inbox_prune
-- The purge timer deletes used/expired sign-in links and ended sessions only through this.
GRANT EXECUTE ON FUNCTION orderflow_prune_inbox_signin(interval) TO {runtime};
