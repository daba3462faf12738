#!/usr/bin/env bash
# Live-query benchmark (issue "live queries"): time to `synced` of a
# snapshot=true SSE subscription for 10,000 and 100,000 rows against a raw
# SELECT of the same rows on the same Postgres, and 1,000 subscribers
# starting at once on one table (source reads, time until all are synced).
# Usage: scripts/bench-live.sh [--rows 10000,100000] [--rounds 5] [--subscribers 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench live -- "$@"
