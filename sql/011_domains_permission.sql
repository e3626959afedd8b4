-- The domains:manage permission (issue 13, docs/api.md "Custom domains"): a key or an inbox
-- admin that holds it lists, adds, verifies and removes its orgs' custom domains. No new table.

ALTER TABLE api_key DROP CONSTRAINT api_key_permissions_check;
ALTER TABLE api_key ADD CONSTRAINT api_key_permissions_check CHECK (
  cardinality(permissions) >= 1
  AND permissions <@ ARRAY['messages:read', 'raw:read', 'events:read', 'reprocess',
                           'webhooks:manage', 'keys:admin', 'domains:manage']::text[]);
