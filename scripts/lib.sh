# Shared by scripts/run.sh and scripts/test.sh: find or start PostgreSQL.
#
# ensure_postgres: uses DATABASE_URL / DB_HOST:DB_PORT if something answers
# there; otherwise starts a private cluster under target/pg (installing
# Debian's postgresql first if no server binaries are found and we are root).
# Exports PG_HOST, PG_PORT, PG_USER and PG_ADMIN_URL (a superuser URL).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRIVATE_PG_DIR="$ROOT/target/pg"
PRIVATE_PG_PORT="${PRIVATE_PG_PORT:-55432}"

log() { printf '==> %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

find_pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

start_private_postgres() {
  local bin owner
  if ! bin="$(find_pg_bin)"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "no PostgreSQL found: installing Debian's postgresql"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      bin="$(find_pg_bin)"
    else
      echo "PostgreSQL is not reachable and its server binaries are not installed (apt-get install postgresql)" >&2
      return 1
    fi
  fi
  owner="$(id -un)"
  if [ "$(id -u)" = 0 ]; then
    owner=postgres
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$PRIVATE_PG_DIR" postgres
  fi
  mkdir -p "$PRIVATE_PG_DIR"
  chown "$owner" "$PRIVATE_PG_DIR"
  as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u "$owner" -- "$@"; else "$@"; fi; }
  if [ ! -f "$PRIVATE_PG_DIR/data/PG_VERSION" ]; then
    log "initialising a private PostgreSQL cluster in target/pg"
    as_owner "$bin/initdb" -D "$PRIVATE_PG_DIR/data" -U postgres -A trust -E UTF8 >/dev/null
  fi
  if ! port_open 127.0.0.1 "$PRIVATE_PG_PORT"; then
    log "starting the private PostgreSQL on 127.0.0.1:$PRIVATE_PG_PORT"
    as_owner "$bin/pg_ctl" -D "$PRIVATE_PG_DIR/data" -l "$PRIVATE_PG_DIR/server.log" -w \
      -o "-p $PRIVATE_PG_PORT -k $PRIVATE_PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  fi
  PG_HOST=127.0.0.1 PG_PORT="$PRIVATE_PG_PORT" PG_USER=postgres PG_PASS=
}

ensure_postgres() {
  local host="${DB_HOST:-127.0.0.1}" port="${DB_PORT:-5432}"
  [ "$host" = localhost ] && host=127.0.0.1
  if [ -n "${DATABASE_URL:-}" ]; then
    PG_ADMIN_URL="$DATABASE_URL"
    export PG_ADMIN_URL
    return 0
  fi
  if port_open "$host" "$port"; then
    PG_HOST="$host" PG_PORT="$port" PG_USER="${DB_USER:-postgres}" PG_PASS="${DB_PASS:-postgres}"
  else
    log "no PostgreSQL answers at $host:$port"
    start_private_postgres
  fi
  PG_ADMIN_URL="postgres://$PG_USER${PG_PASS:+:$PG_PASS}@$PG_HOST:$PG_PORT/postgres"
  export PG_HOST PG_PORT PG_USER PG_PASS PG_ADMIN_URL
}

# The Python tools of scripts/pytools.txt in a virtual environment under
# target/pytools, made (or brought up to date) when the list changes.
ensure_pytools() {
  local venv="$ROOT/target/pytools" list="$ROOT/scripts/pytools.txt"
  if [ -x "$venv/bin/python" ] && cmp -s "$list" "$venv/.installed" 2>/dev/null; then
    return
  fi
  log "installing the Python tools of scripts/pytools.txt in target/pytools"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$list"
  cp "$list" "$venv/.installed"
}

# Prometheus and promtool (Debian's `prometheus`), for the metrics tests;
# installed when missing and we are root. The package's service is not
# started (no policy lets it): the tests run their own Prometheus.
# Debian packages the tests run as real parts, each checked by a command it
# brings: installed where missing (as root, with apt), their services left
# stopped and disabled so their default ports stay free.
DEBIAN_PARTS=("prometheus:prometheus promtool" "pgbouncer:pgbouncer" "haproxy:haproxy")

ensure_debian_parts() {
  local missing=() part pkg cmd
  for part in "${DEBIAN_PARTS[@]}"; do
    pkg=${part%%:*}
    for cmd in ${part#*:}; do
      command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || { missing+=("$pkg"); break; }
    done
  done
  # The scale-out proofs run clusters of their own (initdb, pg_ctl,
  # pg_basebackup), also when a PostgreSQL is already reachable.
  local pg
  if ! pg="$(find_pg_bin)" || [ ! -x "$pg/pg_basebackup" ]; then missing+=(postgresql); fi
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
    return 1
  fi
  log "installing Debian's ${missing[*]} for the tests"
  local policy=/usr/sbin/policy-rc.d had_policy=false rc=0
  [ -e "$policy" ] && had_policy=true
  if ! $had_policy; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || rc=$?
  $had_policy || rm -f "$policy"
  # Not started at boot either: their ports (9090, 6432, 80) stay free.
  for pkg in "${missing[@]}"; do
    if command -v systemctl >/dev/null; then systemctl disable "$pkg" >/dev/null 2>&1 || true; fi
    if command -v update-rc.d >/dev/null; then update-rc.d "$pkg" disable >/dev/null 2>&1 || true; fi
  done
  return $rc
}
