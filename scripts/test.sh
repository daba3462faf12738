#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs PostgreSQL server
# binaries when missing (the tests start their own throwaway clusters),
# checks formatting and clippy (warnings are errors), then runs every unit
# and integration test on the default PostgreSQL (Debian's, found by
# scripts/ensure-postgres.sh; 15 on Debian 12).
#
# Then the compatibility subset (tests/compat-subset.txt) runs against each
# other supported major, its server binaries from
# scripts/install-postgres.sh <major>:
#   SLUICE_PG_COMPAT unset      every major of 14..18 but the default one
#   SLUICE_PG_COMPAT="16 18"    just those
#   SLUICE_PG_COMPAT=""         none (a notice says it was skipped)
set -euo pipefail
cd "$(dirname "$0")/.."

SUPPORTED_MAJORS=(14 15 16 17 18)
SUBSET_FILE=tests/compat-subset.txt

# Read before anything runs; not passed on to the tests (Sluice takes
# SLUICE_* variables for its configuration).
compat_set=${SLUICE_PG_COMPAT+set}
compat=${SLUICE_PG_COMPAT-}
unset SLUICE_PG_COMPAT

# Major version of the `postgres` in dir $1, and its full version line.
major_of() { [[ $("$1/postgres" --version) =~ \(PostgreSQL\)\ ([0-9]+) ]] && echo "${BASH_REMATCH[1]}"; }

# The subset, checked before the long full run so that a bad list fails
# fast: SUBSET_BINARIES in file order, SUBSET_TESTS[binary] = "name name …".
declare -A SUBSET_TESTS=()
SUBSET_BINARIES=()
SUBSET_COUNT=0
while read -r binary name extra; do
    [[ -z $binary || $binary == \#* ]] && continue
    [[ -n $name && -z $extra ]] || {
        echo "$SUBSET_FILE: expected \"<test binary> <test name>\", got: $binary $name $extra" >&2
        exit 1
    }
    if [[ $binary != localpg && ! -f tests/$binary.rs ]]; then
        echo "$SUBSET_FILE: no test binary $binary (tests/$binary.rs)" >&2
        exit 1
    fi
    [[ -n ${SUBSET_TESTS[$binary]+x} ]] || SUBSET_BINARIES+=("$binary")
    SUBSET_TESTS[$binary]="${SUBSET_TESTS[$binary]:-} $name"
    SUBSET_COUNT=$((SUBSET_COUNT + 1))
done <"$SUBSET_FILE"

SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
export SLUICE_PG_BIN
DEFAULT_MAJOR=$(major_of "$SLUICE_PG_BIN")
echo "full suite: $("$SLUICE_PG_BIN/postgres" --version) in $SLUICE_PG_BIN" >&2

if [[ -z $compat_set ]]; then
    compat=
    for major in "${SUPPORTED_MAJORS[@]}"; do
        [[ $major == "$DEFAULT_MAJOR" ]] || compat+="$major "
    done
fi
read -r -a COMPAT_MAJORS <<<"$compat"
for major in "${COMPAT_MAJORS[@]}"; do
    [[ " ${SUPPORTED_MAJORS[*]} " == *" $major "* ]] || {
        echo "SLUICE_PG_COMPAT: $major is not a supported major (${SUPPORTED_MAJORS[*]})" >&2
        exit 1
    }
done

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

if [[ ${#COMPAT_MAJORS[@]} -eq 0 ]]; then
    echo "compatibility subset: skipped (SLUICE_PG_COMPAT is empty); only PostgreSQL $DEFAULT_MAJOR was tested" >&2
    exit 0
fi

# `cargo test` of one binary of the subset, with the libtest arguments $2….
# The same profile and features as the full run: nothing is rebuilt.
cargo_test_of() {
    local binary=$1
    shift
    if [[ $binary == localpg ]]; then
        cargo test --locked -p localpg --lib -- "$@"
    else
        cargo test --locked --test "$binary" -- "$@"
    fi
}

# Every name of the subset must be a test of its binary: with --exact a
# misspelt or renamed test would otherwise just run nothing.
for binary in "${SUBSET_BINARIES[@]}"; do
    read -r -a names <<<"${SUBSET_TESTS[$binary]}"
    listed=$(cargo_test_of "$binary" --list --exact "${names[@]}" 2>/dev/null | grep -c ': test$' || true)
    if [[ $listed -ne ${#names[@]} ]]; then
        echo "$SUBSET_FILE: of its ${#names[@]} tests of $binary, only $listed exist: ${names[*]}" >&2
        exit 1
    fi
done

declare -A RESULT=()
failed=()
for major in "${COMPAT_MAJORS[@]}"; do
    bin=$(scripts/install-postgres.sh "$major" | tail -n 1)
    version=$("$bin/postgres" --version)
    echo >&2
    echo "=== compatibility subset ($SUBSET_COUNT tests of $SUBSET_FILE) on $version, server binaries $bin ===" >&2
    start=$SECONDS
    status=passed
    for binary in "${SUBSET_BINARIES[@]}"; do
        read -r -a names <<<"${SUBSET_TESTS[$binary]}"
        if ! SLUICE_PG_BIN=$bin cargo_test_of "$binary" --exact "${names[@]}"; then
            status="FAILED in $binary"
        fi
    done
    elapsed=$((SECONDS - start))
    RESULT[$major]="$version: $status in $((elapsed / 60))m$((elapsed % 60))s"
    echo "=== $version: compatibility subset $status in ${elapsed}s ===" >&2
    [[ $status == passed ]] || failed+=("$major")
done

echo >&2
echo "compatibility subset, per PostgreSQL major (the full suite ran on $DEFAULT_MAJOR):" >&2
for major in "${COMPAT_MAJORS[@]}"; do
    echo "  ${RESULT[$major]}" >&2
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "compatibility subset failed on PostgreSQL ${failed[*]}" >&2
    exit 1
fi
