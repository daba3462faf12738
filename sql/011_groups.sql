-- Consumer groups (issue 19): durable work queues over the log, per tenant.
--
-- `cursor` is the next seq of the log the group has not read yet: events
-- below it were either delivered (a row in group_messages until acked) or
-- did not match. A message row is `inflight` (delivered under `token`,
-- until `due`), `ready` (receivable from `due`: nacked with a delay,
-- expired, blocked behind an earlier event of its subject, or read while
-- the group was at max_in_flight) or `dead` (max_deliveries reached).
-- `subject` is kept for groups ordered by subject only.
-- An acknowledged message's row is deleted. `generation` moves on each
-- seek, so the tokens of before no longer match anything.
CREATE TABLE sluice.groups (
    tenant          text        NOT NULL,
    name            text        NOT NULL,
    topics          text[]      NOT NULL DEFAULT '{}',
    filter          jsonb,
    role            text,
    claims          jsonb       NOT NULL DEFAULT '{}',
    ack_wait_ms     integer     NOT NULL,
    max_deliveries  integer     NOT NULL,
    max_in_flight   integer     NOT NULL,
    ordering        text        NOT NULL,
    cursor          bigint      NOT NULL,
    generation      integer     NOT NULL DEFAULT 1,
    delivered       bigint      NOT NULL DEFAULT 0,
    redelivered     bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name),
    CONSTRAINT groups_ordering CHECK (ordering IN ('none', 'subject')),
    CONSTRAINT groups_claims_object CHECK (jsonb_typeof(claims) = 'object')
);

CREATE TABLE sluice.group_messages (
    tenant      text        NOT NULL,
    name        text        NOT NULL,
    seq         bigint      NOT NULL,
    subject     text,
    state       text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    due         timestamptz NOT NULL,
    -- 16 random bytes (uuid_send(gen_random_uuid())), hex in the API.
    token       bytea,
    dead_at     timestamptz,
    -- No foreign key to sluice.groups: its check on every inserted row
    -- cost more than the rest of a receive; deleting a group deletes its
    -- messages in the same transaction.
    PRIMARY KEY (tenant, name, seq),
    CONSTRAINT group_messages_state CHECK (state IN ('ready', 'inflight', 'dead'))
);
-- Pending messages of a group by subject (only groups ordered by subject
-- store one) and by due time.
CREATE INDEX group_messages_subject ON sluice.group_messages (tenant, name, subject, seq)
    WHERE subject IS NOT NULL AND state <> 'dead';
CREATE INDEX group_messages_due ON sluice.group_messages (tenant, name, state, due)
    WHERE state <> 'dead';
