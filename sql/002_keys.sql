-- API keys. The key itself is never stored: only its SHA-256 (lower-case
-- hex, looked up on every request) and its first 12 characters, so an
-- operator can tell keys apart in `sluice keys list`.
-- Admin keys are the operator's, cross-tenant; every other key belongs to
-- exactly one tenant.
CREATE TABLE sluice.api_keys (
    id          bigserial   PRIMARY KEY,
    tenant      text        NULL CHECK (tenant <> ''),
    role        text        NOT NULL CHECK (role IN ('anon', 'service', 'admin')),
    name        text,
    prefix      text        NOT NULL,
    key_hash    text        NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT api_keys_tenant_unless_admin CHECK ((tenant IS NULL) = (role = 'admin'))
);
CREATE INDEX api_keys_tenant ON sluice.api_keys (tenant, id);
