#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs PostgreSQL server
# binaries when missing (the tests start their own throwaway clusters),
# checks formatting and clippy (warnings are errors), then runs every unit
# and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
echo "using PostgreSQL binaries in $SLUICE_PG_BIN" >&2
# The independent SSE client the tests drive Sluice with (PyPI).
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -r tests/clients/requirements.txt >&2
if [ -z "${MONGODB_URI:-}" ]; then
  echo "MONGODB_URI is not set: the live MongoDB tests will print SKIPPED (docker/mongo-replica-set.yml starts a replica set for them)" >&2
fi
# Style is part of the suite: unformatted code or a clippy warning fails it.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
