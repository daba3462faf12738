#!/usr/bin/env bash
# SSE fan-out benchmark: N open SSE connections over 100 tenants; the
# server's RSS per connection, and the cost of routing one tenant's changes
# with 10 versus N subscribers open.
# Usage: scripts/bench-sse-fanout.sh [--connections 10000] [--batch 1000] [--rounds 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench sse_fanout -- "$@"
