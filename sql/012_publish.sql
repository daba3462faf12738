-- Publishing over HTTP (POST /v1/events).
--
-- A custom event may carry extra envelope members, `correlation_id` and
-- `attributes`: `ext` holds them as one serialized JSON object (NULL for
-- every other event). A record batch never holds such an event, so `ext`
-- is NULL on every batch row.
ALTER TABLE sluice.events ADD COLUMN ext text;

CREATE OR REPLACE VIEW sluice.event_log AS
SELECT e.seq, e.tenant, e.tenant_hash, e.type, e.topic, e.source, e.subject,
       e.txid, e.lsn, e.commit_time, e.appended_at, e.data, e.ext
FROM sluice.events e
WHERE e.first_seq IS NULL
UNION ALL
SELECT e.first_seq + b.ordinality - 1, e.tenant, e.tenant_hash, e.type,
       e.topic, e.source, b.elem ->> 0, e.txid, e.lsn, e.commit_time,
       e.appended_at, (b.elem -> 1)::text, NULL::text
FROM sluice.events e
CROSS JOIN LATERAL json_array_elements(e.data::json) WITH ORDINALITY AS b (elem, ordinality)
WHERE e.first_seq IS NOT NULL;

-- Idempotency keys of publish requests, per tenant. A request claims its
-- key (a lease, so a concurrent retry answers 409 instead of publishing
-- twice), records the source transaction's 64-bit txid BEFORE that
-- transaction commits, then stores its answer once its events are in the
-- log. A retry after a crash finds the txid and asks the source whether it
-- committed (txid_status): committed, it answers with the events' seqs
-- from the log; aborted or never recorded, it publishes afresh. Rows older
-- than the retention window are deleted by retention.
CREATE TABLE sluice.publish_requests (
    tenant         text        NOT NULL,
    key            text        NOT NULL,
    -- SHA-256 of the request body: the same key with another body is refused.
    request_hash   bytea       NOT NULL,
    -- Bumped by each claim; a request writes only under its own claim.
    attempt        int         NOT NULL DEFAULT 1,
    claimed_until  timestamptz NOT NULL,
    txid           bigint,
    -- The log's head when the transaction was emitted (its events are after).
    head_before    bigint,
    -- How many events the request publishes.
    events         int         NOT NULL,
    -- The 201 answer, once the events are in the log.
    response       jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);
CREATE INDEX publish_requests_created ON sluice.publish_requests (created_at);
