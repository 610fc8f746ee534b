#!/bin/sh
# Builds the C transforms into components.
# Usage: transforms/c/build.sh OUT_DIR
# Needs: clang-14, lld-14, wasi-libc, libclang-rt-14-dev-wasm32 (Debian), wit-bindgen-cli
# and wasm-tools (cargo install --locked wit-bindgen-cli wasm-tools).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
CC=${CC:-clang-14}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wit-bindgen c "$here/../../wit" --world transform --out-dir "$tmp/gen" >/dev/null

# component NAME SOURCE [extra wit-bindgen world]: compile, link with the generated glue,
# wrap as a component (the reactor adapter is only used if the module imports WASI).
component() {
    gen=$tmp/gen
    $CC --target=wasm32-wasi -O2 -mexec-model=reactor -Wl,--strip-all \
        -ffile-prefix-map="$here"=. -I "$here" -I "$gen" \
        -o "$tmp/$1.core.wasm" "$2" "$gen/transform.c" "$gen/transform_component_type.o"
    wasm-tools component new "$tmp/$1.core.wasm" --adapt "wasi_snapshot_preview1=$ADAPTER" -o "$out/$1.wasm"
    echo "built $out/$1.wasm ($(wc -c < "$out/$1.wasm") bytes)"
}

: "${ADAPTER:?set ADAPTER to wasi_snapshot_preview1.reactor.wasm (transforms/build.sh does)}"
component example_c "$here/example.c"
component passthrough_c "$here/passthrough.c"
component openfile_c "$here/hostile/openfile.c"
