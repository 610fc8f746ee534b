#!/usr/bin/env bash
# Peak RSS of an agent forwarding 1,000,000 256-byte lines to a local sink, as the `e2e`
# bench runs them, without the bench's own reader: `tests/bench/rss.sh BINARY [WRAPPER...]`.
# Prints the agent's VmHWM, RssAnon, RssFile and threads once the last line is in the
# sink's JSONL, then the bytes each process moved through read and write calls (rchar,
# wchar: files and sockets, page cache hits included) and to the disk (write_bytes).
# A WRAPPER (e.g. `heaptrack -o /tmp/agent`) runs the agent under a profiler.
set -euo pipefail
bin="$(realpath "$1")"
shift
wrap=("$@")
d="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$d"' EXIT
cd "$d"
mkdir input
for args in "init" "issue --name sink --sink" "issue --name bench-agent"; do
  # shellcheck disable=SC2086
  "$bin" certs $args --dir certs >/dev/null
done
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tls='ca = "certs/ca.pem"'
cat >sink.toml <<TOML
listen = "127.0.0.1:$port"
data_dir = "sink"
tls = { $tls, cert = "certs/sink.pem", key = "certs/sink.key" }
[[outputs]]
type = "jsonl"
dir = "out"
TOML
cat >agent.toml <<TOML
data_dir = "agent"
[forward]
sinks = ["127.0.0.1:$port"]
tls = { $tls, cert = "certs/bench-agent.pem", key = "certs/bench-agent.key" }
[[pipelines]]
name = "bench"
[[pipelines.sources]]
type = "file"
include = ["input/*.log"]
poll_interval_ms = 20
TOML
python3 - <<'PY'
with open("input/bench.log", "wb") as f:
    for i in range(1_000_000):
        head = ('{"id":"%012d","service":"bench","level":"info","pad":"' % i).encode()
        f.write(head + b"x" * (253 - len(head)) + b'"}\n')
PY
DATAWEAVER_LOG=warn "$bin" sink --config sink.toml 2>sink.log &
sleep 0.3
DATAWEAVER_LOG=warn "${wrap[@]}" "$bin" agent --config agent.toml 2>agent.log &
until [ "$(cat out/*.jsonl 2>/dev/null | wc -l)" -ge 1000000 ]; do sleep 0.5; done
pid=$(pgrep -f -n "^$bin agent --config agent.toml")
grep -E "VmHWM|RssAnon|RssFile|Threads" "/proc/$pid/status"
spid=$(pgrep -f -n "^$bin sink --config sink.toml")
for p in "agent $pid" "sink $spid"; do
  set -- $p
  echo "$1 I/O: $(grep -E '^(rchar|wchar|write_bytes)' "/proc/$2/io" | tr '\n' ' ')"
done
