#!/bin/sh
# The ABI check ignores the experimental tier and nothing else: a baseline
# doctored so that an experimental function (lm_nsc_step) looks removed
# must pass, the same doctoring of a stable function (lm_plan_strategy)
# must fail (same SONAME).
# usage: experimental_ignored.sh BASELINE.abi LIBRARY.so INCLUDE_DIR
set -u
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
baseline=$(abs "$1") lib=$(abs "$2") include=$(abs "$3")
command -v abidiff >/dev/null || { echo "abidiff not installed (abigail-tools)"; exit 77; }
check=$(cd "$(dirname "$0")" && pwd)/check.sh
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
run() { # run FUNCTION: check.sh against a baseline where FUNCTION is gone
  grep -q "name='$1'" "$baseline" || { echo "FAIL: $1 not in $baseline"; exit 1; }
  sed "s/'$1'/'${1}_gone'/g" "$baseline" > "$1.abi"
  sh "$check" "$1.abi" "$lib" "$include" > "$1.out" 2>&1
}
run lm_nsc_step \
  || { cat lm_nsc_step.out; echo "FAIL: removing an experimental function was reported"; exit 1; }
if run lm_plan_strategy; then
  cat lm_plan_strategy.out; echo "FAIL: removing a stable function was not reported"; exit 1
fi
grep -q "lm_plan_strategy_gone" lm_plan_strategy.out \
  || { echo "FAIL: the stable removal is not named in the report"; exit 1; }
echo "ok: the experimental tier is ignored, the stable API is not"
