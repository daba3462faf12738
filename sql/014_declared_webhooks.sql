-- Endpoints as code: webhook endpoints declared in the configuration
-- (`[[webhooks.endpoints]]`) are reconciled at start. A declared endpoint
-- is `managed`, known by (tenant, name); `declared_digest` is the SHA-256
-- of the declaration it was last reconciled with (a different one means
-- the declaration changed). Endpoints created through the API have no
-- name and are never managed.
ALTER TABLE sluice.webhooks
    ADD COLUMN name            text,
    ADD COLUMN managed         boolean NOT NULL DEFAULT false,
    ADD COLUMN declared_digest bytea;

ALTER TABLE sluice.webhooks
    ADD CONSTRAINT webhooks_managed_named CHECK (NOT managed OR name IS NOT NULL);

CREATE UNIQUE INDEX webhooks_declared ON sluice.webhooks (tenant, name) WHERE managed;
