#!/usr/bin/env bash
# Installs what cairn's tests need on a fresh Debian machine: openssl (the independent X.509
# verifier), Python's PyJWT + cryptography (the independent JWT verifier), py-spiffe, and h2 (the
# raw HTTP/2 client of scripts/flood.py).
set -euo pipefail
need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"; fi
fi
if ! python3 -c 'import jwt, cryptography, spiffe, h2' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'pyjwt[crypto]>=2.8' 'spiffe>=0.3' 'h2>=4' || \
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'pyjwt[crypto]>=2.8' 'spiffe>=0.3' 'h2>=4'
fi
python3 -c 'import jwt, cryptography, spiffe, h2; print("pyjwt", jwt.__version__, "py-spiffe ok")'
openssl version
