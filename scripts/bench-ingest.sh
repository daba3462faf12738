#!/usr/bin/env bash
# Ingest benchmark: Sluice draining a replication backlog into its log versus
# pg_recvlogical (to /dev/null) and the null reader (decode and discard) draining
# the same backlog, in one run.
# Usage: scripts/bench-ingest.sh [--rows N] [--tx-rows N] [--runs N] [--separate-state] [--tuned]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench ingest -- "$@"
