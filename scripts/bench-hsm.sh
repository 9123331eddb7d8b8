#!/usr/bin/env bash
# X509-SVID minting with the CA key on SoftHSM2, against SoftHSM's raw CKM_ECDSA sign rate
# through cryptoki and against a CA key in memory, in one run (1 and 16 callers). Makes a
# throwaway token directory; prints figures and ratios; asserts nothing.
#   scripts/bench-hsm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v softhsm2-util >/dev/null 2>&1 || { echo "softhsm2 is missing: apt-get install softhsm2 opensc" >&2; exit 1; }
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$T/tokens" > "$T/softhsm2.conf"
export SOFTHSM2_CONF="$T/softhsm2.conf"
softhsm2-util --init-token --free --label cairn-bench --pin 1234 --so-pin 5678 >/dev/null
cargo bench --bench hsm "$@"
