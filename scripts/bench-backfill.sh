#!/usr/bin/env bash
# Backfill benchmark: snapshot rows/s of a running sluice against a raw COPY
# read of the same table, and live-change latency with and without a
# backfill running, in one run.
# Usage: scripts/bench-backfill.sh [--rows N] [--chunk N] [--rate R]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench backfill -- "$@"
