#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries (initdb, pg_ctl, postgres,
# pg_recvlogical, psql; major version 14 or newer) are on this machine, and
# prints the directory holding them as the LAST line of stdout. Everything
# else goes to stderr, so callers can do
#
#     SLUICE_PG_BIN="$(scripts/ensure-postgres.sh | tail -n 1)"
#
# Search order (the same as sluice::localpg):
#   1. $SLUICE_PG_BIN, when set: that directory (or its bin/ subdirectory).
#      An explicit setting is never overridden by another installation: when
#      it is wrong and PostgreSQL is installed elsewhere, the script fails and
#      says where; it installs only when no PostgreSQL is found at all.
#   2. /usr/lib/postgresql/<major>/bin, the highest major >= 14 (Debian/Ubuntu).
#   3. the directory of `initdb` on PATH.
# When nothing is found it installs the Debian packages (apt-get install
# postgresql postgresql-contrib; as root, or through sudo) and searches again.
# When running as root it also makes sure the `postgres` OS user exists:
# initdb and postgres refuse to run as root, so the throwaway clusters run as
# that user.
#
# Idempotent; when the binaries are already there it makes no apt call and
# returns in milliseconds.
set -euo pipefail

# Keep the real stdout for the one result line; everything else to stderr.
exec 3>&1 1>&2

MIN_MAJOR=14
REQUIRED=(initdb pg_ctl postgres pg_recvlogical psql)

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }
die() {
    printf 'ensure-postgres: error: %s\n' "$*" >&2
    exit 1
}

# Names of the required binaries missing from (or not executable in) dir $1.
missing_in() {
    local dir=$1 b missing=()
    for b in "${REQUIRED[@]}"; do
        [[ -f $dir/$b && -x $dir/$b ]] || missing+=("$b")
    done
    echo "${missing[*]}"
}

# Major version of the initdb in dir $1 ("initdb (PostgreSQL) 15.6 (...)").
major_of() {
    local out
    out=$("$1/initdb" --version 2>/dev/null) || return 1
    [[ $out =~ \(PostgreSQL\)\ ([0-9]+) ]] || return 1
    echo "${BASH_REMATCH[1]}"
}

# Sets FOUND (absolute, symlinks resolved) and returns 0 when dir $1 is
# usable; otherwise sets REASON and returns 1.
usable() {
    local dir=$1 missing major
    missing=$(missing_in "$dir")
    if [[ -n $missing ]]; then
        REASON="$dir lacks: $missing"
        return 1
    fi
    if ! major=$(major_of "$dir"); then
        REASON="$dir/initdb --version did not report a PostgreSQL version"
        return 1
    fi
    if ((major < MIN_MAJOR)); then
        REASON="$dir holds PostgreSQL $major, older than $MIN_MAJOR"
        return 1
    fi
    FOUND=$(cd "$dir" && pwd -P)
}

# $SLUICE_PG_BIN or its bin/ subdirectory: sets FOUND and returns 0, or sets
# REASON and returns 1.
find_explicit() {
    FOUND= REASON=
    local reason_self
    if usable "$SLUICE_PG_BIN"; then return 0; fi
    reason_self=$REASON
    if [[ -d $SLUICE_PG_BIN/bin ]] && usable "$SLUICE_PG_BIN/bin"; then return 0; fi
    REASON="SLUICE_PG_BIN is set and $reason_self"
    return 1
}

# The default places: sets FOUND to the bin dir and returns 0, or sets
# REASON (what was looked at) and returns 1.
find_default() {
    FOUND= REASON=
    local dir major
    # Highest major version first.
    while read -r major; do
        ((major >= MIN_MAJOR)) || continue
        if usable "/usr/lib/postgresql/$major/bin"; then return 0; fi
    done < <(
        shopt -s nullglob
        for dir in /usr/lib/postgresql/*/bin; do
            major=${dir#/usr/lib/postgresql/}
            major=${major%/bin}
            if [[ $major =~ ^[0-9]+$ ]]; then echo "$major"; fi
        done | sort -rn
    )

    local initdb
    if initdb=$(command -v initdb 2>/dev/null) && [[ -n $initdb ]]; then
        if usable "$(dirname "$(readlink -f "$initdb")")"; then return 0; fi
        REASON="no PostgreSQL >= $MIN_MAJOR in /usr/lib/postgresql/*/bin, and $REASON"
        return 1
    fi
    REASON="no PostgreSQL >= $MIN_MAJOR in /usr/lib/postgresql/*/bin and no initdb on PATH"
    return 1
}

install_packages() {
    local -a as_root
    if [[ $(id -u) -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        # Prompt for a password only when someone can answer.
        if [[ -t 0 ]]; then as_root=(sudo); else as_root=(sudo -n); fi
    else
        die "PostgreSQL server binaries are missing ($REASON), and installing them needs root: run this script as root, install sudo, or install postgresql (>= $MIN_MAJOR) yourself and set SLUICE_PG_BIN to its bin dir"
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "PostgreSQL server binaries are missing ($REASON), and apt-get is not available to install them: install postgresql (>= $MIN_MAJOR) and set SLUICE_PG_BIN to its bin dir"

    log "PostgreSQL server binaries not found ($REASON); installing postgresql postgresql-contrib with apt-get"
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get -q update ||
        die "apt-get update failed"
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get -q install -y postgresql postgresql-contrib ||
        die "apt-get install -y postgresql postgresql-contrib failed"
}

# As root, the clusters run as the postgres OS user: make sure it exists.
ensure_postgres_user() {
    [[ $(id -u) -eq 0 ]] || return 0
    id -u postgres >/dev/null 2>&1 && return 0
    log "creating the postgres OS user (initdb and postgres refuse to run as root)"
    if command -v useradd >/dev/null 2>&1; then
        if getent group postgres >/dev/null 2>&1; then
            useradd --system --no-create-home --home-dir /var/lib/postgresql \
                --shell /bin/sh --gid postgres postgres
        else
            useradd --system --no-create-home --home-dir /var/lib/postgresql \
                --shell /bin/sh --user-group postgres
        fi
    elif command -v adduser >/dev/null 2>&1; then
        adduser --system --group --no-create-home --home /var/lib/postgresql \
            --shell /bin/sh postgres
    else
        die "the postgres OS user does not exist and neither useradd nor adduser is available to create it"
    fi
    id -u postgres >/dev/null 2>&1 || die "could not create the postgres OS user"
}

find_bin_dir() {
    if [[ -n ${SLUICE_PG_BIN:-} ]]; then find_explicit; else find_default; fi
}

if ! find_bin_dir; then
    if [[ -n ${SLUICE_PG_BIN:-} ]]; then
        # Installing cannot fix a wrong setting when PostgreSQL is already here.
        explicit_reason=$REASON
        if find_default; then
            die "$explicit_reason; PostgreSQL binaries are in $FOUND: point SLUICE_PG_BIN there or unset it"
        fi
        REASON=$explicit_reason
    fi
    install_packages
    find_bin_dir ||
        die "PostgreSQL server binaries still not usable after installing postgresql: $REASON"
fi
ensure_postgres_user
log "PostgreSQL server binaries: $FOUND ($("$FOUND/postgres" --version))"
echo "$FOUND" >&3
