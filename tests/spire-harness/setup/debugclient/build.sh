#!/bin/bash
# Builds a debug client stand-in at $2 (see ../itclient/build.sh): client.py with gRPC stubs
# generated here, on the host. $1 is "agent" or "server".
set -euo pipefail
mode="$1"; out="$2"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The server Debug API from SPIRE's own protos; the agent's from cairn's copy, which has the
# cached_*_count fields newer SPIRE agents report (the 0.6.0 SDK predates them).
"${HERE}/../itclient/build.sh" "$out" "${HERE}/client.py" sdk:spire/api/server/debug/v1 cairn:spire/api/agent/debug/v1
echo "$mode" > "${out}.d/mode"
