#!/usr/bin/env bash
# The run command: starts the service on its embedded defaults.
# - PostgreSQL: DB_* / DATABASE_URL if something answers there, else a private
#   cluster under target/pg;
# - Stripe: STRIPE_KEY (and STRIPE_API_BASE) if set, else the Stripe simulator;
# - applies migrations, makes a demo API key, prints where everything is.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_postgres
if [ -z "${DATABASE_URL:-}" ]; then
  export DB_HOST="$PG_HOST" DB_PORT="$PG_PORT" DB_USER="$PG_USER" DB_PASS="${PG_PASS:-}"
fi

log "building"
cargo build --locked --bins -q
BIN="$ROOT/target/debug"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if [ -z "${STRIPE_KEY:-}" ]; then
  SIM_PORT="${STRIPE_SIM_PORT:-12111}"
  export SIM_PORT
  "$BIN/stripe-sim" --port "$SIM_PORT" >"$ROOT/target/stripe-sim.log" 2>&1 &
  pids+=($!)
  # The simulator speaks HTTP/2 on plain http, as Stripe does over TLS.
  export STRIPE_KEY=sk_test_local_simulator STRIPE_API_BASE="http://127.0.0.1:$SIM_PORT" STRIPE_HTTP2="${STRIPE_HTTP2:-always}"
  for _ in $(seq 50); do port_open 127.0.0.1 "$SIM_PORT" && break; sleep 0.1; done
  log "Stripe simulator on $STRIPE_API_BASE (set STRIPE_KEY to use Stripe)"
fi

JSON="${JSON_PORT:-:8080}"; RPC="${RPC_PORT:-:8081}"
if [ -n "${SIM_PORT:-}" ] && [ -z "${STRIPE_WEBHOOK_SECRET:-}" ]; then
  # The simulator sends its events to the service, signed with this secret.
  STRIPE_WEBHOOK_SECRET=$(curl -s -X POST "$STRIPE_API_BASE/v1/webhook_endpoints" -H "Authorization: Bearer $STRIPE_KEY" \
    -d "url=http://127.0.0.1:${JSON##*:}/v1/webhooks/stripe" -d "enabled_events[]=*" | sed -E 's/.*"secret":"([^"]+)".*/\1/')
  export STRIPE_WEBHOOK_SECRET
  log "webhooks: the simulator sends every event to /v1/webhooks/stripe"
fi

"$BIN/amazing-payments" migrate >/dev/null
DEMO_KEY="$("$BIN/amazing-payments" apikey create --name demo 2>/dev/null)"

cat >&2 <<TXT

  amazing-payments
  REST      http://localhost:${JSON##*:}   e.g. curl -H "Authorization: Bearer \$KEY" http://localhost:${JSON##*:}/v1/customer
  gRPC      localhost:${RPC##*:} (server reflection on)
  API docs  http://localhost:${JSON##*:}/docs   (OpenAPI: /openapi.json)
  demo API key (shown once):
TXT
echo "$DEMO_KEY"
echo >&2

"$BIN/amazing-payments" serve &
pids+=($!)
wait "${pids[-1]}"
