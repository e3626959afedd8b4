-- Data lifecycle (issue 16, docs/operations.md "Retention and deletion"): a per-org retention,
-- purging messages with their documents and objects, and deleting (tombstoning) an org.
--
-- Expand only: new nullable columns, a new function, and orderflow_reprocess learning to leave
-- a message alone while it is being purged. The previous release never writes these columns.

-- Days an org's messages are kept after they were received. NULL: the global default
-- (ORDERFLOW_RETENTION_DAYS); 0: forever, whatever the default.
ALTER TABLE org
  ADD COLUMN retention_days integer CHECK (retention_days IS NULL OR retention_days >= 0),
  -- A deleted org stays as a tombstone: events, webhook deliveries and API keys name its id,
  -- and its slug is never given to another tenant (mail still sent to the old address is
  -- refused, never delivered to someone else). A tombstone is always disabled.
  ADD COLUMN deleted_at timestamptz,
  ADD CONSTRAINT org_deleted_is_disabled CHECK (deleted_at IS NULL OR status = 'disabled');

-- Set (by the runtime role, committed) before any of the message's objects is deleted. A purge
-- cut short leaves the row marked; the next run finishes marked rows first, whatever their age,
-- so no row keeps pointing at a deleted object for longer than one timer period.
ALTER TABLE inbound_message ADD COLUMN purge_started_at timestamptz;
CREATE INDEX idx_inbound_purging ON inbound_message (purge_started_at)
  WHERE purge_started_at IS NOT NULL;
-- The purge job selects terminal messages by age.
CREATE INDEX idx_inbound_status_received ON inbound_message (status, received_at)
  WHERE status IN ('PARSED', 'FAILED');

-- Reprocessing a message that is being purged would send a worker after a deleted raw object.
-- Parameters are qualified with the function's name wherever a column could share their name.
CREATE OR REPLACE FUNCTION orderflow_reprocess(message_id uuid, reason text) RETURNS boolean
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
   WHERE m.id = orderflow_reprocess.message_id
     AND m.status IN ('PARSED', 'FAILED')
     AND m.raw_storage_key IS NOT NULL
     AND m.purge_started_at IS NULL;
  RETURN FOUND;
END $$;
REVOKE ALL ON FUNCTION orderflow_reprocess(uuid, text) FROM PUBLIC;

-- Delete one message's rows (documents, part decisions, the message) and record
-- message.purged in the same transaction. The runtime role has no DELETE on these tables; it
-- reaches them only through this function, which deletes only a message that is PARSED or
-- FAILED (never one still being delivered or extracted) and was marked purge_started_at
-- beforehand, i.e. whose objects the caller has already deleted. Returns false when there is
-- no such message (already purged: a re-run is harmless).
CREATE FUNCTION orderflow_purge_message(message_id uuid, reason text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
  -- The parameter under a name no column has (inbound_message may get a message_id column).
  target uuid := orderflow_purge_message.message_id;
  victim record;
  documents bigint;
  document_bytes bigint;
BEGIN
  IF reason IS NULL OR btrim(reason) = '' THEN
    RAISE EXCEPTION 'orderflow_purge_message needs a reason'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT m.id, m.org_id, m.trace_id, m.status, m.size_bytes, m.received_at INTO victim
    FROM public.inbound_message m
   WHERE m.id = target
     AND m.status IN ('PARSED', 'FAILED')
     AND m.purge_started_at IS NOT NULL
     FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  SELECT count(*), coalesce(sum(d.size_bytes), 0) INTO documents, document_bytes
    FROM public.document d WHERE d.inbound_message_id = target;
  DELETE FROM public.document WHERE inbound_message_id = target;
  DELETE FROM public.inbound_message_part WHERE inbound_message_id = target;
  DELETE FROM public.webhook_message_sequence WHERE inbound_message_id = target;
  -- A later message with the same Message-ID but other content links to this one; the link
  -- goes, the conflict itself stays in the event log.
  UPDATE public.inbound_message SET conflict_of = NULL WHERE conflict_of = target;
  DELETE FROM public.inbound_message WHERE id = target;
  -- Ids and counts only: the event may outlive the message by the event retention.
  INSERT INTO public.event (type, org_id, trace_id, inbound_message_id, data)
  VALUES ('message.purged', victim.org_id, victim.trace_id, victim.id,
          jsonb_build_object('reason', left(reason, 200), 'status', victim.status,
                             'received_at', victim.received_at, 'documents', documents,
                             'bytes', coalesce(victim.size_bytes, 0) + document_bytes));
  RETURN true;
END $$;
REVOKE ALL ON FUNCTION orderflow_purge_message(uuid, text) FROM PUBLIC;
