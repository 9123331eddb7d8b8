#!/usr/bin/env bash
# Compromise response on a root -> region -> zone tree with one agent per tier: time from
# `localauthority x509 taint` at the root until every workload SVID is re-issued under the
# untainted root (checked with openssl), and from `revoke` until no tier or agent bundle holds
# the revoked root. Prints figures beside what SPIRE's constants give; asserts nothing else.
# Uses the debug test build (the figures are set by sync intervals and process round trips,
# not by CPU).
#   scripts/bench-compromise.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v openssl >/dev/null 2>&1 || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }
cargo test --test it compromise::bench_compromise_tree -- --ignored --nocapture 2>&1 | grep -E "^( |compromise)"
