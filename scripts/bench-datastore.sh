#!/usr/bin/env bash
# Datastore figures on SQLite, PostgreSQL and MariaDB, same run, same machine: the agent
# benchmark (benches/agent.rs: a real server in process with mTLS agents) with each database
# behind the server. Printed per database: entry creation through BatchCreateEntry, one server
# entry-cache rebuild, first-sync and steady-state sync throughput, and the server's datastore
# calls during 100 agents' steady-state syncs (target: near zero; syncs come from the cache).
# PostgreSQL and MariaDB are throwaway servers in a scratch directory (Debian's packages:
# scripts/install-test-deps.sh installs them). Prints figures; asserts nothing.
#   scripts/bench-datastore.sh        (BENCH_AGENTS, BENCH_ENTRIES_PER_AGENT, BENCH_ONE_AGENT_ENTRIES)
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_AGENTS="${BENCH_AGENTS:-100}" BENCH_ENTRIES_PER_AGENT="${BENCH_ENTRIES_PER_AGENT:-100}"
export BENCH_ONE_AGENT_ENTRIES="${BENCH_ONE_AGENT_ENTRIES:-5000}" BENCH_SKIP_WORKLOAD_API=1
T="$(mktemp -d /tmp/cairn-bench-db.XXXXXX)"
chmod 755 "$T"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as() { if [ "$(id -u)" = 0 ]; then runuser -u "$1" -- "${@:2}"; else "${@:2}"; fi; }
PGB=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGP=$(port); MYP=$(port)
cleanup() {
  as postgres "$PGB/pg_ctl" -D "$T/pg/data" -m immediate stop >/dev/null 2>&1 || true
  [ -f "$T/my/mysqld.pid" ] && kill "$(cat "$T/my/mysqld.pid")" 2>/dev/null || true
  sleep 1; rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/pg" "$T/my"
if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$T/pg"; chown mysql:mysql "$T/my"; fi
as postgres "$PGB/initdb" -D "$T/pg/data" -A trust -U postgres --no-sync -E UTF8 >/dev/null
as postgres "$PGB/pg_ctl" -D "$T/pg/data" -l "$T/pg/pg.log" -w -o "-p $PGP -k $T/pg -c listen_addresses=127.0.0.1 -c max_connections=400" start >/dev/null
psql -h 127.0.0.1 -p "$PGP" -U postgres -qc "CREATE DATABASE cairn" >/dev/null
user=(); [ "$(id -u)" = 0 ] && user=(--user=mysql)
mariadb-install-db "${user[@]}" --datadir="$T/my/data" --auth-root-authentication-method=socket --skip-test-db >/dev/null 2>&1
mariadbd --no-defaults "${user[@]}" --datadir="$T/my/data" --socket="$T/my/mysqld.sock" --pid-file="$T/my/mysqld.pid" \
  --port="$MYP" --bind-address=127.0.0.1 --skip-name-resolve --max-connections=400 --log-error="$T/my/err.log" 2>/dev/null &
until mariadb-admin --no-defaults --socket="$T/my/mysqld.sock" -uroot ping >/dev/null 2>&1; do sleep 0.2; done
mariadb --no-defaults --socket="$T/my/mysqld.sock" -uroot -e "CREATE DATABASE cairn; CREATE USER 'cairn'@'127.0.0.1' IDENTIFIED BY 'cairnpw'; GRANT ALL ON cairn.* TO 'cairn'@'127.0.0.1';"
echo "Durable settings (fsync on) for both servers; the benchmark, servers and agents share $(nproc) CPUs."
for ds in "sqlite3|" \
  "postgres|database_type = \"postgres\" connection_string = \"dbname=cairn user=postgres host=127.0.0.1 port=$PGP sslmode=disable\"" \
  "mariadb|database_type = \"mysql\" connection_string = \"cairn:cairnpw@tcp(127.0.0.1:$MYP)/cairn?parseTime=true\""; do
  name="${ds%%|*}"; conf="${ds#*|}"
  echo; echo "=== $name ==="
  if [ -n "$conf" ]; then export BENCH_DATASTORE="$conf"; else unset BENCH_DATASTORE; fi
  cargo bench --quiet --bench agent 2>/dev/null | grep -E "^[0-9]\.|creating the entries|cache rebuild|sync|datastore (in|during)"
done
echo
echo "On PostgreSQL and MariaDB each server also reads the events table once a second (other servers' changes);"
echo "that poll is not a datastore call and is not in the counts above."
