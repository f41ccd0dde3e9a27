#!/usr/bin/env bash
# Benchmarks (not tests): builds release binaries, starts PostgreSQL (if
# needed), the Stripe simulator and the service on loopback, then measures:
#  1. payment creation with the simulator answering after 300 ms: at the
#     rated load (1000 clients), at half of it (our own overhead, from each
#     answer's Server-Timing), and at twice it (load shedding); rate against
#     the ideal (clients / latency), latencies, peak RSS of the service;
#  2. a shop's mix (reads, automatic and manual payments, captures, partial
#     refunds) over many customers;
#  3. GET /v1/customer/{customerID} over REST and over gRPC, against
#     `pgbench -S` on the same PostgreSQL, and payment creation against a
#     one-row INSERT per transaction (`pgbench`, the commit ceiling);
#  4. notifications: the relay's lag when the payment load ends (the relay
#     runs inside serve), then the notifier mailing the queued events into
#     aiosmtpd (mails/s).
# BENCH_ONLY=create stops after the rated run; BENCH_ONLY=reads runs the REST reads alone;
# BENCH_ONLY=scaleout compares reads from one instance and from three behind HAProxy, without and
# with a read replica (a primary and a standby of its own). With BENCH_PROFILE=1, `perf` samples the service during the rated run and
# its hottest symbols go to target/bench-profile.txt.
# Results are printed as JSON lines and a Markdown table (see BENCHMARKS.md).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"
SECONDS_PER_RUN="${BENCH_SECONDS:-20}"
CLIENTS="${BENCH_CLIENTS:-1000}"
READERS="${BENCH_READERS:-64}"
CUSTOMER_COUNT="${BENCH_CUSTOMERS:-100}"
ulimit -n 65536 2>/dev/null || true

ensure_postgres
ensure_pytools
log "building release binaries"
cargo build --release --locked --bins -q
cargo bench --locked --bench loadgen --no-run -q 2>/dev/null
LOADGEN=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
# BENCH_BIN: the service and simulator binaries of another build (an older
# commit's), driven by this load generator, to compare two versions.
BIN="${BENCH_BIN:-$ROOT/target/release}"

DB=ap_bench
psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB" -qc "CREATE DATABASE $DB" >/dev/null
DB_URL="${PG_ADMIN_URL%/*}/$DB"
pids=()
PAIR=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$PAIR" ]; then
    for c in standby primary; do as_pg "$PGBIN/pg_ctl" -D "$PAIR/$c" -m immediate stop >/dev/null 2>&1 || true; done
    rm -rf "$PAIR"
  fi
}
trap cleanup EXIT
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# BENCH_ONLY=scaleout runs on a primary and a streaming standby of its own
# (initdb, then pg_basebackup), on ports 15432 and 15433.
if [ "${BENCH_ONLY:-}" = scaleout ]; then
  PGBIN="$(find_pg_bin)"
  PAIR="$(mktemp -d /tmp/ap-bench-pg.XXXXXX)"
  [ "$(id -u)" = 0 ] && chown postgres "$PAIR"
  pg_opts() { echo "-p $1 -k $PAIR -c listen_addresses=127.0.0.1 -c max_connections=300"; }
  log "a primary and a streaming standby for the scale-out runs"
  as_pg "$PGBIN/initdb" -D "$PAIR/primary" -U postgres -A trust -E UTF8 >/dev/null
  echo "host replication all 127.0.0.1/32 trust" >>"$PAIR/primary/pg_hba.conf"
  as_pg "$PGBIN/pg_ctl" -D "$PAIR/primary" -l "$PAIR/primary.log" -w -o "$(pg_opts 15432)" start >/dev/null
  as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p 15432 -U postgres -D "$PAIR/standby" -R -X stream -c fast
  as_pg "$PGBIN/pg_ctl" -D "$PAIR/standby" -l "$PAIR/standby.log" -w -o "$(pg_opts 15433)" start >/dev/null
  DB_URL="postgres://postgres@127.0.0.1:15432/$DB"
  READ_URL="postgres://postgres@127.0.0.1:15433/$DB"
fi

SIM_PORT=12199 JSON=18480 RPC=18481
"$BIN/stripe-sim" --port $SIM_PORT \
  --faults '[{"method":"POST","path":"/v1/payment_intents","latency_ms":300}]' >target/bench-sim.log 2>&1 &
SIM=$!
pids+=($SIM)
for _ in $(seq 50); do port_open 127.0.0.1 $SIM_PORT && break; sleep 0.1; done

export DATABASE_URL="$DB_URL" STRIPE_KEY=sk_test_bench_key STRIPE_API_BASE="http://127.0.0.1:$SIM_PORT" STRIPE_HTTP2="${STRIPE_HTTP2:-always}" \
  JSON_PORT="127.0.0.1:$JSON" RPC_PORT="127.0.0.1:$RPC" METRICS_PORT="${METRICS_PORT:-127.0.0.1:0}" RATE_LIMIT="${RATE_LIMIT:-off}" STRIPE_MAX_RPS="${STRIPE_MAX_RPS:-off}" RUST_LOG=warn DB_MAX_CONNECTIONS="${BENCH_DB_CONNECTIONS:-40}"
"$BIN/amazing-payments" migrate >/dev/null
KEY=$("$BIN/amazing-payments" apikey create --name bench 2>/dev/null)
"$BIN/amazing-payments" serve >target/bench-service.log 2>&1 &
SERVICE=$!
pids+=($SERVICE)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$JSON/v1/healthcheck" >/dev/null && break; sleep 0.1; done

log "creating $CUSTOMER_COUNT customers"
CUSTOMERS=$(for i in $(seq "$CUSTOMER_COUNT"); do
  curl -s -X POST "http://127.0.0.1:$JSON/v1/customer" -H "Authorization: Bearer $KEY" \
    -d "{\"name\": \"Bench $i\", \"email\": \"bench$i@example.com\"}" | sed -E 's/.*"customerID":"([0-9]+)".*/\1/'
  echo
done | paste -sd, -)

run() { "$LOADGEN" "$1" "http://127.0.0.1:$JSON" "$KEY" "$2" "$SECONDS_PER_RUN" "$CUSTOMERS"; }
# BENCH_ONLY=mixed: the shop's mix alone.
if [ "${BENCH_ONLY:-}" = mixed ]; then run mixed "$CLIENTS"; exit 0; fi
# CPU seconds (user + system) used so far by the given processes.
cpu_s() {
  local ticks=0 p
  for p in "$@"; do [ -r "/proc/$p/stat" ] && ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}
# BENCH_ONLY=scaleout: REST reads from one instance, then from three behind
# HAProxy (ops/haproxy/haproxy.cfg with these ports), same database.
if [ "${BENCH_ONLY:-}" = scaleout ]; then
  curl -s -X DELETE "http://127.0.0.1:$SIM_PORT/_sim/faults" >/dev/null
  log "REST reads, one instance"
  ONE=$(run get-customer-rest "$READERS")
  echo "$ONE"
  CFG=target/bench-haproxy.cfg
  sed -e "s/:8080\$/:18580/" -e "s/:8081 /:18581 /" \
      -e "s/:8180 /:$JSON /" -e "s/:8181 /:$RPC /" \
      -e "s/:8280 /:18680 /" -e "s/:8281 /:18681 /" \
      -e "s/:8380 /:18780 /" -e "s/:8381 /:18781 /" ops/haproxy/haproxy.cfg >"$CFG"
  instances=("$SERVICE")
  for p in 186 187; do
    JSON_PORT="127.0.0.1:${p}80" RPC_PORT="127.0.0.1:${p}81" SKIP_MIGRATIONS=true RECONCILER=false \
      "$BIN/amazing-payments" serve >"target/bench-service-$p.log" 2>&1 &
    pids+=($!)
    instances+=($!)
  done
  haproxy -db -f "$CFG" >target/bench-haproxy.log 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:18580/readyz" >/dev/null && break; sleep 0.1; done
  sleep 3
  log "REST reads, three instances behind HAProxy"
  THREE=$("$LOADGEN" get-customer-rest "http://127.0.0.1:18580" "$KEY" "$READERS" "$SECONDS_PER_RUN" "$CUSTOMERS")
  echo "$THREE"
  # The same, each instance reading from the standby (DATABASE_READ_URL).
  kill "${instances[@]}"
  wait "${instances[@]}" 2>/dev/null || true
  for p in 184 186 187; do
    JSON_PORT="127.0.0.1:${p}80" RPC_PORT="127.0.0.1:${p}81" METRICS_PORT="127.0.0.1:${p}90" SKIP_MIGRATIONS=true RECONCILER=false \
      DATABASE_READ_URL="$READ_URL" "$BIN/amazing-payments" serve >"target/bench-service-replica-$p.log" 2>&1 &
    pids+=($!)
  done
  for p in 184 186 187; do
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:${p}80/v1/healthcheck" | grep -q '"state":"up"' && break
      sleep 0.1
    done
  done
  sleep 3
  log "REST reads, one instance reading from the replica"
  echo "$(run get-customer-rest "$READERS")"
  log "REST reads, three instances behind HAProxy reading from the replica"
  "$LOADGEN" get-customer-rest "http://127.0.0.1:18580" "$KEY" "$READERS" "$SECONDS_PER_RUN" "$CUSTOMERS"
  curl -s "http://127.0.0.1:18480/v1/healthcheck"; echo
  # Where the reads went, over all three.
  for p in 184 186 187; do curl -s "http://127.0.0.1:${p}90/metrics"; done |
    awk '/^amazing_payments_db_reads_total/ {split($1, a, "\""); n[a[2]] += $2} END {for (t in n) printf "reads from the %s: %d\n", t, n[t]}'
  exit 0
fi
# BENCH_ONLY=reads: the REST reads alone, with the service's CPU per read.
if [ "${BENCH_ONLY:-}" = reads ]; then
  curl -s -X DELETE "http://127.0.0.1:$SIM_PORT/_sim/faults" >/dev/null
  C0=$(cpu_s "$SERVICE")
  run get-customer-rest "$READERS"
  C1=$(cpu_s "$SERVICE")
  echo "{\"service_cpu_seconds\": $(awk -v a="$C0" -v b="$C1" 'BEGIN {printf "%.1f", b - a}')}"
  exit 0
fi

log "payment creation: $CLIENTS clients, Stripe answering after 300 ms, ${SECONDS_PER_RUN}s"
if [ "${BENCH_PROFILE:-0}" = 1 ]; then
  command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
  (sleep 3; perf record -F 499 -g -o target/bench-perf.data -p "$SERVICE" -- sleep 10 >/dev/null 2>&1) &
  PERF=$!
fi
CPU0=("$(cpu_s "$SERVICE")" "$(cpu_s "$SIM")" "$(cpu_s $(pgrep -x postgres))")
TIMEFORMAT='%U %S'
LOADGEN_CPU=$( { time run create-payment "$CLIENTS" >target/bench-create.json; } 2>&1 )
CREATE=$(cat target/bench-create.json)
CPU1=("$(cpu_s "$SERVICE")" "$(cpu_s "$SIM")" "$(cpu_s $(pgrep -x postgres))")
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVICE/status")
echo "$CREATE"
CPU=$(awk -v s0="${CPU0[0]}" -v s1="${CPU1[0]}" -v m0="${CPU0[1]}" -v m1="${CPU1[1]}" -v p0="${CPU0[2]}" -v p1="${CPU1[2]}" \
  -v l="$LOADGEN_CPU" 'BEGIN {split(l, u, " "); printf "{\"service\": %.1f, \"simulator\": %.1f, \"postgres\": %.1f, \"loadgen\": %.1f}", s1 - s0, m1 - m0, p1 - p0, u[1] + u[2]}')
echo "{\"cpu_seconds_during_rated_run\": $CPU, \"service_peak_rss_kb\": $RSS_KB}"
# BENCH_ONLY=create: the rated run alone, to compare settings quickly.
[ "${BENCH_ONLY:-}" = create ] && exit 0
if [ -n "${PERF:-}" ]; then
  wait "$PERF" || true
  perf report -i target/bench-perf.data --no-children --sort dso,symbol -g none --percent-limit 0.7 --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -40 >target/bench-profile.txt || true
  log "hottest symbols of the service (target/bench-profile.txt):"
  head -25 target/bench-profile.txt >&2
fi
LAG=$(psql "$DB_URL" -Atc "SELECT count(*) FILTER (WHERE published_at IS NULL), count(*) FROM notify.outbox")
sleep 2
LAG_2S=$(psql "$DB_URL" -Atc "SELECT count(*) FROM notify.outbox WHERE published_at IS NULL")
echo "{\"outbox_unpublished_at_end\": ${LAG%%|*}, \"outbox_events\": ${LAG##*|}, \"unpublished_2s_later\": $LAG_2S}"

log "payment creation at a tenth of the rated load: $((CLIENTS / 10)) clients (below this machine's capacity)"
LIGHT=$(run create-payment $((CLIENTS / 10)))
echo "$LIGHT"
log "payment creation at half the rated load: $((CLIENTS / 2)) clients"
HALF=$(run create-payment $((CLIENTS / 2)))
echo "$HALF"
log "payment creation at twice the rated load: $((CLIENTS * 2)) clients"
OVER=$(run create-payment $((CLIENTS * 2)))
echo "$OVER"
log "a shop's mix: $CLIENTS clients over $CUSTOMER_COUNT customers"
MIXED=$(run mixed "$CLIENTS")
echo "$MIXED"

curl -s -X DELETE "http://127.0.0.1:$SIM_PORT/_sim/faults" >/dev/null
log "GET customer: $READERS clients, ${SECONDS_PER_RUN}s each over REST and gRPC"
CPU0=("$(cpu_s "$SERVICE")" "$(cpu_s $(pgrep -x postgres))")
LOADGEN_CPU=$( { time run get-customer-rest "$READERS" >target/bench-rest.json; } 2>&1 )
CPU1=("$(cpu_s "$SERVICE")" "$(cpu_s $(pgrep -x postgres))")
REST=$(cat target/bench-rest.json)
echo "$REST"
READ_CPU=$(awk -v s0="${CPU0[0]}" -v s1="${CPU1[0]}" -v p0="${CPU0[1]}" -v p1="${CPU1[1]}" -v l="$LOADGEN_CPU" \
  'BEGIN {split(l, u, " "); printf "{\"service\": %.1f, \"postgres\": %.1f, \"loadgen\": %.1f}", s1 - s0, p1 - p0, u[1] + u[2]}')
echo "{\"cpu_seconds_during_rest_reads\": $READ_CPU}"
GRPC=$("$LOADGEN" get-customer-grpc "http://127.0.0.1:$RPC" "$KEY" "$READERS" "$SECONDS_PER_RUN" "$CUSTOMERS")
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
log "notifier: $QUEUED queued events ($MAILS to mail) into aiosmtpd, for ${SECONDS_PER_RUN}s at most"
START_NS=$(date +%s%N)
SMTP_URL="smtp://127.0.0.1:$SMTP_PORT" NOTIFY_INTERVAL=0.05 "$BIN/amazing-payments" notifier >target/bench-notifier.log 2>&1 &
NOTIFIER=$!
pids+=($NOTIFIER)
END_BY=$(( $(date +%s) + SECONDS_PER_RUN ))
while [ "$(psql "$DB_URL" -Atc "SELECT count(*) FROM notify.message")" != 0 ] && [ "$(date +%s)" -lt "$END_BY" ]; do sleep 0.2; done
END_NS=$(date +%s%N)
LEFT=$(psql "$DB_URL" -Atc "SELECT count(*) FROM notify.message")
NOTIFIER_RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$NOTIFIER/status")
kill "$NOTIFIER"; wait "$NOTIFIER" 2>/dev/null || true
DELIVERED=$(find target/bench-maildir/new -type f | wc -l)
NOTIFY="{\"queued\": $((QUEUED - LEFT)), \"mailed\": $DELIVERED, \"seconds\": $(( (END_NS - START_NS) / 1000000 ))e-3, \"rss_kb\": $NOTIFIER_RSS_KB}"
echo "$NOTIFY"
log "pgbench -S and a one-row INSERT per transaction: $READERS clients, ${SECONDS_PER_RUN}s each"
psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS ap_pgbench" -qc "CREATE DATABASE ap_pgbench" >/dev/null
PGB_URL="${PG_ADMIN_URL%/*}/ap_pgbench"
pgbench -q -i -s 10 "$PGB_URL" >/dev/null 2>target/bench-pgbench.log || { cat target/bench-pgbench.log; exit 1; }
PGB=$(pgbench -S -M prepared -c "$READERS" -j 2 -T "$SECONDS_PER_RUN" "$PGB_URL" 2>>target/bench-pgbench.log | awk '/^tps/ {print $3; exit}')
[ -n "$PGB" ] || { cat target/bench-pgbench.log; exit 1; }
echo "{\"mode\": \"pgbench -S -M prepared\", \"tps\": $PGB}"
psql "$PGB_URL" -qc "CREATE TABLE one_row (id bigserial PRIMARY KEY, v int NOT NULL)" >/dev/null
echo 'INSERT INTO one_row (v) VALUES (1);' >target/bench-insert.sql
PGI=$(pgbench -n -M prepared -f target/bench-insert.sql -c "$READERS" -j 2 -T "$SECONDS_PER_RUN" "$PGB_URL" 2>>target/bench-pgbench.log | awk '/^tps/ {print $3; exit}')
[ -n "$PGI" ] || { cat target/bench-pgbench.log; exit 1; }
echo "{\"mode\": \"pgbench one-row INSERT\", \"tps\": $PGI}"

python3 - "$CREATE" "$REST" "$GRPC" "$PGB" "$RSS_KB" "$CLIENTS" "$NOTIFY" "$LAG" "$LAG_2S" "$HALF" "$OVER" "$MIXED" "$PGI" "$CPU" "$LIGHT" "$READ_CPU" <<'PY'
import json, sys
create, rest, grpc = (json.loads(a) for a in sys.argv[1:4])
pgb, rss_kb, clients = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
notify = json.loads(sys.argv[7])
lag, events = (int(x) for x in sys.argv[8].split("|"))
lag_2s = int(sys.argv[9])
half, over, mixed = (json.loads(a) for a in sys.argv[10:13])
pgi = float(sys.argv[13])
cpu = json.loads(sys.argv[14])
light = json.loads(sys.argv[15])
read_cpu = json.loads(sys.argv[16])
ideal = clients / 0.3
print()
print("| measure | value | target |")
print("|---|---|---|")
print(f"| payments/s ({clients} clients, Stripe at 300 ms) | {create['rate_per_s']:.0f} of an ideal {ideal:.0f} = {create['rate_per_s']/ideal:.2f} | >= 0.50 |")
print(f"| payment creation p50 / p99 | {create['p50_ms']:.0f} ms / {create['p99_ms']:.0f} ms ({create['errors']} errors, {create['shed']} shed) | p99 <= 600 ms, 0 errors |")
print(f"| service peak RSS (VmHWM) | {rss_kb/1024:.0f} MiB | <= 64 MiB |")
per = 1000.0 / max(create['ok'], 1)
print(f"| CPU during the rated run, s (ms per payment): service, simulator, PostgreSQL, load generator | {cpu['service']:.1f} ({cpu['service']*per:.2f}), {cpu['simulator']:.1f} ({cpu['simulator']*per:.2f}), {cpu['postgres']:.1f} ({cpu['postgres']*per:.2f}), {cpu['loadgen']:.1f} ({cpu['loadgen']*per:.2f}) of {2*create['seconds']:.0f} core-seconds | |")
print(f"| our overhead (total - Stripe) p50 / p99 at a tenth of the load ({light['clients']} clients) | {light['overhead_p50_ms']:.1f} ms / {light['overhead_p99_ms']:.1f} ms ({light['rate_per_s']:.0f} payments/s, p99 {light['p99_ms']:.0f} ms, {light['shed']} shed) | |")
print(f"| our overhead (total - Stripe) p50 / p99 at half the load ({half['clients']} clients) | {half['overhead_p50_ms']:.1f} ms / {half['overhead_p99_ms']:.1f} ms ({half['rate_per_s']:.0f} payments/s) | p99 <= 25 ms |")
print(f"| twice the load ({over['clients']} clients): accepted/s, p99; shed, shed p99 | {over['rate_per_s']:.0f}/s, {over['p99_ms']:.0f} ms; {over['shed']}, {over['shed_p99_ms']:.1f} ms ({over['errors']} errors) | accepted p99 <= 1 s |")
print(f"| a shop's mix ({mixed['clients']} clients, {mixed['customers']} customers) | {mixed['rate_per_s']:.0f} calls/s, p50 {mixed['p50_ms']:.0f} ms, p99 {mixed['p99_ms']:.0f} ms, {mixed['errors']} errors; {json.dumps(mixed['by_kind'])} | |")
print(f"| GET customer, REST ({rest['clients']} clients) | {rest['rate_per_s']:.0f}/s, p50 {rest['p50_ms']:.2f} ms, p99 {rest['p99_ms']:.2f} ms | |")
print(f"| GET customer, gRPC ({grpc['clients']} clients) | {grpc['rate_per_s']:.0f}/s, p50 {grpc['p50_ms']:.2f} ms, p99 {grpc['p99_ms']:.2f} ms | |")
print(f"| pgbench -S -M prepared / one-row INSERT | {pgb:.0f} tps / {pgi:.0f} tps | |")
rper = 1e6 / max(rest['ok'], 1)
print(f"| CPU during the REST reads, s (us per read): service, PostgreSQL, load generator | {read_cpu['service']:.1f} ({read_cpu['service']*rper:.0f}), {read_cpu['postgres']:.1f} ({read_cpu['postgres']*rper:.0f}), {read_cpu['loadgen']:.1f} ({read_cpu['loadgen']*rper:.0f}) | |")
print(f"| REST / pgbench -S, gRPC / pgbench -S | {rest['rate_per_s']/pgb:.2f}, {grpc['rate_per_s']/pgb:.2f} | >= 0.50, >= 0.60 |")
print(f"| payments/s / one-row INSERT tps | {create['rate_per_s']/pgi:.2f} | |")
print(f"| outbox events unpublished when the load stops / 2 s later | {lag} of {events} / {lag_2s} | |")
print(f"| notifier: queued events handled/s (mails/s) | {notify['queued']/notify['seconds']:.0f} ({notify['mailed']/notify['seconds']:.0f}), {notify['mailed']} mails, peak RSS {notify['rss_kb']/1024:.0f} MiB | |")
PY
