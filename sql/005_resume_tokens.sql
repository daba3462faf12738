-- Sources whose position is an opaque token (MongoDB change-stream resume
-- tokens, stored as the BSON of the token document) keep it beside the
-- numeric position, written in the same transaction as the events.
ALTER TABLE sluice.checkpoints ADD COLUMN resume_token bytea;
