-- The durable event log, the source checkpoints, and the tenants seen per
-- relation (a TRUNCATE is announced to each of them).
-- The envelope's header is stored as columns and `data` as text; readers
-- rebuild the identical envelope (event::Envelope is the one serializer).
-- Storing the header once instead of twice keeps rows and WAL small.
CREATE TABLE sluice.events (
    seq          bigint      PRIMARY KEY,
    tenant       text        NOT NULL,
    -- FNV-1a (32 bit) of tenant, computed by Sluice (event::TenantId::hash32).
    -- Indexing this instead of the text halves the index's entry size and
    -- its page splits; reads always recheck tenant itself.
    tenant_hash  integer     NOT NULL,
    type         text        NOT NULL,
    topic        text        NOT NULL,
    source       text        NOT NULL,
    subject      text,
    txid         bigint,
    lsn          bigint,
    commit_time  timestamptz NOT NULL,
    appended_at  timestamptz NOT NULL DEFAULT now(),
    data         text        NOT NULL
);
-- Every tenant-scoped read is "this tenant, from this seq":
-- WHERE tenant_hash = h AND tenant = t AND seq >= n ORDER BY seq.
CREATE INDEX events_tenant_seq ON sluice.events (tenant_hash, seq);

CREATE TABLE sluice.checkpoints (
    source      text        PRIMARY KEY,
    commit_lsn  bigint      NOT NULL,
    ordinal     bigint      NOT NULL,
    complete    boolean     NOT NULL,
    ack_lsn     bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sluice.relation_tenants (
    relation  text NOT NULL,
    tenant    text NOT NULL,
    PRIMARY KEY (relation, tenant)
);
