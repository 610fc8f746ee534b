#!/usr/bin/env bash
# Builds the .deb, installs it with dpkg on this machine, checks that every file is where
# it belongs and the binary runs from its installed path, then removes and purges it and
# checks that nothing is left. Needs root (CI runs it). Arguments go to build-deb.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
"$root/packaging/build-deb.sh" "$@"
deb="$(ls -t "$root"/target/debian/dataweaver_*.deb | head -1)"
echo "package: $deb"
dpkg-deb --info "$deb" | sed -n '1,12p'
$SUDO dpkg -i "$deb"
fail() { echo "deb-check: $*" >&2; exit 1; }
installed=(
  /usr/bin/dataweaver
  /etc/dataweaver/agent.toml
  /lib/systemd/system/dataweaver-agent.service
  /lib/systemd/system/dataweaver-sink.service
  /usr/share/doc/dataweaver/README.md
  /usr/share/doc/dataweaver/examples/sink.toml
  /usr/share/doc/dataweaver/grafana/dataweaver.json
  /usr/share/doc/dataweaver/prometheus/alerts.yml
)
for f in "${installed[@]}"; do [ -e "$f" ] || fail "missing $f"; done
/usr/bin/dataweaver --version | grep -q "dataweaver" || fail "dataweaver --version"
/usr/bin/dataweaver --version
getent passwd dataweaver >/dev/null || fail "no dataweaver user"
[ "$(stat -c %U /var/lib/dataweaver)" = dataweaver ] || fail "/var/lib/dataweaver not owned by dataweaver"
[ "$(stat -c %a /etc/dataweaver/agent.toml)" = 640 ] || fail "agent.toml not 0640"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /lib/systemd/system/dataweaver-agent.service /lib/systemd/system/dataweaver-sink.service
fi
$SUDO dpkg -r dataweaver
for f in /usr/bin/dataweaver /lib/systemd/system/dataweaver-agent.service /usr/share/doc/dataweaver/README.md; do
  [ ! -e "$f" ] || fail "$f left after dpkg -r"
done
$SUDO dpkg -P dataweaver
for f in /etc/dataweaver /var/lib/dataweaver; do [ ! -e "$f" ] || fail "$f left after purge"; done
! getent passwd dataweaver >/dev/null || fail "user left after purge"
echo "deb-check: installed, ran, removed and purged cleanly"
