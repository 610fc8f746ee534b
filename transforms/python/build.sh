#!/bin/sh
# Builds the Python transforms into components.
# Usage: transforms/python/build.sh OUT_DIR
# Needs: componentize-py 0.25 (`pip install componentize-py==0.25.0`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$here"
for m in app:example_python passthrough:passthrough_python; do
    componentize-py -d ../../wit -w transform componentize --stub-wasi "${m%%:*}" -o "$out/${m#*:}.wasm"
    echo "built $out/${m#*:}.wasm ($(wc -c < "$out/${m#*:}.wasm") bytes)"
done
