-- Message-ID conflicts (issue 10, item 2). A duplicate is the same org + Message-ID AND the
-- same content as sent; the same Message-ID with other content is a message of its own,
-- linked to the first one of that Message-ID, never a silent drop.
--
-- content_sha256: sha256 of the message as the sender sent it, without the trace fields our
-- own hosts add (pipe/headers.py content_header_digest), so a sender's retry through another
-- of our MX hosts hashes the same. NULL on rows written before this migration; the delivery
-- path treats such a row as the same content when its raw sha256 matches.
-- conflict_of: the first message of this org and Message-ID, when this one differs from it.
--
-- Expand, then contract (docs/operations.md "Upgrades"): 0.1.0 inserts with
-- `ON CONFLICT (org_id, source, source_message_id) WHERE source_message_id IS NOT NULL`, which
-- needs 001's partial unique index exactly as it is. So that index stays, the first message of
-- a Message-ID keeps it in source_message_id, and a conflicting copy is stored with
-- source_message_id NULL and its Message-ID in conflict_message_id. `message_id` is the one
-- column every "find by Message-ID" reads, for first messages and conflicts alike.
ALTER TABLE inbound_message
  ADD COLUMN content_sha256 text,
  ADD COLUMN conflict_of uuid REFERENCES inbound_message(id),
  ADD COLUMN conflict_message_id text,
  ADD COLUMN message_id text
    GENERATED ALWAYS AS (coalesce(source_message_id, conflict_message_id)) STORED,
  ADD CONSTRAINT inbound_message_conflict_message_id
    CHECK (conflict_message_id IS NULL OR source_message_id IS NULL);

-- Identical copies of one conflicting content (two MX hosts at once) collapse to one row.
CREATE UNIQUE INDEX inbound_message_conflict_dedup
  ON inbound_message (conflict_of, content_sha256)
  WHERE conflict_of IS NOT NULL;
CREATE INDEX idx_inbound_conflict_of ON inbound_message (conflict_of)
  WHERE conflict_of IS NOT NULL;
CREATE INDEX idx_inbound_message_id ON inbound_message (message_id);
