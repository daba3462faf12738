-- Snapshots and backfills of captured tables. A running one is read in
-- primary-key order in chunks by the leader; each chunk's progress is
-- written in the append transaction that holds the chunk's events.
CREATE TABLE sluice.backfills (
    id              bigserial   PRIMARY KEY,
    table_name      text        NOT NULL,
    predicate       text,
    -- 'initial' (the table's first snapshot) or 'backfill' (on demand)
    kind            text        NOT NULL DEFAULT 'backfill'
                    CHECK (kind IN ('initial', 'backfill')),
    status          text        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'done', 'failed', 'cancelled')),
    chunk_size      int         NOT NULL,
    throttle_ms     int         NOT NULL DEFAULT 0,
    -- The primary-key values (text form) of the last row read.
    last_key        text[],
    rows_read       bigint      NOT NULL DEFAULT 0,
    rows_emitted    bigint      NOT NULL DEFAULT 0,
    rows_estimated  bigint,
    chunks          bigint      NOT NULL DEFAULT 0,
    -- The log's head when it was created, and its first snapshot event.
    start_seq       bigint      NOT NULL,
    first_seq       bigint,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX backfills_running ON sluice.backfills (id) WHERE status = 'running';
