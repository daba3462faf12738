#!/usr/bin/env bash
# Sluice's main job on an embedded default: a throwaway Postgres, a demo
# table, the HTTP API with an anon key per tenant, a short stream of
# changes, and the events printed as each tenant's SSE subscriber receives
# them. Pass --keep-running to keep capturing after the scripted changes.
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
if [ ! -x target/release/sluice ]; then
  echo "demo: the first run compiles Sluice in release mode (several minutes on a small machine); cargo shows its progress below" >&2
fi
cargo build --release --locked --bin sluice
exec target/release/sluice demo "$@"
