#!/usr/bin/env bash
# Streaming benchmark: one large transaction (default 2,000,000 rows) with
# logical_decoding_work_mem = 64kB, read streamed (pgoutput protocol 2+) and
# whole (protocol 1), alternating in one run: COMMIT -> last event in the
# log, and Sluice's peak RSS.
# Usage: scripts/bench-streaming.sh [--major 16] [--rows N] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
major=16
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --major) major=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
SLUICE_PG_BIN="$(scripts/install-postgres.sh "$major" | tail -n 1)"
export SLUICE_PG_BIN
exec cargo bench --bench streaming -- "${args[@]}"
