-- A new backfill wakes the leader's runner at once, whoever inserted it
-- (`sluice backfill`, POST /v1/backfills, or SQL): the runner LISTENs on
-- sluice_backfills and otherwise looks only once a second.
CREATE FUNCTION sluice.backfills_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sluice_backfills', NEW.id::text);
    RETURN NEW;
END
$$;

CREATE TRIGGER backfills_notify AFTER INSERT ON sluice.backfills
    FOR EACH ROW EXECUTE FUNCTION sluice.backfills_notify();
