#!/usr/bin/env bash
# The one test command: installs the independent verifiers the tests use, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
# The end-to-end tests (tests/it) mostly wait on servers, agents and SPIRE's real-time suites
# rather than compute, so at least 4 run at a time even on a 2-core machine (libtest's default
# is one per core). RUST_TEST_THREADS or `-- --test-threads N` still choose.
if [ -z "${RUST_TEST_THREADS:-}" ]; then
  cores="$(nproc 2>/dev/null || echo 2)"
  export RUST_TEST_THREADS="$(( cores < 4 ? 4 : cores ))"
fi
cargo test --locked "$@"
