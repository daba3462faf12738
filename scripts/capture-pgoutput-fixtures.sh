#!/usr/bin/env bash
# Captures real pgoutput (protocol version 1) messages from a throwaway
# PostgreSQL 15 cluster into tests/fixtures/pgoutput/, one file per scenario.
#
# The decoder's unit tests run on these bytes, so that the decoder is checked
# against what the server really sends rather than against our reading of the
# docs. Re-running the script rewrites the fixtures; OIDs and LSNs change from
# run to run, so the tests assert relationships (ids that match, lsns that
# agree) and built-in type OIDs, never this run's exact numbers.
#
# Usage: scripts/capture-pgoutput-fixtures.sh
# Env:   PG_BIN (default /usr/lib/postgresql/15/bin)
#        OUT_DIR (default <repo>/tests/fixtures/pgoutput)
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$REPO_ROOT/tests/fixtures/pgoutput}

for bin in initdb pg_ctl psql; do
    if [[ ! -x $PG_BIN/$bin ]]; then
        echo "missing $PG_BIN/$bin (install postgresql-15 or set PG_BIN)" >&2
        exit 1
    fi
done

TMP=$(mktemp -d -t sluice-pgoutput.XXXXXX)
PGDATA=$TMP/data

# initdb and postgres refuse to run as root: hand the cluster to the postgres
# OS user and run the server-side commands as that user.
if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$TMP"
    chmod 700 "$TMP"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

cleanup() {
    if [[ -f $PGDATA/postmaster.pid ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# A port nothing on 127.0.0.1 answers on. Racy in principle; pg_ctl start
# fails loudly if someone grabs it in between.
free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}
PORT=$(free_port)

as_pg "$PG_BIN/initdb" -D "$PGDATA" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; exit 1; }

cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$TMP'
wal_level = logical
max_replication_slots = 4
max_wal_senders = 4
fsync = off
full_page_writes = off
# synchronous_commit stays on: the SQL decoding functions stop at the flushed
# WAL position, so an unflushed commit would leak into the next scenario.
EOF

as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$TMP/server.log" -w -t 60 start >/dev/null \
    || { cat "$TMP/server.log" >&2; exit 1; }

PG_VERSION=$("$PG_BIN/psql" -h "$TMP" -p "$PORT" -U postgres -d postgres -XAtq -c 'SHOW server_version')

# psql reading SQL from stdin: every statement is its own transaction unless
# the script says BEGIN, which is what the scenarios rely on.
sql() {
    "$PG_BIN/psql" -h "$TMP" -p "$PORT" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 "$@"
}

OPTS="'proto_version','1','publication_names','pub','messages','true'"

# The SQL decoding functions stop at the flushed WAL position. A commit that
# wrote no WAL of its own (or a non-transactional logical message, which 15
# never flushes by itself) can sit unflushed until the WAL writer comes round,
# and would then leak into the next scenario. Wait until everything inserted
# so far is flushed.
wait_flushed() {
    local target
    target=$(sql -At -c "SELECT pg_current_wal_insert_lsn()")
    for _ in $(seq 1 100); do
        if [[ $(sql -At -c "SELECT pg_current_wal_flush_lsn() >= '$target'") == t ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "wal not flushed up to $target after 10s" >&2
    return 1
}

drain() {
    wait_flushed
    sql -At -c "SELECT count(*) FROM pg_logical_slot_get_binary_changes('slot', NULL, NULL, $OPTS)" >/dev/null
}

# capture NAME DESCRIPTION [extra plugin options] <<SQL
# Drains the slot, runs the SQL on stdin, then writes every message the slot
# produced for it to $OUT_DIR/NAME.txt.
capture() {
    local name=$1 desc=$2 extra=${3:-}
    local script out="$OUT_DIR/$name.txt"
    script=$(cat)
    drain
    printf '%s\n' "$script" | sql -f - >/dev/null
    wait_flushed
    {
        echo "# scenario: $name"
        echo "# $desc"
        echo "# captured from PostgreSQL $PG_VERSION by scripts/capture-pgoutput-fixtures.sh"
        echo "# options: $OPTS$extra"
        echo "# sql:"
        printf '%s\n' "$script" | sed 's/^/#   /'
        echo "# each message is preceded by '# lsn <lsn> xid <xid>' from pg_logical_slot_get_binary_changes"
        sql -At -F ' ' -c "SELECT lsn, xid, encode(data, 'hex') FROM pg_logical_slot_get_binary_changes('slot', NULL, NULL, $OPTS$extra)" \
            | while read -r lsn xid hex; do
                echo "# lsn $lsn xid $xid"
                echo "$hex"
            done
    } >"$out.tmp"
    mv "$out.tmp" "$out"
    echo "wrote $out ($(grep -vc '^#' "$out") messages)"
}

mkdir -p "$OUT_DIR"

# Schema first, so that its DDL is drained before any scenario starts.
sql >/dev/null <<'SQL'
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, note text);
CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint);
ALTER TABLE accounts REPLICA IDENTITY FULL;
-- EXTERNAL: stored out of line and uncompressed, so a few kB is enough to be
-- TOASTed and then reported as 'u' when an UPDATE leaves it alone.
CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE orders (id serial PRIMARY KEY, item text);
CREATE TABLE order_lines (id serial PRIMARY KEY, order_id int REFERENCES orders(id), qty int);
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE moods (id int PRIMARY KEY, m mood, p posint);
CREATE TABLE events (id bigint PRIMARY KEY, payload text);
CREATE TABLE bins (id int PRIMARY KEY, n int, b bytea);
CREATE PUBLICATION pub FOR ALL TABLES;
SELECT 1 FROM pg_create_logical_replication_slot('slot', 'pgoutput');
INSERT INTO docs VALUES (1, 'first', repeat('0123456789abcdef', 1024));
INSERT INTO orders (item) VALUES ('apple'), ('pear');
INSERT INTO order_lines (order_id, qty) VALUES (1, 3), (2, 5);
SQL

capture insert "two inserts in one transaction, the second with a NULL column" <<'SQL'
BEGIN;
INSERT INTO users VALUES (1, 'alice', 'first user');
INSERT INTO users VALUES (2, 'bob', NULL);
COMMIT;
SQL

capture update_default "update of a non-key column under the default replica identity (no old tuple)" <<'SQL'
UPDATE users SET name = 'alicia' WHERE id = 1;
SQL

capture update_key "update that changes the primary key (old key sent as a K tuple)" <<'SQL'
UPDATE users SET id = 10 WHERE id = 1;
SQL

capture update_full "update under REPLICA IDENTITY FULL (whole old row sent as an O tuple)" <<'SQL'
INSERT INTO accounts VALUES (1, 'carol', 100);
UPDATE accounts SET balance = 250 WHERE id = 1;
SQL

capture update_toast "update that leaves a large out-of-line TOASTed column unchanged (sent as 'u')" <<'SQL'
UPDATE docs SET title = 'second' WHERE id = 1;
SQL

capture delete_default "delete under the default replica identity (K tuple with only the key)" <<'SQL'
DELETE FROM users WHERE id = 10;
SQL

capture delete_full "delete under REPLICA IDENTITY FULL (O tuple with the whole row)" <<'SQL'
DELETE FROM accounts WHERE id = 1;
SQL

capture truncate "truncate of two tables with RESTART IDENTITY CASCADE" <<'SQL'
TRUNCATE orders, order_lines RESTART IDENTITY CASCADE;
SQL

capture type "insert into a table with an enum and a domain column (Type messages)" <<'SQL'
INSERT INTO moods VALUES (1, 'happy', 42);
SQL

capture add_column "insert, ALTER TABLE ADD COLUMN, insert: a second Relation message mid-stream" <<'SQL'
INSERT INTO users VALUES (3, 'dave', NULL);
ALTER TABLE users ADD COLUMN email text;
INSERT INTO users VALUES (4, 'erin', 'n', 'erin@example.com');
SQL

capture message_transactional "a transactional logical message next to an insert" <<'SQL'
BEGIN;
INSERT INTO events VALUES (1, 'e1');
SELECT pg_logical_emit_message(true, 'sluice', '{"tenant":"a","type":"x","data":{}}');
COMMIT;
SQL

capture message_nontransactional "a non-transactional logical message on its own" <<'SQL'
SELECT pg_logical_emit_message(false, 'sluice', 'not in a transaction');
SQL

capture origin "an insert committed under a replication origin" <<'SQL'
SELECT pg_replication_origin_create('sluice_origin');
SELECT pg_replication_origin_session_setup('sluice_origin');
BEGIN;
SELECT pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-02 03:04:05+00');
INSERT INTO events VALUES (2, 'from elsewhere');
COMMIT;
SELECT pg_replication_origin_session_reset();
SQL

capture binary "insert decoded with the 'binary' option: 'b' datums" ",'binary','true'" <<'SQL'
INSERT INTO bins VALUES (1, 7, '\xdeadbeef');
SQL

echo "fixtures in $OUT_DIR"
