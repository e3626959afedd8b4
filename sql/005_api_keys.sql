-- API keys (issue 11, docs/api.md "Keys"). A key names concrete orgs and permissions, never
-- "all"; only the sha256 of the secret is kept (the secret is shown once, at creation).

CREATE TABLE api_key (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  -- sha256 (hex) of the whole secret, ofi_live_...; the secret itself is nowhere.
  secret_sha256 text NOT NULL UNIQUE CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
  -- The first characters of the secret, so an operator can tell keys apart in a list.
  hint          text NOT NULL,
  org_ids       uuid[] NOT NULL CHECK (cardinality(org_ids) >= 1 AND array_position(org_ids, NULL) IS NULL),
  permissions   text[] NOT NULL CHECK (
                  cardinality(permissions) >= 1
                  AND permissions <@ ARRAY['messages:read', 'raw:read', 'events:read', 'reprocess',
                                           'webhooks:manage', 'keys:admin']::text[]),
  -- NULL: any client address; otherwise the request's address must be in one of these.
  allowed_ips   cidr[],
  expires_at    timestamptz,
  created_by    text NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  revoked_at    timestamptz,
  last_used_at  timestamptz
);

-- The key that signs short-lived download links: one random value per database, so every API
-- host verifies the links of every other without configuration. Rotating it (UPDATE) only
-- invalidates links that are at most ORDERFLOW_API_LINK_TTL old.
CREATE TABLE api_link_key (
  id         boolean PRIMARY KEY DEFAULT true CHECK (id),
  secret     bytea NOT NULL DEFAULT gen_random_bytes(32),
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO api_link_key DEFAULT VALUES;
