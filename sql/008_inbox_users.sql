-- Web inbox users (issue 12, orderflow_ingest/inbox). A user signs in by a magic link and then
-- acts, per org, with the permissions of their role there: the same keys.Principal the API
-- builds from a key (one auth and permission model; see inbox/auth.py ROLE_PERMISSIONS).

CREATE TABLE inbox_user (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email           citext NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 320 AND email LIKE '%_@_%'),
  name            text NOT NULL DEFAULT '',
  -- Our own support staff: admin in every org.
  platform_admin  boolean NOT NULL DEFAULT false,
  created_at      timestamptz NOT NULL DEFAULT now(),
  disabled_at     timestamptz,
  last_sign_in_at timestamptz
);

CREATE TABLE inbox_membership (
  user_id    uuid NOT NULL REFERENCES inbox_user(id),
  org_id     uuid NOT NULL REFERENCES org(id),
  role       text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, org_id)
);
CREATE INDEX idx_inbox_membership_org ON inbox_membership (org_id);

-- Sign-in links: only the sha256 of the random token is kept; single use (used_at), short-lived.
-- user_id NULL: a request for an unknown address, written all the same so that both answers
-- do the same work; such a row can never sign anyone in.
CREATE TABLE inbox_login_token (
  token_sha256 text PRIMARY KEY CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
  user_id      uuid REFERENCES inbox_user(id),
  created_at   timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz NOT NULL,
  used_at      timestamptz
);
CREATE INDEX idx_inbox_login_token_expires ON inbox_login_token (expires_at);

-- Sessions: the cookie holds a random id, the table its sha256 and the CSRF token bound to it.
CREATE TABLE inbox_session (
  id_sha256  text PRIMARY KEY CHECK (id_sha256 ~ '^[0-9a-f]{64}$'),
  user_id    uuid NOT NULL REFERENCES inbox_user(id),
  csrf_token text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  revoked_at timestamptz
);
CREATE INDEX idx_inbox_session_user ON inbox_session (user_id);

-- The inbox's list and search at a million messages per org (bench/inbox_search.py):
-- newest first with the id tie-break of the cursor, so a page is an index walk that stops
-- after 51 rows (the per-row document count then runs 51 times, not once per row of the org);
-- trigram indexes for the substring terms (subject:, from:, bare words, filename:), which
-- match with ILIKE.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX idx_inbound_org_received_id ON inbound_message (org_id, received_at DESC, id DESC);
CREATE INDEX idx_inbound_subject_trgm ON inbound_message USING gin (subject gin_trgm_ops);
CREATE INDEX idx_inbound_from_trgm ON inbound_message USING gin ((from_email::text) gin_trgm_ops);
CREATE INDEX idx_document_file_name_trgm ON document USING gin (file_name gin_trgm_ops);
