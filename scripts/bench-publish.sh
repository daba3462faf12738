#!/usr/bin/env bash
# HTTP publish benchmark (issue 20): POST /v1/events throughput with 8
# concurrent clients at batch 1 and batch 100, against direct emit+commit
# transactions on the same Postgres, and publish -> SSE receipt latency.
# Usage: scripts/bench-publish.sh [--clients 8] [--batch 100] [--seconds 10] [--rate 500]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench publish -- "$@"
