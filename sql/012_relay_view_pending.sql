-- Postfix's relay domains (proxy:pgsql:, postfix-config/README.md "Custom domains") are every
-- custom domain that is not removed, pending ones included. The milter answers for each state
-- (pending → 451 4.7.1 until verified, suspended → 550, removed → 550), fresh within its cache
-- TTL; Postfix's smtpd keeps its relay decisions for its life, and with pending domains in
-- the view the only stale answer it can hold is "not ours" for a domain that was not even
-- added when it was asked. So smtpd needs no short max_use (it was 10: a new smtpd per ten
-- sessions cost about 1 ms of CPU per message).
CREATE OR REPLACE VIEW postfix_custom_domain AS
  SELECT domain FROM custom_domain WHERE removed_at IS NULL;
