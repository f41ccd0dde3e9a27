#!/usr/bin/env bash
# Benchmarks (not tests): builds release binaries, starts PostgreSQL (if
# needed), the Stripe simulator and the service on loopback, then measures:
#  1. payment creation with the simulator answering after 300 ms, 1000
#     concurrent clients: payments/s against the ideal (clients / latency),
#     p50 and p99 latency, peak RSS of the service;
#  2. GET /v1/customer/{customerID} over REST and over gRPC, against
#     `pgbench -S` on the same PostgreSQL, as a ratio;
#  3. notifications: the relay's lag when the payment load ends (the relay
#     runs inside serve), then the notifier mailing the queued events into
#     aiosmtpd (mails/s).
# Results are printed as JSON lines and a Markdown table (see BENCHMARKS.md).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"
SECONDS_PER_RUN="${BENCH_SECONDS:-20}"
CLIENTS="${BENCH_CLIENTS:-1000}"
READERS="${BENCH_READERS:-64}"
ulimit -n 65536 2>/dev/null || true

ensure_postgres
ensure_pytools
log "building release binaries"
cargo build --release --locked --bins -q
cargo bench --locked --bench loadgen --no-run -q 2>/dev/null
LOADGEN=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
BIN="$ROOT/target/release"

DB=ap_bench
psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB" -qc "CREATE DATABASE $DB" >/dev/null
DB_URL="${PG_ADMIN_URL%/*}/$DB"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

SIM_PORT=12199 JSON=18480 RPC=18481
"$BIN/stripe-sim" --port $SIM_PORT \
  --faults '[{"method":"POST","path":"/v1/payment_intents","latency_ms":300}]' >target/bench-sim.log 2>&1 &
pids+=($!)
for _ in $(seq 50); do port_open 127.0.0.1 $SIM_PORT && break; sleep 0.1; done

export DATABASE_URL="$DB_URL" STRIPE_KEY=sk_test_bench_key STRIPE_API_BASE="http://127.0.0.1:$SIM_PORT" \
  JSON_PORT="127.0.0.1:$JSON" RPC_PORT="127.0.0.1:$RPC" RUST_LOG=warn DB_MAX_CONNECTIONS="${BENCH_DB_CONNECTIONS:-40}"
"$BIN/amazing-payments" migrate >/dev/null
KEY=$("$BIN/amazing-payments" apikey create --name bench 2>/dev/null)
"$BIN/amazing-payments" serve >target/bench-service.log 2>&1 &
SERVICE=$!
pids+=($SERVICE)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$JSON/v1/healthcheck" >/dev/null && break; sleep 0.1; done
CUSTOMER=$(curl -s -X POST "http://127.0.0.1:$JSON/v1/customer" -H "Authorization: Bearer $KEY" \
  -d '{"name": "Bench", "email": "bench@example.com"}' | sed -E 's/.*"customerID":"([0-9]+)".*/\1/')

log "payment creation: $CLIENTS clients, Stripe answering after 300 ms, ${SECONDS_PER_RUN}s"
CREATE=$("$LOADGEN" create-payment "http://127.0.0.1:$JSON" "$KEY" "$CLIENTS" "$SECONDS_PER_RUN" "$CUSTOMER")
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVICE/status")
echo "$CREATE"
LAG=$(psql "$DB_URL" -Atc "SELECT count(*) FILTER (WHERE published_at IS NULL), count(*) FROM notify.outbox")
sleep 2
LAG_2S=$(psql "$DB_URL" -Atc "SELECT count(*) FROM notify.outbox WHERE published_at IS NULL")
echo "{\"outbox_unpublished_at_end\": ${LAG%%|*}, \"outbox_events\": ${LAG##*|}, \"unpublished_2s_later\": $LAG_2S}"

curl -s -X DELETE "http://127.0.0.1:$SIM_PORT/_sim/faults" >/dev/null
log "GET customer: $READERS clients, ${SECONDS_PER_RUN}s each over REST and gRPC"
REST=$("$LOADGEN" get-customer-rest "http://127.0.0.1:$JSON" "$KEY" "$READERS" "$SECONDS_PER_RUN" "$CUSTOMER")
echo "$REST"
GRPC=$("$LOADGEN" get-customer-grpc "http://127.0.0.1:$RPC" "$KEY" "$READERS" "$SECONDS_PER_RUN" "$CUSTOMER")
echo "$GRPC"

# The service's pool would count against PostgreSQL's max_connections.
kill "$SERVICE"; wait "$SERVICE" 2>/dev/null || true

SMTP_PORT=12525
rm -rf target/bench-maildir && mkdir -p target/bench-maildir/{cur,new,tmp}
target/pytools/bin/python -m aiosmtpd -n -l 127.0.0.1:$SMTP_PORT -c aiosmtpd.handlers.Mailbox target/bench-maildir \
  >target/bench-smtp.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do port_open 127.0.0.1 $SMTP_PORT && break; sleep 0.1; done
QUEUED=$(psql "$DB_URL" -Atc "SELECT count(*) FROM notify.message")
MAILS=$(psql "$DB_URL" -Atc "SELECT count(*) FROM notify.message WHERE type = 'payment.succeeded'")
log "notifier: $QUEUED queued events ($MAILS to mail) into aiosmtpd"
START_NS=$(date +%s%N)
SMTP_URL="smtp://127.0.0.1:$SMTP_PORT" NOTIFY_INTERVAL=0.05 "$BIN/amazing-payments" notifier >target/bench-notifier.log 2>&1 &
NOTIFIER=$!
pids+=($NOTIFIER)
while [ "$(psql "$DB_URL" -Atc "SELECT count(*) FROM notify.message")" != 0 ]; do sleep 0.2; done
END_NS=$(date +%s%N)
NOTIFIER_RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$NOTIFIER/status")
kill "$NOTIFIER"; wait "$NOTIFIER" 2>/dev/null || true
DELIVERED=$(find target/bench-maildir/new -type f | wc -l)
NOTIFY="{\"queued\": $QUEUED, \"mailed\": $DELIVERED, \"seconds\": $(( (END_NS - START_NS) / 1000000 ))e-3, \"rss_kb\": $NOTIFIER_RSS_KB}"
echo "$NOTIFY"
log "pgbench -S: $READERS clients, ${SECONDS_PER_RUN}s"
psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS ap_pgbench" -qc "CREATE DATABASE ap_pgbench" >/dev/null
PGB_URL="${PG_ADMIN_URL%/*}/ap_pgbench"
pgbench -q -i -s 10 "$PGB_URL" >/dev/null 2>target/bench-pgbench.log || { cat target/bench-pgbench.log; exit 1; }
PGB=$(pgbench -S -c "$READERS" -j 2 -T "$SECONDS_PER_RUN" "$PGB_URL" 2>>target/bench-pgbench.log | awk '/^tps/ {print $3; exit}')
[ -n "$PGB" ] || { cat target/bench-pgbench.log; exit 1; }
echo "{\"mode\": \"pgbench -S\", \"tps\": $PGB}"

python3 - "$CREATE" "$REST" "$GRPC" "$PGB" "$RSS_KB" "$CLIENTS" "$NOTIFY" "$LAG" "$LAG_2S" <<'PY'
import json, sys
create, rest, grpc = (json.loads(a) for a in sys.argv[1:4])
pgb, rss_kb, clients = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
notify = json.loads(sys.argv[7])
lag, events = (int(x) for x in sys.argv[8].split("|"))
lag_2s = int(sys.argv[9])
ideal = clients / 0.3
print()
print("| measure | value |")
print("|---|---|")
print(f"| payments/s ({clients} clients, Stripe at 300 ms) | {create['rate_per_s']:.0f} of an ideal {ideal:.0f} ({100*create['rate_per_s']/ideal:.0f}%) |")
print(f"| payment creation p50 / p99 | {create['p50_ms']:.0f} ms / {create['p99_ms']:.0f} ms ({create['errors']} errors) |")
print(f"| service peak RSS | {rss_kb/1024:.0f} MiB |")
print(f"| GET customer, REST | {rest['rate_per_s']:.0f}/s, p50 {rest['p50_ms']:.2f} ms, p99 {rest['p99_ms']:.2f} ms |")
print(f"| GET customer, gRPC | {grpc['rate_per_s']:.0f}/s, p50 {grpc['p50_ms']:.2f} ms, p99 {grpc['p99_ms']:.2f} ms |")
print(f"| pgbench -S | {pgb:.0f} tps |")
print(f"| REST / pgbench, gRPC / pgbench | {rest['rate_per_s']/pgb:.2f}, {grpc['rate_per_s']/pgb:.2f} |")
print(f"| outbox events unpublished when the load stops / 2 s later | {lag} of {events} / {lag_2s} |")
print(f"| notifier: queued events handled/s (mails/s) | {notify['queued']/notify['seconds']:.0f} ({notify['mailed']/notify['seconds']:.0f}), {notify['mailed']} mails, peak RSS {notify['rss_kb']/1024:.0f} MiB |")
PY
