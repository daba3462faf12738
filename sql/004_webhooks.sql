-- Webhook endpoints, one row per endpoint, owned by a tenant.
CREATE TABLE sluice.webhooks (
    id               text PRIMARY KEY,           -- 'wh_' + random
    tenant           text NOT NULL,
    url              text NOT NULL,
    topics           text[] NOT NULL DEFAULT '{}',
    filter           jsonb,
    description      text NOT NULL DEFAULT '',
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    max_attempts     int NOT NULL,
    rate_per_second  double precision,
    rate_burst       int,
    ordered          boolean NOT NULL DEFAULT false,
    secret           text NOT NULL,
    -- During a rotation the previous secret signs too, until it expires.
    previous_secret  text,
    previous_expires timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_tenant ON sluice.webhooks (tenant, created_at);

-- Bumped by every change to the endpoints: the appender reloads its
-- matching cache when the version it holds is stale (checked inside the
-- append transaction, so an endpoint committed before an append sees it).
CREATE TABLE sluice.webhooks_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL DEFAULT 0
);
INSERT INTO sluice.webhooks_version DEFAULT VALUES;

CREATE FUNCTION sluice.bump_webhooks_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sluice.webhooks_version SET version = version + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER webhooks_changed AFTER INSERT OR UPDATE OR DELETE ON sluice.webhooks
    FOR EACH STATEMENT EXECUTE FUNCTION sluice.bump_webhooks_version();

-- The outbox: one delivery per (endpoint, event), written in the append
-- transaction. status: pending (never failed), failed (failed, retry due at
-- next_attempt_at), delivered, dead (attempts exhausted or endpoint gone).
-- A claimed delivery's next_attempt_at is pushed out by a lease, so a
-- dispatcher that dies mid-attempt only delays it.
CREATE TABLE sluice.webhook_deliveries (
    id               bigserial PRIMARY KEY,
    webhook_id       text NOT NULL REFERENCES sluice.webhooks (id) ON DELETE CASCADE,
    seq              bigint NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, seq)
);
-- Claims read an endpoint's due deliveries in (next_attempt_at, seq) order
-- straight off this index (no sort, however large the backlog); the second
-- answers an ordered endpoint's "anything earlier unfinished?".
CREATE INDEX webhook_deliveries_due ON sluice.webhook_deliveries (webhook_id, next_attempt_at, seq)
    WHERE status IN ('pending', 'failed');
CREATE INDEX webhook_deliveries_unfinished ON sluice.webhook_deliveries (webhook_id, seq)
    WHERE status IN ('pending', 'failed');
CREATE INDEX webhook_deliveries_by_status ON sluice.webhook_deliveries (webhook_id, status, seq);
-- Retention removes the deliveries of pruned events by seq.
CREATE INDEX webhook_deliveries_seq ON sluice.webhook_deliveries (seq);

-- Every attempt, kept with its delivery.
-- (attempt counts from 1 again after a replay, so it is not a key.)
CREATE TABLE sluice.webhook_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES sluice.webhook_deliveries (id) ON DELETE CASCADE,
    attempt      int NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    http_status  int,
    latency_ms   int NOT NULL,
    error        text
);
CREATE INDEX webhook_attempts_delivery ON sluice.webhook_attempts (delivery_id, id);
