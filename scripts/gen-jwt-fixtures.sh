#!/usr/bin/env bash
# Regenerates the RS256 key pairs used by tests/auth.rs into
# tests/fixtures/jwt/:
#
#   rs256_private.pem        signs the test tokens the server must accept
#   rs256_public.pem         its public half, configured as auth.jwt_rs256_public_key
#   rs256_other_private.pem  a second, unrelated key: tokens it signs must be
#                            refused (bad signature)
#   rs1024_public.pem        a 1024-bit public key, which must be refused at start
#
# These are test keys only: they are committed on purpose and protect nothing.
#
# Usage: scripts/gen-jwt-fixtures.sh
# Env:   OUT_DIR (default <repo>/tests/fixtures/jwt)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$REPO_ROOT/tests/fixtures/jwt}

command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
mkdir -p "$OUT_DIR"

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$OUT_DIR/rs256_private.pem" 2>/dev/null
openssl pkey -in "$OUT_DIR/rs256_private.pem" -pubout -out "$OUT_DIR/rs256_public.pem"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$OUT_DIR/rs256_other_private.pem" 2>/dev/null
# Too short to be accepted (the server refuses it at start).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 2>/dev/null | openssl pkey -pubout -out "$OUT_DIR/rs1024_public.pem"

echo "wrote rs256_private.pem, rs256_public.pem, rs256_other_private.pem, rs1024_public.pem in $OUT_DIR"
