#!/usr/bin/env bash
# Server memory and a legitimate caller's latency under hostile connection floods on the TLS
# port: 10,000 idle connections (TLS handshake done, then silent), then 40,000 WatchBundle stream attempts (40 connections x
# 1,000). Prints one table row per binary; asserts nothing.
#
#   scripts/bench-flood.sh                 # the release build of this tree
#   scripts/bench-flood.sh OLD_BINARY ...  # also each given binary, same run, for a baseline
#
# The server runs under `ulimit -n 1024` (systemd's default soft limit; cairn raises soft to
# hard, so hard is set to 1024 too). The caller's latency is GetBundle on a fresh TLS connection
# (handshake included), 30 samples, by scripts/flood.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh >/dev/null
cargo build --release --locked -q
bins=("$PWD/target/release/cairn" "$@")
work=$(mktemp -d)
trap 'pkill -f "$work/" 2>/dev/null || true; rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)"

rss() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$1/status" 2>/dev/null || echo "dead"; }
probe() { python3 scripts/flood.py probe --port "$1" --samples 30 --text; }

printf '%-28s | %-9s | %-26s | %-11s | %-9s | %-26s | %-9s | %-26s | %-9s\n' binary "base MB" "base p50/p99" "idle opened" "idle MB" "during 10k idle p50/p99" "strm MB" "during 40k streams p50/p99" "after MB"
for bin in "${bins[@]}"; do
  d="$work/$(basename "$(dirname "$(dirname "$bin")")")-$RANDOM"
  mkdir -p "$d"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$d/server.conf" <<EOF
server {
    bind_address = "127.0.0.1"
    bind_port = "$port"
    socket_path = "$d/api.sock"
    trust_domain = "example.org"
    data_dir = "$d/data"
    log_level = "WARN"
}
plugins {
    DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "$d/data/datastore.sqlite3" } }
    KeyManager "memory" {}
    NodeAttestor "join_token" { plugin_data {} }
}
EOF
  (ulimit -n 1024; exec "$bin" server run -config "$d/server.conf") 2>"$d/server.log" &
  pid=$!
  for _ in $(seq 100); do [ -S "$d/api.sock" ] && "$bin" server healthcheck -socketPath "$d/api.sock" >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1
  base_rss=$(rss $pid); base_lat=$(probe "$port")
  # 10,000 idle connections, held while measuring.
  coproc IDLE { python3 scripts/flood.py idle --port "$port" --n 10000 --tls; }
  read -r idle_info <&"${IDLE[0]}"
  idle_held=$(echo "$idle_info" | sed -E 's/.*"open": ([0-9]+).*/\1/')
  idle_rss=$(rss $pid); idle_lat=$(timeout 120 bash -c "$(declare -f probe); probe $port" || echo "timed out")
  { echo >&"${IDLE[1]}"; } 2>/dev/null || true; wait "$IDLE_PID" 2>/dev/null || true
  sleep 2
  # 40,000 stream attempts, held while measuring.
  coproc STREAMS { python3 scripts/flood.py streams --port "$port" --conns 40 --streams 1000 --settle 0.5 --hold-stdin; }
  read -r _ <&"${STREAMS[0]}"
  strm_rss=$(rss $pid); strm_lat=$(timeout 120 bash -c "$(declare -f probe); probe $port" || echo "timed out")
  { echo >&"${STREAMS[1]}"; } 2>/dev/null || true; wait "$STREAMS_PID" 2>/dev/null || true
  sleep 5
  after_rss=$(rss $pid)
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  printf '%-28s | %-9s | %-26s | %-11s | %-9s | %-26s | %-9s | %-26s | %-9s\n' "${bin: -28}" "$base_rss" "$base_lat" "$idle_held" "$idle_rss" "$idle_lat" "$strm_rss" "$strm_lat" "$after_rss"
done
