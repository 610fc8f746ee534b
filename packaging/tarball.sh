#!/usr/bin/env bash
# A release tarball: target/dist/dataweaver-<version>-<target>.tar.gz with the binary,
# example configs, the service templates, the Grafana dashboard, the alert rules and the
# README. Builds release unless given `--profile NAME` (the binary of that profile).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile=release
[ "${1:-}" = "--profile" ] && profile="$2"
cargo build -p dataweaver --profile "$profile"
dir=$profile; [ "$profile" = dev ] && dir=debug
version="$(target/$dir/dataweaver --version | awk '{print $2}')"
triple="$(rustc -vV | sed -n 's/^host: //p')"
name="dataweaver-$version-$triple"
stage="target/dist/$name"
rm -rf "$stage" && mkdir -p "$stage"
cp "target/$dir/dataweaver" "$stage/"
strip "$stage/dataweaver" 2>/dev/null || true
cp README.md "$stage/"
cp -r packaging/examples packaging/systemd packaging/launchd packaging/grafana packaging/prometheus "$stage/"
tar -C target/dist -czf "target/dist/$name.tar.gz" "$name"
echo "target/dist/$name.tar.gz"
