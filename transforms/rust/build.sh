#!/bin/sh
# Builds the Rust guest SDK and the Rust transforms into components.
# Usage: transforms/rust/build.sh OUT_DIR
# Needs: Debian's rustc with the wasm32 target (`apt-get install rustc libstd-rust-dev-wasm32`,
# rustc 1.63 at /usr/bin/rustc) and wasm-tools. Any rustc >= 1.63 with the
# wasm32-unknown-unknown target works: set RUSTC.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
RUSTC=${RUSTC:-/usr/bin/rustc}
WIT=$here/../../wit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags="--edition 2021 --target wasm32-unknown-unknown -C opt-level=s -C panic=abort -C strip=symbols -C codegen-units=1 --remap-path-prefix=$here=."

"$RUSTC" $flags --crate-type rlib --crate-name dataweaver_guest -o "$tmp/libdataweaver_guest.rlib" "$here/sdk/src/lib.rs"

# component NAME SOURCE: one cdylib per transform, embedded and wrapped as a component.
component() {
    "$RUSTC" $flags --crate-type cdylib --crate-name "$1" -L "$tmp" \
        --extern dataweaver_guest="$tmp/libdataweaver_guest.rlib" -o "$tmp/$1.core.wasm" "$2"
    wasm-tools component embed "$WIT" --world transform "$tmp/$1.core.wasm" -o "$tmp/$1.embed.wasm"
    wasm-tools component new "$tmp/$1.embed.wasm" -o "$out/$1.wasm"
    echo "built $out/$1.wasm ($(wc -c < "$out/$1.wasm") bytes)"
}

component example_rust "$here/example/src/lib.rs"
component passthrough_rust "$here/passthrough/src/lib.rs"
component panic_rust "$here/hostile/panic.rs"
