-- The event log: the one record of "what happened" (issue 11). Status history, the API's event
-- feed and webhooks all read it. Each event is written in the same transaction as the change it
-- records: status changes and new documents by the triggers below (no code path can skip one),
-- other events by orderflow_ingest/events.py `record`.
--
-- Ordering. A bigserial id is taken when a row is inserted but becomes visible when its
-- transaction commits, so ids appear out of order and a reader that pages by id alone skips
-- events. Every event therefore carries the id of the transaction that wrote it (txid), and
-- readers return only events whose txid is below the xmin of their snapshot: every transaction
-- older than that has finished, so that set can never grow. Readers order by (txid, id) and page
-- with a cursor made of the last (txid, id); any event that becomes visible later has
-- txid >= that xmin > the cursor's txid, so it sorts after the cursor. The price: an open
-- transaction holds the feed back until it ends (docs/api.md, "Event feed").

CREATE TABLE event (
  id                  bigserial PRIMARY KEY,
  txid                xid8 NOT NULL DEFAULT pg_current_xact_id(),
  type                text NOT NULL CHECK (type ~ '^[a-z][a-z_]*\.[a-z][a-z_]*$'),
  org_id              uuid REFERENCES org(id),
  occurred_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
  trace_id            text,
  inbound_message_id  uuid,
  document_id         uuid,
  data                jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(data) = 'object')
);
CREATE INDEX idx_event_feed ON event (txid, id);
CREATE INDEX idx_event_org_feed ON event (org_id, txid, id);
-- A message's history (`trace`, the API's message view).
CREATE INDEX idx_event_message ON event (inbound_message_id, occurred_at, id)
  WHERE inbound_message_id IS NOT NULL;
-- Retention pruning deletes by age.
CREATE INDEX idx_event_occurred ON event (occurred_at);

-- Status changes of inbound_message become events. Reopening a PARSED or FAILED message (the
-- operator's `reprocess`) is message.reprocessed; every other change is message.<new status>.
CREATE FUNCTION inbound_message_log_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  kind text;
  details jsonb;
BEGIN
  IF TG_OP = 'INSERT' THEN
    kind := 'message.received';
    details := jsonb_build_object('status', NEW.status);
  ELSIF NEW.status IS NOT DISTINCT FROM OLD.status THEN
    RETURN NEW;
  ELSE
    kind := CASE
      WHEN NEW.status = 'STORED' AND OLD.status IN ('PARSED', 'FAILED') THEN 'message.reprocessed'
      ELSE 'message.' || lower(NEW.status)
    END;
    details := jsonb_build_object('status', NEW.status, 'previous_status', OLD.status);
  END IF;
  IF NEW.error_json IS NOT NULL THEN
    details := details || jsonb_build_object('error', NEW.error_json);
  END IF;
  INSERT INTO event (type, org_id, trace_id, inbound_message_id, data)
  VALUES (kind, NEW.org_id, NEW.trace_id, NEW.id, details);
  RETURN NEW;
END $$;

-- A new document (not a re-extraction's update of one: ON CONFLICT DO UPDATE fires no INSERT
-- trigger) is document.created, with what a consumer needs to decide whether to fetch it.
CREATE FUNCTION document_log_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO event (type, org_id, trace_id, inbound_message_id, document_id, data)
  SELECT 'document.created', NEW.org_id, m.trace_id, NEW.inbound_message_id, NEW.id,
         jsonb_build_object(
           'part_path', NEW.part_path, 'file_name', NEW.file_name, 'mime_type', NEW.mime_type,
           'size_bytes', NEW.size_bytes, 'sha256', NEW.sha256, 'status', NEW.status)
  FROM inbound_message m WHERE m.id = NEW.inbound_message_id;
  RETURN NEW;
END $$;

-- Carry the existing history over, oldest first, then let the event log be its only home.
INSERT INTO event (type, org_id, occurred_at, trace_id, inbound_message_id, data)
SELECT CASE
         WHEN h.previous IS NULL THEN 'message.received'
         WHEN h.status = 'STORED' AND h.previous IN ('PARSED', 'FAILED') THEN 'message.reprocessed'
         ELSE 'message.' || lower(h.status)
       END,
       m.org_id, h.at, m.trace_id, h.inbound_message_id,
       jsonb_strip_nulls(jsonb_build_object(
         'status', h.status, 'previous_status', h.previous, 'error', h.error_json))
FROM (
  SELECT e.*, lag(e.status) OVER (PARTITION BY e.inbound_message_id ORDER BY e.at, e.id) AS previous
  FROM inbound_message_event e
) h
JOIN inbound_message m ON m.id = h.inbound_message_id
ORDER BY h.id;

DROP TRIGGER inbound_message_history ON inbound_message;
DROP FUNCTION inbound_message_record_event();
DROP TABLE inbound_message_event;

CREATE TRIGGER inbound_message_event_log
  AFTER INSERT OR UPDATE OF status ON inbound_message
  FOR EACH ROW EXECUTE FUNCTION inbound_message_log_event();
CREATE TRIGGER document_event_log
  AFTER INSERT ON document
  FOR EACH ROW EXECUTE FUNCTION document_log_event();

-- The status history `trace`/`show` read, derived from the event log (same columns as the
-- table it replaces).
CREATE VIEW inbound_message_event AS
  SELECT id, inbound_message_id, data->>'status' AS status, data->'error' AS error_json,
         occurred_at AS at
  FROM event
  WHERE inbound_message_id IS NOT NULL
    AND type IN ('message.received', 'message.stored', 'message.parsed', 'message.failed',
                 'message.reprocessed');

-- Retention: the runtime role never deletes events itself (the log is append-only for it);
-- this function, run as the schema owner, deletes one batch of events older than the
-- retention, and refuses a retention under one day so a mistake cannot wipe the log.
CREATE FUNCTION orderflow_prune_events(older_than interval, batch integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  gone bigint;
BEGIN
  IF older_than < interval '1 day' THEN
    RAISE EXCEPTION 'event retention must be at least one day, not %', older_than
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  WITH doomed AS (
    SELECT id FROM public.event WHERE occurred_at < now() - older_than
    ORDER BY occurred_at LIMIT greatest(batch, 1)
  ), deleted AS (
    DELETE FROM public.event e USING doomed d WHERE e.id = d.id RETURNING 1
  )
  SELECT count(*) INTO gone FROM deleted;
  RETURN gone;
END $$;
REVOKE ALL ON FUNCTION orderflow_prune_events(interval, integer) FROM PUBLIC;
