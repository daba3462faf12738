-- Claims and custom roles on API keys, for access policies (issue 18).
-- `claims` is what a policy compares row fields with (`"claim": "sub"`):
-- exactly what was given at creation, a JSON object. `policy_role` names a
-- custom role of the config's policies (`member`, `viewer`, …); NULL means
-- the key's own role. Only anon keys take a custom role: its privilege is
-- anon's, and the policies of that role choose what it may see.
ALTER TABLE sluice.api_keys
    ADD COLUMN claims      jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN policy_role text  NULL;

ALTER TABLE sluice.api_keys
    ADD CONSTRAINT api_keys_claims_object CHECK (jsonb_typeof(claims) = 'object'),
    ADD CONSTRAINT api_keys_policy_role_custom CHECK (
        policy_role IS NULL
        OR (role = 'anon'
            AND policy_role ~ '^[a-z][a-z0-9_-]{0,62}$'
            AND policy_role NOT IN ('anon', 'service', 'admin'))
    );
