#!/bin/sh
# Builds the hostile test modules (WebAssembly text) into components.
# Usage: transforms/wat/build.sh OUT_DIR     Needs: wasm-tools.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# component NAME WORLD: splice the prelude in, assemble, embed the world, make a component.
component() {
    sed -e "/;;PRELUDE/r $here/prelude.wat" -e '/;;PRELUDE/d' "$here/$1.wat" > "$tmp/$1.wat"
    wasm-tools parse "$tmp/$1.wat" -o "$tmp/$1.core.wasm"
    wasm-tools component embed "$here/wit" --world "$2" "$tmp/$1.core.wasm" -o "$tmp/$1.embed.wasm"
    wasm-tools component new "$tmp/$1.embed.wasm" -o "$out/$1.wasm"
    echo "built $out/$1.wasm ($(wc -c < "$out/$1.wasm") bytes)"
}

component loop dataweaver:transform/transform@0.1.0
component bomb dataweaver:transform/transform@0.1.0
component needs_secrets needs-secrets
component wrong_world wrong-world
component init_loop dataweaver:transform/transform@0.1.0
component alias dataweaver:transform/transform@0.1.0
