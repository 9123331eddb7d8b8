#!/usr/bin/env bash
# JWT key propagation across nested tiers (root -> region -> zone): seconds from a key published
# at the leaf tier until every server bundle and every agent's FetchJWTBundles stream has it,
# for cairn's push path and the SPIRE-compatible polling path. Prints figures; asserts nothing.
# Runs per configuration: `scripts/bench-propagation.sh -- --runs N` or PROPAGATION_RUNS=N.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench propagation "$@"
