-- Record batches: one row of sluice.events may hold several consecutive
-- events of one tenant that share every header column (tenant, tenant_hash,
-- type, topic, source, txid, lsn, commit_time, appended_at), so snapshot and
-- backfill appends write far fewer rows.
--
-- first_seq is NULL for an ordinary row, which holds one event at seq.
-- For a batch row:
--   * first_seq is the seq of its first event and seq that of its last, so
--     seq stays the primary key, max(seq) is still the log's head, and
--     "WHERE seq >= n ORDER BY seq" finds every row holding an event >= n.
--     Batches never overlap; their seqs are contiguous, first_seq..=seq.
--   * subject is NULL.
--   * data is a JSON array with one element per event, in seq order:
--     [[subject, data], [subject, data], ...], subject a JSON string or
--     null, data the event's data JSON value written verbatim. Element i
--     (0-based) is the event at first_seq + i; the array has
--     seq - first_seq + 1 elements.
-- Query the log through sluice.event_log (below), which expands batches.
ALTER TABLE sluice.events ADD COLUMN first_seq bigint;

-- lz4 compresses and decompresses `data` much faster than the default
-- pglz. A server built without lz4 raises feature_not_supported (0A000,
-- "compression method lz4 not supported"); it keeps pglz.
DO $$
BEGIN
    ALTER TABLE sluice.events ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'sluice.events.data keeps pglz compression: %', SQLERRM;
END
$$;

-- The log, one row per event, with batch rows expanded: the way for
-- operators and SQL users to query it (sluice.events is its storage).
-- json, not jsonb, so each event's data text is kept byte for byte.
-- Rows come in no particular order: add ORDER BY seq.
CREATE VIEW sluice.event_log AS
SELECT e.seq, e.tenant, e.tenant_hash, e.type, e.topic, e.source, e.subject,
       e.txid, e.lsn, e.commit_time, e.appended_at, e.data
FROM sluice.events e
WHERE e.first_seq IS NULL
UNION ALL
SELECT e.first_seq + b.ordinality - 1, e.tenant, e.tenant_hash, e.type,
       e.topic, e.source, b.elem ->> 0, e.txid, e.lsn, e.commit_time,
       e.appended_at, (b.elem -> 1)::text
FROM sluice.events e
CROSS JOIN LATERAL json_array_elements(e.data::json) WITH ORDINALITY AS b (elem, ordinality)
WHERE e.first_seq IS NOT NULL;
COMMENT ON VIEW sluice.event_log IS
    'The event log, one row per event (record batches of sluice.events expanded); query the log here, ORDER BY seq.';
