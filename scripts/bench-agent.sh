#!/usr/bin/env bash
# Agent figures, server and agents in one process on 127.0.0.1: Workload API latency from the
# agent's cache (FetchX509SVID time to first message, FetchJWTSVID cached/uncached), one agent
# syncing 10,000 entries, and BENCH_AGENTS (100) agents x BENCH_ENTRIES_PER_AGENT (1,000)
# entries, with the server's datastore calls in each window. Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench agent "$@"
