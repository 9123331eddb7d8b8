#!/bin/bash
# Stand-in for SPIRE's setup/debugserver/build.sh (go build): see ../debugclient.
exec "$(dirname "${BASH_SOURCE[0]}")/../debugclient/build.sh" server "$1"
