-- Core schema: orgs, inbound messages, documents, and the status history behind `trace`.
-- Spec 006 §5.4.5 plus what an operator needs to follow one message: sha256, size, trace id,
-- envelope, Postfix queue id, authentication verdicts.

CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE TABLE org (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  slug        citext NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  name        text NOT NULL,
  status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE inbound_message (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id             uuid NOT NULL REFERENCES org(id),
  source             text NOT NULL CHECK (source IN ('EMAIL', 'UPLOAD')),
  source_message_id  text,
  message_id_synthetic boolean NOT NULL DEFAULT false,
  from_email         citext,
  to_email           citext,
  subject            text,
  received_at        timestamptz NOT NULL,
  raw_storage_key    text,
  status             text NOT NULL CHECK (status IN ('RECEIVED', 'STORED', 'PARSED', 'FAILED')),
  error_json         jsonb,
  sha256             text,
  size_bytes         bigint,
  trace_id           text NOT NULL,
  envelope_sender    text,
  envelope_recipient text,
  postfix_queue_id   text,
  auth_results       jsonb,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Dedup gate (spec FR-008, TC-003). The spec's inline `UNIQUE ... WHERE` is not valid
-- PostgreSQL; a partial unique index is the real thing.
CREATE UNIQUE INDEX inbound_message_dedup
  ON inbound_message (org_id, source, source_message_id)
  WHERE source_message_id IS NOT NULL;
CREATE INDEX idx_inbound_org_received ON inbound_message (org_id, received_at DESC);
CREATE INDEX idx_inbound_org_status ON inbound_message (org_id, status);
CREATE INDEX idx_inbound_status_updated ON inbound_message (status, updated_at)
  WHERE status IN ('RECEIVED', 'STORED');
CREATE INDEX idx_inbound_trace ON inbound_message (trace_id);
CREATE INDEX idx_inbound_queue_id ON inbound_message (postfix_queue_id);
CREATE INDEX idx_inbound_source_message_id ON inbound_message (source_message_id);

-- The state machine lives in the database so no code path can skip a step:
-- RECEIVED -> STORED -> PARSED, RECEIVED|STORED -> FAILED, and a row is born RECEIVED.
-- Reprocessing a FAILED message is an explicit operator act (`reprocess`), which sets
-- orderflow.allow_reprocess for its transaction to allow FAILED|PARSED -> STORED.
CREATE FUNCTION inbound_message_check_transition() RETURNS trigger
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
    NEW.updated_at := now();
    RETURN NEW;
  END IF;
  IF (OLD.status = 'RECEIVED' AND NEW.status IN ('STORED', 'FAILED'))
     OR (OLD.status = 'STORED' AND NEW.status IN ('PARSED', 'FAILED'))
     OR (OLD.status IN ('PARSED', 'FAILED') AND NEW.status = 'STORED'
         AND NEW.raw_storage_key IS NOT NULL
         AND coalesce(current_setting('orderflow.allow_reprocess', true), '') = 'on') THEN
    NEW.updated_at := now();
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'inbound_message % may not go from % to %', OLD.id, OLD.status, NEW.status
    USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER inbound_message_transition
  BEFORE INSERT OR UPDATE OF status ON inbound_message
  FOR EACH ROW EXECUTE FUNCTION inbound_message_check_transition();

-- Status history: every status a message has had, when, and why (`trace` shows it).
CREATE TABLE inbound_message_event (
  id                  bigserial PRIMARY KEY,
  inbound_message_id  uuid NOT NULL REFERENCES inbound_message(id),
  status              text NOT NULL,
  error_json          jsonb,
  at                  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idx_inbound_event_message ON inbound_message_event (inbound_message_id, at);

CREATE FUNCTION inbound_message_record_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    INSERT INTO inbound_message_event (inbound_message_id, status, error_json)
    VALUES (NEW.id, NEW.status, NEW.error_json);
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER inbound_message_history
  AFTER INSERT OR UPDATE OF status ON inbound_message
  FOR EACH ROW EXECUTE FUNCTION inbound_message_record_event();

CREATE TABLE document (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id              uuid NOT NULL REFERENCES org(id),
  inbound_message_id  uuid NOT NULL REFERENCES inbound_message(id),
  part_path           text NOT NULL,
  file_name           text NOT NULL,
  mime_type           text NOT NULL,
  size_bytes          bigint NOT NULL,
  sha256              text NOT NULL,
  storage_key         text NOT NULL,
  status              text NOT NULL DEFAULT 'STORED' CHECK (status IN ('STORED', 'FAILED')),
  decision_json       jsonb,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now(),
  UNIQUE (inbound_message_id, part_path)
);
CREATE INDEX idx_document_org ON document (org_id, created_at DESC);

-- What the extraction job decided for every MIME part that is not a document (trace/inspect).
CREATE TABLE inbound_message_part (
  inbound_message_id  uuid NOT NULL REFERENCES inbound_message(id),
  part_path           text NOT NULL,
  content_type        text,
  decision            text NOT NULL,
  reason              text NOT NULL,
  PRIMARY KEY (inbound_message_id, part_path)
);
