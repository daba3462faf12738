-- Retention pruning's watermark: seqs at or below pruned_through are gone,
-- so a reader asking for one gets an explicit gap (410), never a silent skip.
CREATE TABLE sluice.retention (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through  bigint  NOT NULL DEFAULT 0,
    pruned_at       timestamptz
);
INSERT INTO sluice.retention DEFAULT VALUES;
-- No index on appended_at: it never decreases along seq, so retention finds
-- its cutoff by binary search over the primary key instead of making every
-- append maintain another index.
