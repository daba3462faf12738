#!/usr/bin/env bash
# Policy routing benchmark (issue 18): N SSE subscribers of one tenant, each
# a different user under an `owner_id = claim sub` row policy; routing cost
# per change with 10 versus N open, a per-user check of the rows received,
# and commit -> receipt latency at 1k changes/s.
# Usage: scripts/bench-sse-policy.sh [--subscribers 10000] [--batch 1000] [--rounds 10]
#        [--rate 1000] [--seconds 10] [--writers 4] [--open-batch 500] [--no-policy]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench sse_policy -- "$@"
