#!/usr/bin/env bash
# WebSocket benchmark: commit-to-receipt latency of events on a WebSocket
# subscription at steady rates of single-row transactions, next to the raw
# floor (pg_recvlogical with test_decoding) measured in the same run; then
# N idle, authenticated and subscribed WebSocket connections over 100
# tenants: the server's RSS per connection, and a check that they are live.
# Usage: scripts/bench-ws.sh [--rate 1000 | --rates 1000,5000] [--seconds 10] [--writers 4]
#        [--separate-state] [--connections 10000] [--open-batch 500] [--reach-tenants 5]
#        [--breakdown] [--skip-latency] [--skip-memory]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench ws -- "$@"
