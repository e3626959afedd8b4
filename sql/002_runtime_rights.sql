-- Database rights that hold in the database, not only on paper (issue 10 item 11).
--
-- Before: any session could `SET orderflow.allow_reprocess = on` and move a PARSED message back
-- to STORED. Now that transition happens only inside orderflow_reprocess(), a SECURITY DEFINER
-- function owned by the schema owner: inside it current_user is the owner, a value the runtime
-- role cannot forge (it is no member of the owner role). The runtime role may EXECUTE the
-- function (sql/grants.sql), nothing else about it.

-- Nobody but the database owner creates objects in public (PostgreSQL 15 default; older
-- clusters granted CREATE to PUBLIC).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

CREATE OR REPLACE FUNCTION inbound_message_check_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.status <> 'RECEIVED' THEN
      RAISE EXCEPTION 'inbound_message must be created RECEIVED, not %', NEW.status
        USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
  END IF;
  IF NEW.status = OLD.status THEN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
  END IF;
  IF (OLD.status = 'RECEIVED' AND NEW.status IN ('STORED', 'FAILED'))
     OR (OLD.status = 'STORED' AND NEW.status IN ('PARSED', 'FAILED'))
     OR (OLD.status IN ('PARSED', 'FAILED') AND NEW.status = 'STORED'
         AND NEW.raw_storage_key IS NOT NULL
         -- Only the table's owner: in practice orderflow_reprocess() (SECURITY DEFINER).
         -- Catalog names are schema-qualified: a temporary table named pg_class would
         -- otherwise be found first.
         AND current_user = (SELECT pg_catalog.pg_get_userbyid(c.relowner)
                               FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID)) THEN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'inbound_message % may not go from % to %', OLD.id, OLD.status, NEW.status
    USING ERRCODE = 'check_violation';
END $$;

-- PARSED|FAILED -> STORED, the operator's `reprocess`. Returns false when the message is not
-- in one of those states or has no raw in S3. The reason is kept in error_json (and so in the
-- status history `trace` shows), next to the error it replaces.
CREATE FUNCTION orderflow_reprocess(message_id uuid, reason text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
  IF reason IS NULL OR btrim(reason) = '' THEN
    RAISE EXCEPTION 'orderflow_reprocess needs a reason' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  UPDATE public.inbound_message m
     SET status = 'STORED',
         error_json = jsonb_build_object('reprocess', left(reason, 500), 'previous', m.error_json)
   WHERE m.id = message_id
     AND m.status IN ('PARSED', 'FAILED')
     AND m.raw_storage_key IS NOT NULL;
  RETURN FOUND;
END $$;

REVOKE ALL ON FUNCTION orderflow_reprocess(uuid, text) FROM PUBLIC;
