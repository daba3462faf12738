#!/usr/bin/env bash
# SSE latency benchmark: commit-to-receipt latency of events on an SSE stream
# at steady rates of single-row transactions, next to the raw floor
# (pg_recvlogical with test_decoding) measured in the same run.
# Usage: scripts/bench-sse-latency.sh [--rates 1000,5000] [--seconds 10] [--writers 4] [--separate-state]
#        scripts/bench-sse-latency.sh --sustained [--fraction 0.8] [--probe-seconds 5] [--tenants 10] [--seconds 10] [--writers 8] [--separate-state]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench sse_latency -- "$@"
