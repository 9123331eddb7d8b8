#!/usr/bin/env bash
# X509-SVID minting throughput: in-process baseline and MintX509SVID over the admin socket
# (1 and 16 callers), per second and per server CPU-second. Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench mint "$@"
