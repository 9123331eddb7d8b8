#!/bin/bash
# Builds a debug client stand-in at $2: a launcher for client.py with gRPC stubs generated
# here, on the host, into "$2.d" (the launcher finds them beside itself, so it also works at
# the path a container sees). $1 is "agent" or "server".
set -euo pipefail
mode="$1"; out="$2"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/../../../.." && pwd)"
sdk="$(ls -d "${REPO}"/target/spire-api-sdk/*/spire-api-sdk/proto 2>/dev/null | head -1)"
[ -n "$sdk" ] || { echo "SPIRE's API protos are missing: run scripts/install-test-deps.sh" >&2; exit 1; }
py="$(python3 -c 'import sys; print(sys.executable)')"
d="${out}.d"
rm -rf "$d"; mkdir -p "$d"
# The server Debug API from SPIRE's own protos; the agent's from cairn's copy, which has the
# cached_*_count fields newer SPIRE agents report (the 0.6.0 SDK predates them).
"$py" - "$sdk" "${REPO}/src/wire/proto" "$d" <<'PY'
import os, sys, shutil
import grpc_tools, grpc_tools.protoc
sdk, cairn, out = sys.argv[1:]
inc = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
src = os.path.join(out, "proto")
for root, rel in [(sdk, "spire/api/types"), (sdk, "spire/api/server/debug/v1"), (cairn, "spire/api/agent/debug/v1")]:
    for f in os.listdir(os.path.join(root, rel)):
        if f.endswith(".proto"):
            os.makedirs(os.path.join(src, rel), exist_ok=True)
            shutil.copy(os.path.join(root, rel, f), os.path.join(src, rel, f))
files = []
for root, _, fs in os.walk(src):
    files += [os.path.relpath(os.path.join(root, f), src) for f in fs if f.endswith(".proto")]
rc = grpc_tools.protoc.main(["protoc", f"-I{src}", f"-I{inc}", f"--python_out={out}", f"--grpc_python_out={out}"] + files)
assert rc == 0, "protoc failed"
for root, dirs, _ in os.walk(os.path.join(out, "spire")):
    open(os.path.join(root, "__init__.py"), "a").close()
open(os.path.join(out, "spire", "__init__.py"), "a").close()
PY
cp "${HERE}/client.py" "$d/client.py"
echo "$mode" > "$d/mode"
printf '#!%s\nimport os, runpy, sys\nd = os.path.realpath(__file__) + ".d"\nsys.path.insert(0, d)\nsys.argv[0] = os.path.join(d, "client.py")\nrunpy.run_path(sys.argv[0], run_name="__main__")\n' "$py" > "$out"
chmod -R a+rX "$d"
chmod 755 "$out"
