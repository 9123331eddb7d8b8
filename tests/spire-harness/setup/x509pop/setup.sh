#!/bin/bash
# Stand-in for SPIRE's setup/x509pop/setup.sh (`go run gencerts.go`), made with openssl to the
# same shape, so no Go toolchain is needed:
#   setup.sh [-trust-domain TD] [-x509pop-san PATH]... SERVERDIR AGENTDIR [AGENTDIR...]
# SERVERDIR/agent-cacert.pem: a P-256 CA "Agent CA", valid 1 hour.
# AGENTDIR/agent.crt.pem + agent.key.pem (PKCS#8): a P-256 leaf signed by it, digitalSignature,
# CN = the directory's base name, URI SANs x509pop://TD/PATH for each -x509pop-san.
set -euo pipefail
td=""
sans=()
while [ $# -gt 0 ]; do
    case "$1" in
        -trust-domain|--trust-domain) td="$2"; shift 2 ;;
        -trust-domain=*|--trust-domain=*) td="${1#*=}"; shift ;;
        -x509pop-san|--x509pop-san) sans+=("$2"); shift 2 ;;
        -x509pop-san=*|--x509pop-san=*) sans+=("${1#*=}"); shift ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || { echo "usage: setup.sh [-trust-domain TD] [-x509pop-san SAN]... SERVERDIR AGENTDIR [AGENTDIR...]" >&2; exit 1; }
server_dir="$1"; shift
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key"
openssl req -new -x509 -key "$work/ca.key" -subj "/CN=Agent CA" -days 1 \
    -addext "basicConstraints=critical,CA:TRUE" -set_serial 1 -out "$server_dir/agent-cacert.pem" 2>/dev/null
chmod 644 "$server_dir/agent-cacert.pem"
i=0
for dir in "$@"; do
    cn="$(basename "$dir")"
    openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$dir/agent.key.pem"
    openssl req -new -key "$dir/agent.key.pem" -subj "/CN=$cn" -out "$work/agent.csr"
    {
        echo "keyUsage=critical,digitalSignature"
        if [ ${#sans[@]} -gt 0 ]; then
            list=""
            for s in "${sans[@]}"; do list="${list:+$list,}URI:x509pop://$td/$s"; done
            echo "subjectAltName=$list"
        fi
    } > "$work/leaf.ext"
    openssl x509 -req -in "$work/agent.csr" -CA "$server_dir/agent-cacert.pem" -CAkey "$work/ca.key" \
        -set_serial "$((i + 100))" -days 1 -extfile "$work/leaf.ext" -out "$dir/agent.crt.pem" 2>/dev/null
    chmod 644 "$dir/agent.key.pem" "$dir/agent.crt.pem"
    i=$((i + 1))
done
