#!/usr/bin/env bash
# Builds target/debian/dataweaver_<version>-1_<arch>.deb with cargo-deb
# (`cargo install --locked cargo-deb`). Arguments go to `cargo deb` (e.g. `--profile dev`
# for a quick package in CI; the default is a release build).
#
# The systemd units are rendered from packaging/systemd/dataweaver.service.in, the same
# template `dataweaver service install` uses, for /usr/bin/dataweaver and /etc/dataweaver.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/deb-assets"
mkdir -p "$out"
for kind in agent sink; do
  state=dataweaver; [ "$kind" = sink ] && state=dataweaver-sink
  sed -e "s|{kind}|$kind|g" -e "s|{bin}|/usr/bin/dataweaver|g" \
      -e "s|{config}|/etc/dataweaver/$kind.toml|g" -e "s|{user}|dataweaver|g" \
      -e "s|{state}|$state|g" \
      "$root/packaging/systemd/dataweaver.service.in" > "$out/dataweaver-$kind.service"
done
cd "$root"
cargo deb -p dataweaver "$@"
