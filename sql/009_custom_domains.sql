-- Custom domains per org (issue 13, orderflow_ingest/domains): an org receives orders at its own
-- domain (orders@po.acme-corp.com) once that domain proves ownership (a TXT token) and points
-- its MX at our hosts. The periodic check (`domain check`, a timer on every host) moves the
-- state; a row is claimed FOR UPDATE SKIP LOCKED, so one host checks one domain at a time.
--
--   pending --(TXT + MX pass, N times)--> verified --(MX not ours, N times)--> mx_lost
--   mx_lost --(grace over, or TXT gone N times)--> suspended
--   mx_lost | suspended --(TXT + MX pass, N times)--> verified   (event domain.restored)
--
-- Only clear answers (NXDOMAIN, NODATA, records) count; a resolver failure changes nothing.

CREATE TABLE custom_domain (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id             uuid NOT NULL REFERENCES org(id),
  -- Lower case, no trailing dot, at least two labels (checked again in domains/store.py).
  -- Unique among the domains not removed (index below).
  domain             text NOT NULL CHECK (
                       length(domain) <= 253
                       AND domain ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  -- The value to publish in TXT at _orderflow.<domain> (random, shown by `domain add`).
  txt_token          text NOT NULL CHECK (txt_token ~ '^[A-Za-z0-9_-]{16,64}$'),
  -- Which local parts are accepted there: every one, or those listed (lower case).
  accept_all         boolean NOT NULL DEFAULT false,
  local_parts        text[] NOT NULL DEFAULT '{}',
  state              text NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'verified', 'mx_lost', 'suspended')),
  -- Flap damping: consecutive conclusive check results of each kind (a resolver failure
  -- neither adds to nor breaks a streak).
  pass_streak        integer NOT NULL DEFAULT 0 CHECK (pass_streak >= 0),
  mx_fail_streak     integer NOT NULL DEFAULT 0 CHECK (mx_fail_streak >= 0),
  txt_fail_streak    integer NOT NULL DEFAULT 0 CHECK (txt_fail_streak >= 0),
  last_checked_at    timestamptz,
  last_result        jsonb,
  last_conclusive_at timestamptz,
  mx_lost_since      timestamptz,
  verified_at        timestamptz,
  state_changed_at   timestamptz NOT NULL DEFAULT now(),
  created_at         timestamptz NOT NULL DEFAULT now(),
  -- `domain remove`: the row stays (the services never DELETE), out of every lookup.
  removed_at         timestamptz,
  CHECK (accept_all OR cardinality(local_parts) > 0),
  CHECK ((state = 'mx_lost') = (mx_lost_since IS NOT NULL))
);
CREATE UNIQUE INDEX idx_custom_domain_live ON custom_domain (domain) WHERE removed_at IS NULL;
CREATE INDEX idx_custom_domain_org ON custom_domain (org_id);
CREATE INDEX idx_custom_domain_due ON custom_domain (last_checked_at NULLS FIRST)
  WHERE removed_at IS NULL;

-- What Postfix may read (proxy:pgsql: relay_domains and transport_maps, postfix-config/):
-- the domains it accepts mail for. Pending domains are not in it: Postfix refuses them as
-- relay attempts; mx_lost and suspended are in it so the milter can answer 451/550 with a
-- reason instead of "Relay access denied".
CREATE VIEW postfix_custom_domain AS
  SELECT domain FROM custom_domain
  WHERE removed_at IS NULL AND state IN ('verified', 'mx_lost', 'suspended');

-- Postfix's own database role (no other right; postfix-config/README.md, "Custom domains"):
-- granted here when it exists already; `db migrate` on a host where it was made later needs
-- `GRANT SELECT ON postfix_custom_domain TO orderflow_postfix` once.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'orderflow_postfix') THEN
    EXECUTE 'GRANT USAGE ON SCHEMA public TO orderflow_postfix';
    EXECUTE 'GRANT SELECT ON postfix_custom_domain TO orderflow_postfix';
  END IF;
END
$$;
