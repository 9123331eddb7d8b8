#!/bin/bash
# Stand-in for SPIRE's setup/adminclient/build.sh (go build): `build.sh OUTPUT_PATH` makes an
# executable at OUTPUT_PATH running client.py (see ../itclient/build.sh for how).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${HERE}/../itclient/build.sh" "$1" "${HERE}/client.py" \
    sdk:spire/api/server/svid/v1 sdk:spire/api/server/bundle/v1 sdk:spire/api/server/entry/v1 \
    sdk:spire/api/server/agent/v1 sdk:spire/api/server/trustdomain/v1
