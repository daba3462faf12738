#!/usr/bin/env bash
# Backfill benchmark: snapshot rows/s of a running sluice against a raw COPY
# read of the same table (in turns, median of --rounds), and live-change
# latency with and without a backfill running. Runs twice: the log in the
# captured database (the default), then in a database of its own.
# Usage: scripts/bench-backfill.sh [--rows N] [--chunk N] [--rate R] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
cargo bench --bench backfill -- "$@"
cargo bench --bench backfill -- --own-state-db "$@"
