#!/usr/bin/env bash
# Federation figures, one run:
#  1. bundle endpoint GETs/s on loopback (cargo bench --bench federation: cairn's endpoint
#     beside a static responder over the same TLS, 1 and 16 keep-alive clients);
#  2. seconds from a new root appearing at trust domain A until federated trust domain B holds
#     it, with refresh_hint = 1m (B polls at a quarter of it: SPIRE's cadence), two release
#     cairn servers on loopback, https_spiffe; and until a workload of B (an agent with the
#     default 5 s sync, a workload entry with -federatesWith a.test) gets it from the Workload
#     API.
# Prints figures; asserts nothing.   scripts/bench-federation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench federation
cargo build --release --quiet
BIN="$PWD/target/release/cairn"
T="$(mktemp -d)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PA_API=$(port); PA_FED=$(port); PB_API=$(port)
conf() { # name td api_port extra
  mkdir -p "$T/$1"
  cat > "$T/$1/server.conf" <<CONF
server {
  bind_address = "127.0.0.1"
  bind_port = "$3"
  socket_path = "$T/$1/api.sock"
  trust_domain = "$2"
  data_dir = "$T/$1"
  log_level = "INFO"
  ca_ttl = "2m"
  default_x509_svid_ttl = "20s"
  default_jwt_svid_ttl = "20s"
  $4
}
plugins {
  DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "$T/$1/ds.sqlite3" } }
  KeyManager "memory" {}
}
CONF
}
conf a a.test "$PA_API" "federation { bundle_endpoint { address = \"127.0.0.1\" port = $PA_FED refresh_hint = \"1m\" profile \"https_spiffe\" {} } }"
conf b b.test "$PB_API" "federation { federates_with \"a.test\" { bundle_endpoint_url = \"https://127.0.0.1:$PA_FED\" bundle_endpoint_profile \"https_spiffe\" { endpoint_spiffe_id = \"spiffe://a.test/spire/server\" } } }"
"$BIN" server run -config "$T/a/server.conf" 2>"$T/a/log" &
"$BIN" server run -config "$T/b/server.conf" 2>"$T/b/log" &
for s in a b; do
  for _ in $(seq 100); do "$BIN" server healthcheck -socketPath "$T/$s/api.sock" >/dev/null 2>&1 && break; sleep 0.1; done
done
"$BIN" server bundle show -socketPath "$T/a/api.sock" -format spiffe > "$T/a.json"
"$BIN" server bundle set -socketPath "$T/b/api.sock" -id spiffe://a.test -format spiffe -path "$T/a.json" >/dev/null
# An agent under B whose workload (this uid) federates with a.test.
"$BIN" server entry create -socketPath "$T/b/api.sock" -parentID spiffe://b.test/node -spiffeID spiffe://b.test/w \
  -selector "unix:uid:$(id -u)" -federatesWith spiffe://a.test >/dev/null
TOKEN=$("$BIN" server token generate -socketPath "$T/b/api.sock" -spiffeID spiffe://b.test/node -ttl 600 | awk '{print $2}')
mkdir -p "$T/agent"
"$BIN" server bundle show -socketPath "$T/b/api.sock" > "$T/agent/bootstrap.pem"
cat > "$T/agent/agent.conf" <<CONF
agent {
  data_dir = "$T/agent"
  server_address = "127.0.0.1"
  server_port = "$PB_API"
  socket_path = "$T/agent/agent.sock"
  trust_bundle_path = "$T/agent/bootstrap.pem"
  trust_domain = "b.test"
  join_token = "$TOKEN"
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" {}
  WorkloadAttestor "unix" { plugin_data {} }
}
CONF
"$BIN" agent run -config "$T/agent/agent.conf" 2>"$T/agent/log" &
at_workload() {
  rm -rf "$T/w"
  "$BIN" agent api fetch x509 -socketPath "$T/agent/agent.sock" -write "$T/w" >/dev/null 2>&1 || { echo 0; return; }
  grep -c BEGIN "$T/w/federated_bundle.0.0.pem" 2>/dev/null || echo 0
}
for _ in $(seq 300); do [ "$(at_workload)" -ge 1 ] && break; sleep 0.1; done
roots() { "$BIN" server bundle show -socketPath "$T/a/api.sock" | grep -c BEGIN || true; }
at_b() { "$BIN" server bundle list -socketPath "$T/b/api.sock" -id spiffe://a.test 2>/dev/null | grep -c BEGIN || true; }
echo "waiting for trust domain A to prepare its next root (ca_ttl 2m: about a minute)..."
while [ "$(roots)" -lt 2 ]; do sleep 0.1; done
t0=$(date +%s.%N)
while [ "$(at_b)" -lt 2 ]; do sleep 0.1; done
t1=$(date +%s.%N)
while [ "$(at_workload)" -lt 2 ]; do sleep 0.1; done
t2=$(date +%s.%N)
python3 -c "import sys; d=float(sys.argv[2])-float(sys.argv[1]); print(f'new root at A -> held by federated B: {d:.1f} s (refresh_hint 1m: B polls every 15 s, so at most ~15 s plus one fetch)')" "$t0" "$t1"
python3 -c "import sys; d=float(sys.argv[2])-float(sys.argv[1]); print(f'new root at A -> in the Workload API of a workload of B: {d:.1f} s (plus the agent sync, 5 s)')" "$t0" "$t2"
