#!/usr/bin/env bash
# Webhook delivery benchmark: deliveries/s of a burst of events to several
# endpoints on a local receiver, and commit-to-first-attempt latency at a
# steady rate of single-row transactions.
# Usage: scripts/bench-webhooks.sh [--events 20000] [--endpoints 4] [--rate 200] [--seconds 10]
#        [--batch 500] [--max-wait 600] [--separate-state] [--no-sample]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench webhooks -- "$@"
