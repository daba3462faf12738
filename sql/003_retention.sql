-- Retention pruning's watermark: seqs at or below pruned_through are gone,
-- so a reader asking for one gets an explicit gap (410), never a silent skip.
CREATE TABLE sluice.retention (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through  bigint  NOT NULL DEFAULT 0,
    pruned_at       timestamptz
);
INSERT INTO sluice.retention DEFAULT VALUES;
-- Pruning deletes by age of arrival.
CREATE INDEX events_appended_at ON sluice.events USING brin (appended_at);
