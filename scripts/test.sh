#!/usr/bin/env bash
# The test command: builds everything and runs every test (unit, integration
# against a real PostgreSQL and the Stripe simulator, end-to-end against the
# built binaries). Starts PostgreSQL if none answers.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_postgres
export DATABASE_URL="$PG_ADMIN_URL"
ensure_pytools
export PYTOOLS="$ROOT/target/pytools"
ensure_debian_parts

# Databases left by earlier runs (each test makes its own).
if command -v psql >/dev/null; then
  psql "$DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'ap\_test\_%'" 2>/dev/null |
    while read -r db; do psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
fi

log "building"
cargo build --workspace --all-targets --locked

log "testing"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
