#!/usr/bin/env bash
# Scale and change propagation: entry creation rate, server memory per entry, restart to ready,
# and entry-create-to-workload-stream latency (p50, p99) with cairn's push path beside the
# SPIRE-like polling path, same run. SCALE_ENTRIES (default 10000) entries, SCALE_RUNS (default
# 20) propagation runs. Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench scale "$@"
