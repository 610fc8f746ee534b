#!/bin/sh
# Builds the JavaScript transforms into components (QuickJS, via componentize-qjs).
# Usage: transforms/js/build.sh OUT_DIR
# Needs: Node.js and `npm install` in this folder (package.json pins @bytecodealliance/jco,
# which brings componentize-qjs).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$here"
[ -x node_modules/.bin/componentize-qjs ] || npm install --no-audit --no-fund --loglevel=error
for m in example:example_js passthrough:passthrough_js; do
    node_modules/.bin/componentize-qjs --wit ../../wit --js "${m%%:*}.js" -n transform --sync --stub-wasi -o "$out/${m#*:}.wasm"
    echo "built $out/${m#*:}.wasm ($(wc -c < "$out/${m#*:}.wasm") bytes)"
done
