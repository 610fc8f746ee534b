#!/usr/bin/env bash
# Builds every fuzz target once and runs each on its corpus: `fuzz/run.sh [SECONDS] [TARGET...]`
# (default 60 s, every target). Fails on the first crash, panic, timeout (10 s per input) or
# out-of-memory; the input is kept in fuzz/artifacts/<target>/ and printed as hex.
# New inputs go to a scratch directory (FUZZ_SCRATCH, default a temp dir), so the committed
# seeds stay small; pass FUZZ_KEEP=1 to merge what was found into fuzz/corpus/<target>/.
# Needs cargo-fuzz on PATH (docs/fuzzing.md); the stable toolchain is enough with
# RUSTC_BOOTSTRAP=1, set here.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
target_dir="${FUZZ_TARGET_DIR:-$PWD/target}"
if [ -n "${FUZZ_SCRATCH:-}" ]; then
  scratch="$FUZZ_SCRATCH"
else
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
fi
export RUSTC_BOOTSTRAP=1
# One build for all targets. No AddressSanitizer: the decoders are safe Rust, and ASan
# would double the build and halve the speed; overflow checks and debug assertions stay.
start=$(date +%s)
cargo fuzz build --sanitizer none --debug-assertions --target-dir "$target_dir"
echo "fuzz build: $(( $(date +%s) - start )) s"
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
printf '%-16s %10s %8s %8s %10s %8s %s\n' target execs execs/s cov features corpus crashes
for t in "${targets[@]}"; do
  mkdir -p "artifacts/$t" "$scratch/$t" "corpus/$t"
  log="$scratch/$t.log"
  rc=0
  "$bin_dir/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" "$scratch/$t" "corpus/$t" \
    >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")
  crashes=$(find "artifacts/$t" -type f | wc -l)
  printf '%-16s %10s %8s %8s %10s %8s %s\n' "$t" "${execs:-?}" "${speed:-?}" "${cov:-?}" \
    "${ft:-?}" "${corp:-?}" "$crashes"
  if [ "$rc" != 0 ]; then
    echo "fuzz target $t failed (exit $rc):" >&2
    grep -E -A30 'panicked|ERROR: libFuzzer|==ERROR|deadly signal|timeout|out-of-memory' "$log" | head -60 >&2 || tail -40 "$log" >&2
    for f in "artifacts/$t"/*; do
      [ -f "$f" ] && { echo "$f:" >&2; od -An -tx1 -v "$f" | head -20 >&2; }
    done
    exit 1
  fi
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    "$bin_dir/$t" -merge=1 -max_len=65536 "corpus/$t" "$scratch/$t" >/dev/null 2>&1
  fi
done
