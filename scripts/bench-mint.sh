#!/usr/bin/env bash
# X509-SVID minting throughput: in-process baseline and MintX509SVID over the admin socket
# (1 and 16 callers), per second and per server CPU-second. Prints figures; asserts nothing.
# With a path to another cairn build (e.g. the previous release), its server is measured in the
# same run, interleaved with this tree's, and the ratios printed:
#   scripts/bench-mint.sh [BASELINE_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then
    BENCH_BASELINE_BIN="$(realpath "$1")"
    export BENCH_BASELINE_BIN
    shift
fi
cargo bench --bench mint "$@"
