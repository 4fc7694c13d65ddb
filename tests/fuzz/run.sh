#!/bin/bash
# Run every fuzz target for SECONDS (default 30) from its seed corpus.
# usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]
set -euo pipefail
build=$1; secs=${2:-30}
here=$(cd "$(dirname "$0")" && pwd)
status=0
for exe in "$build"/tests/fuzz/fuzz_*; do
  [ -f "$exe" ] && [ -x "$exe" ] || continue
  name=${exe##*/fuzz_}
  work=$(mktemp -d)
  cp -r "$here/corpus/$name/." "$work/" 2>/dev/null || true
  echo "fuzzing $name for ${secs}s"
  if ! "$exe" -max_total_time="$secs" -max_len=65536 -timeout=10 \
       -print_final_stats=0 -artifact_prefix="$work/" "$work" > "$work.log" 2>&1; then
    echo "FAIL: fuzz target $name"; grep -E "ERROR|SUMMARY|#[0-9]+ 0x" "$work.log" | head -30
    mkdir -p "$build/fuzz-crashes" && cp "$work"/crash-* "$work"/leak-* "$build/fuzz-crashes/" 2>/dev/null || true
    status=1
  else
    echo "ok: $name ($(grep -o 'stat::number_of_executed_units: [0-9]*' "$work.log" | tail -1 || true)$(tail -1 "$work.log" | cut -c1-80))"
  fi
  rm -rf "$work" "$work.log"
done
exit $status
