#!/usr/bin/env bash
# Consumer-group benchmark (issue 19): receive + ack throughput of 4 workers
# in batches of 100 (ordering none, and by subject over 1,000 subjects), and
# commit -> receive latency with a waiting long poll at 1k events/s.
# Usage: scripts/bench-groups.sh [--events 200000] [--subjects 1000] [--workers 4]
#        [--batch 100] [--rate 1000] [--seconds 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench groups -- "$@"
