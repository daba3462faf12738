-- Per-endpoint webhook options (issue 20). 012 is left to another change;
-- migrations are applied by version, each once, so the gap is harmless.
--
-- headers: sent on every request (names and values validated by the API;
--   the signature, framing and hop-by-hop headers are refused).
-- timeout_ms, retry_schedule: NULL follows webhooks.timeout_ms and
--   webhooks.retry_schedule.
-- batch_max_events, batch_max_wait_ms: both set, or neither (no batching).
-- template, template_content_type: the body rendered per event instead of
--   the envelope; never with batching.
ALTER TABLE sluice.webhooks
    ADD COLUMN headers               jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN timeout_ms            int   NULL,
    ADD COLUMN retry_schedule        text  NULL,
    ADD COLUMN batch_max_events      int   NULL,
    ADD COLUMN batch_max_wait_ms     int   NULL,
    ADD COLUMN template              text  NULL,
    ADD COLUMN template_content_type text  NULL;

ALTER TABLE sluice.webhooks
    ADD CONSTRAINT webhooks_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    ADD CONSTRAINT webhooks_timeout_range CHECK (timeout_ms BETWEEN 100 AND 60000),
    ADD CONSTRAINT webhooks_batch_shape CHECK (
        (batch_max_events IS NULL) = (batch_max_wait_ms IS NULL)
        AND (batch_max_events IS NULL OR batch_max_events BETWEEN 1 AND 1000)
        AND (batch_max_wait_ms IS NULL OR batch_max_wait_ms BETWEEN 0 AND 60000)
    ),
    ADD CONSTRAINT webhooks_template_shape CHECK (
        (template IS NULL OR batch_max_events IS NULL)
        AND (template_content_type IS NULL OR template IS NOT NULL)
    );

-- The request a delivery is part of: a batch's id (its `webhook-id`), set
-- when the batch is first claimed and kept while it is retried, so every
-- retry carries the same events under the same id; cleared by a replay
-- (the event joins a new request). NULL for deliveries sent on their own.
ALTER TABLE sluice.webhook_deliveries ADD COLUMN request text NULL;
CREATE INDEX webhook_deliveries_request ON sluice.webhook_deliveries (webhook_id, request)
    WHERE request IS NOT NULL;

-- The `webhook-id` of the request an attempt was made in (`msg_<seq>` for a
-- delivery sent on its own, the batch's id otherwise); NULL for attempts
-- recorded before this migration.
ALTER TABLE sluice.webhook_attempts ADD COLUMN request text NULL;
