#!/bin/bash
# Check every fuzz target of tests/fuzz/meson.build: replay its committed
# corpus (corpus/<name>/, every file run once, nothing fuzzed), then fuzz
# for SECONDS (default 30) starting from that corpus. Targets run
# LIBMERGE_FUZZ_JOBS at a time (default: the number of cores); each
# target's report is printed whole, in meson.build's order.
# usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]
#
# Fails when a target listed in meson.build was not built (a fuzz build
# that built nothing must not pass), has no committed corpus, does not run
# every corpus file, or crashes/leaks/times out on any input.
set -euo pipefail
build=$1; secs=${2:-30}
here=$(cd "$(dirname "$0")" && pwd)

# The expected targets are the keys of meson.build's fuzz_targets dict
# (lines "  'name': [files(...") so that the list cannot drift from what
# the build defines.
mapfile -t targets < <(sed -n "/^fuzz_targets = {/,/^}/s/^ *'\([a-z0-9_]*\)': *\[.*/\1/p" \
                         "$here/meson.build")
if [ "${#targets[@]}" -eq 0 ]; then
  echo "FAIL: no fuzz targets found in $here/meson.build"; exit 1
fi

# One target: replay, then fuzz. Prints its report, returns nonzero on
# any failure.
check_target() {
  local name=$1 status=0
  exe=$build/tests/fuzz/fuzz_$name
  if [ ! -f "$exe" ] || [ ! -x "$exe" ]; then
    echo "FAIL: fuzz target $name was not built ($exe missing;" \
         "configure with CC=clang -Dfuzz=true)"
    return 1
  fi
  corpus=$here/corpus/$name
  mapfile -t inputs < <(find "$corpus" -type f 2>/dev/null | sort)
  if [ "${#inputs[@]}" -eq 0 ]; then
    echo "FAIL: fuzz target $name has no committed corpus ($corpus)"
    return 1
  fi
  # The corpus is replayed on every run: keep it small (minimise with
  # -merge=1; at most 500 inputs of at most 64 KB per target).
  big=$(find "$corpus" -type f -size +64k | head -3)
  if [ -n "$big" ]; then
    echo "FAIL: corpus files over 64 KB: $big"; status=1
  fi
  if [ "${#inputs[@]}" -gt 500 ]; then
    echo "FAIL: $corpus holds ${#inputs[@]} inputs (at most 500)"; status=1
  fi

  work=$(mktemp -d)
  # 1. Replay: with files as arguments libFuzzer runs each one once, whole
  # (no -max_len truncation), and stops at the first crash, leak or timeout.
  if ! "$exe" -runs=0 -timeout=10 -artifact_prefix="$work/" "${inputs[@]}" \
       > "$work.replay.log" 2>&1; then
    echo "FAIL: fuzz target $name crashes on its committed corpus"
    grep -E "^Running:|ERROR|SUMMARY|#[0-9]+ 0x" "$work.replay.log" | tail -30
    rm -rf "$work" "$work.replay.log"; return 1
  fi
  ran=$(grep -c '^Executed ' "$work.replay.log" || true)
  if [ "$ran" -ne "${#inputs[@]}" ]; then
    echo "FAIL: fuzz target $name ran $ran of ${#inputs[@]} corpus inputs"
    tail -5 "$work.replay.log"
    rm -rf "$work" "$work.replay.log"; return 1
  fi
  echo "ok: $name replays its ${#inputs[@]} corpus inputs"
  rm -f "$work.replay.log"

  # 2. Fuzz from a copy of the corpus (new inputs stay out of the tree).
  mkdir "$work/corpus"
  cp "${inputs[@]}" "$work/corpus/"
  echo "fuzzing $name for ${secs}s"
  if ! "$exe" -max_total_time="$secs" -max_len=65536 -timeout=10 \
       -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" \
       > "$work.log" 2>&1; then
    echo "FAIL: fuzz target $name"; grep -E "ERROR|SUMMARY|#[0-9]+ 0x" "$work.log" | head -30
    mkdir -p "$build/fuzz-crashes" && cp "$work"/crash-* "$work"/leak-* \
      "$work"/timeout-* "$work"/oom-* "$build/fuzz-crashes/" 2>/dev/null || true
    status=1
  else
    echo "ok: $name: $(grep -E '^#[0-9]+.*cov:' "$work.log" | tail -1 | cut -c1-100)"
  fi
  rm -rf "$work" "$work.log"
  return $status
}

jobs=${LIBMERGE_FUZZ_JOBS:-$(nproc)}
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
running=0
for name in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
  ( check_target "$name" > "$reports/$name.log" 2>&1; echo $? > "$reports/$name.rc" ) &
  running=$((running + 1))
done
wait
status=0
for name in "${targets[@]}"; do
  cat "$reports/$name.log"
  [ "$(cat "$reports/$name.rc" 2>/dev/null)" = 0 ] || status=1
done
exit $status
