-- A webhook endpoint may receive its tenant's events as a role of the
-- access policies sees them (issue 18): `role` is anon, service or a
-- custom role (NULL: service, every event of the tenant, as before), and
-- `claims` are what that role's row predicates compare with, as an API
-- key's claims are.
ALTER TABLE sluice.webhooks
    ADD COLUMN role   text  NULL,
    ADD COLUMN claims jsonb NOT NULL DEFAULT '{}';

ALTER TABLE sluice.webhooks
    ADD CONSTRAINT webhooks_claims_object CHECK (jsonb_typeof(claims) = 'object'),
    ADD CONSTRAINT webhooks_role_shape CHECK (
        role IS NULL OR (role ~ '^[a-z][a-z0-9_-]{0,62}$' AND role <> 'admin')
    );
