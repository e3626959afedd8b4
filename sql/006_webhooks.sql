-- Webhooks (issue 11, docs/webhooks.md): per-org endpoints, one delivery per (endpoint, event),
-- every attempt, and the dispatcher's position in the event feed.
--
-- No foreign key points at event: retention pruning deletes old events, and a delivery keeps
-- the exact body it was signed over (payload), so a redelivery after pruning still works and
-- every retry sends byte-identical content under the same webhook-id.

CREATE TABLE webhook_endpoint (
  id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id                 uuid NOT NULL REFERENCES org(id),
  url                    text NOT NULL CHECK (length(url) <= 2048),
  -- Empty: every event type; otherwise exact types or a "prefix.*" wildcard.
  event_types            text[] NOT NULL DEFAULT '{}',
  description            text NOT NULL DEFAULT '',
  -- HMAC secrets must be readable to sign with; the runtime role reads them, nothing else.
  secret                 text NOT NULL CHECK (secret LIKE 'whsec\_%'),
  previous_secret        text CHECK (previous_secret LIKE 'whsec\_%'),
  previous_secret_until  timestamptz,
  enabled                boolean NOT NULL DEFAULT true,
  disabled_reason        text,
  disabled_at            timestamptz,
  -- First failure of the current run of failures; NULL once an attempt succeeds.
  failing_since          timestamptz,
  deleted_at             timestamptz,
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  CHECK (enabled OR disabled_reason IS NOT NULL)
);
CREATE INDEX idx_webhook_endpoint_org ON webhook_endpoint (org_id) WHERE deleted_at IS NULL;

CREATE TABLE webhook_delivery (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  endpoint_id        uuid NOT NULL REFERENCES webhook_endpoint(id),
  org_id             uuid NOT NULL REFERENCES org(id),
  event_id           bigint NOT NULL,
  event_type         text NOT NULL,
  event_occurred_at  timestamptz NOT NULL,
  inbound_message_id uuid,
  -- The webhook-id header: the same on every attempt and redelivery (the receiver's
  -- idempotency key), and the same for one event at every endpoint.
  webhook_id         text NOT NULL CHECK (webhook_id ~ '^[A-Za-z0-9_-]+$'),
  payload            text NOT NULL,
  status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'delivered', 'failed')),
  -- Attempts since the delivery was (re)queued: the position in the retry schedule.
  attempts           integer NOT NULL DEFAULT 0,
  total_attempts     integer NOT NULL DEFAULT 0,
  next_attempt_at    timestamptz,
  last_status_code   integer,
  last_error         text,
  delivered_at       timestamptz,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  -- A dispatcher restarted mid fan-out can never create a second delivery of one event.
  UNIQUE (endpoint_id, event_id)
);
CREATE INDEX idx_webhook_delivery_due ON webhook_delivery (next_attempt_at)
  WHERE status = 'pending';
CREATE INDEX idx_webhook_delivery_endpoint ON webhook_delivery (endpoint_id, created_at DESC);

-- Every attempt, append-only: what the operator and the org see when a receiver misbehaves.
CREATE TABLE webhook_attempt (
  id                bigserial PRIMARY KEY,
  delivery_id       uuid NOT NULL REFERENCES webhook_delivery(id),
  attempted_at      timestamptz NOT NULL DEFAULT now(),
  address           text,
  status_code       integer,
  duration_ms       integer NOT NULL,
  error             text,
  response_excerpt  text CHECK (octet_length(response_excerpt) <= 4096)
);
CREATE INDEX idx_webhook_attempt_delivery ON webhook_attempt (delivery_id, id);

-- Where the fan-out stands in the event feed (events.read's cursor), and each message's last
-- sequence number, both advanced in the fan-out's transaction with the deliveries it made.
CREATE TABLE webhook_dispatch_state (
  name        text PRIMARY KEY,
  cursor      text,
  updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO webhook_dispatch_state (name) VALUES ('fanout');

CREATE TABLE webhook_message_sequence (
  inbound_message_id  uuid PRIMARY KEY,
  last_sequence       integer NOT NULL
);
