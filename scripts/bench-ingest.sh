#!/usr/bin/env bash
# Ingest benchmark: Sluice draining a replication backlog into its log versus
# pg_recvlogical draining the same backlog to /dev/null, in one run.
# Usage: scripts/bench-ingest.sh [--rows N] [--separate-state]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench ingest -- "$@"
