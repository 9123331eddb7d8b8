#!/bin/bash
# Shared builder of the Python stand-ins for SPIRE's Go setup clients (debugclient, adminclient).
#
#   build.sh OUT MAIN_PY PROTO_DIR...
#
# Writes OUT, an executable launcher, and OUT.d beside it holding MAIN_PY (as client.py),
# itclient.py (the stand-in for SPIRE's setup/itclient package) and Python stubs generated here,
# on the host, from the listed proto directories. A PROTO_DIR is "sdk:<dir>" (SPIRE's API protos,
# spire-api-sdk, as scripts/install-test-deps.sh fetches them) or "cairn:<dir>" (cairn's copy in
# src/wire/proto); sdk:spire/api/types is always included. The launcher finds OUT.d beside
# itself, so it also works at the path a container sees.
set -euo pipefail
out="$1"; main="$2"; shift 2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/../../../.." && pwd)"
sdk="$(ls -d "${REPO}"/target/spire-api-sdk/*/spire-api-sdk/proto 2>/dev/null | head -1)"
[ -n "$sdk" ] || { echo "SPIRE's API protos are missing: run scripts/install-test-deps.sh" >&2; exit 1; }
py="$(python3 -c 'import sys; print(sys.executable)')"
d="${out}.d"
rm -rf "$d"; mkdir -p "$d"
"$py" - "$sdk" "${REPO}/src/wire/proto" "$d" sdk:spire/api/types "$@" <<'PY'
import os, sys, shutil
import grpc_tools, grpc_tools.protoc
sdk, cairn, out = sys.argv[1:4]
roots = {"sdk": sdk, "cairn": cairn}
inc = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
src = os.path.join(out, "proto")
for spec in sys.argv[4:]:
    which, rel = spec.split(":", 1)
    for f in os.listdir(os.path.join(roots[which], rel)):
        if f.endswith(".proto"):
            os.makedirs(os.path.join(src, rel), exist_ok=True)
            shutil.copy(os.path.join(roots[which], rel, f), os.path.join(src, rel, f))
files = []
for root, _, fs in os.walk(src):
    files += [os.path.relpath(os.path.join(root, f), src) for f in fs if f.endswith(".proto")]
rc = grpc_tools.protoc.main(["protoc", f"-I{src}", f"-I{inc}", f"--python_out={out}", f"--grpc_python_out={out}"] + files)
assert rc == 0, "protoc failed"
for root, dirs, _ in os.walk(os.path.join(out, "spire")):
    open(os.path.join(root, "__init__.py"), "a").close()
open(os.path.join(out, "spire", "__init__.py"), "a").close()
PY
cp "${HERE}/itclient.py" "$d/itclient.py"
cp "$main" "$d/client.py"
printf '#!%s\nimport os, runpy, sys\nd = os.path.realpath(__file__) + ".d"\nsys.path.insert(0, d)\nsys.argv[0] = os.path.join(d, "client.py")\nrunpy.run_path(sys.argv[0], run_name="__main__")\n' "$py" > "$out"
chmod -R a+rX "$d"
chmod 755 "$out"
