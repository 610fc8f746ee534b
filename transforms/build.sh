#!/bin/sh
# Builds every guest transform from source into one directory (default target/wasm).
# Usage: transforms/build.sh [OUT_DIR] [LANG...]   (LANG: rust c python js wat; default all)
# Each language's toolchain is listed in its build script and installed by .ci/run.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/wasm}
[ $# -gt 0 ] && shift
langs=${*:-rust c python js wat}
mkdir -p "$out"

# The WASI preview1 reactor adapter ships in a crate of the same version as wasmtime
# (a dev-dependency of the agent, so `cargo fetch` brings it).
ADAPTER=$(cd "$root" && cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "wasi-preview1-component-adapter-provider":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "artefacts", "wasi_snapshot_preview1.reactor.wasm"))
')
export ADAPTER

for l in $langs; do
    echo "== $l"
    "$root/transforms/$l/build.sh" "$out"
done
