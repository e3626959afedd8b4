-- Message-ID conflicts (issue 10, item 2). A duplicate is the same org + Message-ID AND the
-- same content as sent; the same Message-ID with other content is a message of its own,
-- linked to the first one of that Message-ID, never a silent drop.
--
-- content_sha256: sha256 of the message as the sender sent it, without the trace fields our
-- own hosts add (pipe/headers.py content_header_digest), so a sender's retry through another
-- of our MX hosts hashes the same. NULL on rows written before this migration; the delivery
-- path treats such a row as the same content when its raw sha256 matches.
-- conflict_of: the first message of this org and Message-ID, when this one differs from it.
ALTER TABLE inbound_message
  ADD COLUMN content_sha256 text,
  ADD COLUMN conflict_of uuid REFERENCES inbound_message(id);

-- The dedup gate now includes the content: concurrent identical copies (two MX hosts at once)
-- still collapse to one row, a conflicting copy gets its own. One transaction: no moment
-- without a unique index.
DROP INDEX inbound_message_dedup;
CREATE UNIQUE INDEX inbound_message_dedup
  ON inbound_message (org_id, source, source_message_id, content_sha256)
  WHERE source_message_id IS NOT NULL;
CREATE INDEX idx_inbound_conflict_of ON inbound_message (conflict_of)
  WHERE conflict_of IS NOT NULL;
