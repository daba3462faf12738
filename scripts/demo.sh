#!/usr/bin/env bash
# Sluice's main job on an embedded default: a throwaway Postgres, a demo
# table, a short stream of changes, and the events printed as they arrive.
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
exec cargo run --release --quiet -- demo "$@"
