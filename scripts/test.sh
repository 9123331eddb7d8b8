#!/usr/bin/env bash
# The one test command: installs the independent verifiers the tests use, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo test --locked "$@"
